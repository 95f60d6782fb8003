//! Where the text index lives on disk: tantivy's memory-mapped directory without the fsyncs.
//!
//! The text index is derived from sled and caught up from its commit watermark on open, so its
//! commits need not be durable; they only need to be *atomic* and visible to the process. A
//! tantivy commit fsyncs every new segment file, `meta.json` and the directory (about ten
//! journal commits on ext4), which made a small `put_batch` cost tens of milliseconds even
//! when sled itself was not fsynced. [`UnsyncedDirectory`] keeps everything tantivy needs from
//! the file system (write-once files, `meta.json` replaced by an atomic rename, locks) and
//! drops the syncs.
//!
//! What that costs: a process crash loses nothing (written data sits in the OS page cache), but
//! a machine crash (power loss, kernel panic) may leave the index with missing or torn files or
//! an older `meta.json`. Such an index must not be trusted, and telling it apart from one that
//! survived a mere process crash is what the [`MARKER`] file is for:
//! - on open, the marker is written and fsynced with the current boot id (Linux:
//!   `/proc/sys/kernel/random/boot_id`) before the index is written without syncs;
//! - on a clean close, every index file and the directory are fsynced, then the marker is
//!   removed;
//! - on the next open, no marker means a clean close; a marker with the current boot id means
//!   the process crashed but the machine did not (the page cache still holds every write); a
//!   marker from another boot, or where the boot id cannot be read, means the index may be
//!   damaged, and it is rebuilt from sled.
//!
//! Independently of the marker, an index tantivy cannot open is rebuilt too (see
//! [`super::text::TextIndex::open`]).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, TerminatingWrite,
    WatchCallback, WatchHandle, WritePtr,
};

use crate::error::{MemoryError, Result};

/// Present while the index may hold writes that were never fsynced; holds the boot id.
pub(crate) const MARKER: &str = "UNSYNCED";
/// Prefix of the temporary files behind atomic writes (left over only by a crash mid-write).
const TEMP_PREFIX: &str = ".agentd-tmp-";

/// An [`MmapDirectory`] whose writes are never fsynced. See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct UnsyncedDirectory {
    inner: MmapDirectory,
    root: PathBuf,
}

impl UnsyncedDirectory {
    pub fn open(root: &Path) -> Result<Self> {
        let inner = MmapDirectory::open(root).map_err(|e| MemoryError::Corrupt {
            path: root.to_owned(),
            reason: e.to_string(),
        })?;
        // Temporary files of atomic writes a crash interrupted.
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(UnsyncedDirectory {
            inner,
            root: root.to_owned(),
        })
    }
}

/// A file writer whose `terminate` flushes to the OS but does not fsync.
struct UnsyncedFile(File);

impl Write for UnsyncedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TerminatingWrite for UnsyncedFile {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        self.0.flush()
    }
}

impl Directory for UnsyncedDirectory {
    fn get_file_handle(
        &self,
        path: &Path,
    ) -> std::result::Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> std::result::Result<(), DeleteError> {
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> std::result::Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> std::result::Result<WritePtr, OpenWriteError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.root.join(path))
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    OpenWriteError::FileAlreadyExists(path.to_owned())
                } else {
                    OpenWriteError::wrap_io_error(e, path.to_owned())
                }
            })?;
        Ok(BufWriter::new(Box::new(UnsyncedFile(file))))
    }

    fn atomic_read(&self, path: &Path) -> std::result::Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    /// Writes a temporary file and renames it over `path`: readers (and a process crash) see
    /// the old content or the new, never a mix.
    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let target = self.root.join(path);
        let temp = self.root.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = File::create(&temp)
            .and_then(|mut f| f.write_all(data))
            .and_then(|()| std::fs::rename(&temp, &target));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    fn sync_directory(&self) -> io::Result<()> {
        Ok(())
    }

    fn acquire_lock(&self, lock: &Lock) -> std::result::Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}

/// The id of the running boot of the machine, when the platform tells it.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Whether the index in `dir` can be trusted after the last session: `Err(reason)` when it may
/// have lost writes to a machine crash.
pub(crate) fn check(dir: &Path) -> std::result::Result<(), String> {
    let recorded = match std::fs::read_to_string(dir.join(MARKER)) {
        Ok(s) => s.trim().to_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("its marker is unreadable ({e})")),
    };
    match boot_id() {
        Some(current) if current == recorded => Ok(()),
        Some(_) => Err("the machine restarted since it was last written".into()),
        None => Err("it was not closed cleanly (and the boot id is unknown)".into()),
    }
}

/// Records (durably) that the index in `dir` is about to be written without syncs.
pub(crate) fn mark(dir: &Path) -> Result<()> {
    let path = dir.join(MARKER);
    let ctx = || format!("writing {}", path.display());
    let mut f = File::create(&path).map_err(|e| MemoryError::io(ctx(), e))?;
    f.write_all(boot_id().unwrap_or_default().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| MemoryError::io(ctx(), e))?;
    sync_dir(dir).map_err(|e| MemoryError::io(ctx(), e))
}

/// Makes every file of the index in `dir` durable, then removes the marker. Call only once no
/// writer can change the index any more.
pub(crate) fn sync_and_unmark(dir: &Path) -> io::Result<()> {
    // A merge that was finishing when the writer was dropped may still replace `meta.json`:
    // sync until it stays put.
    for _ in 0..10 {
        let before = std::fs::read(dir.join("meta.json")).ok();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == MARKER || !entry.file_type()?.is_file() {
                continue;
            }
            match File::open(entry.path()) {
                Ok(f) => f.sync_all()?,
                // Deleted meanwhile (garbage collection of merged segments).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        sync_dir(dir)?;
        if std::fs::read(dir.join("meta.json")).ok() == before {
            std::fs::remove_file(dir.join(MARKER))?;
            return sync_dir(dir);
        }
    }
    Err(io::Error::other(
        "the text index kept changing while it was synced",
    ))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
