//! The run journal: an append-only log of every run's events, the durable home of checkpoints.
//!
//! A checkpoint is not a separate snapshot: it is the `node_finished` event, which names the
//! items the node produced (references, not copies) and its usage. A run's state is the fold of
//! its events (see [`crate::state`]), so resuming after a crash replays the journal.
//!
//! One writer thread owns the file. Appenders hand it framed records over a channel; records
//! that need durability carry an acknowledgement, which the writer sends after one
//! `fdatasync` covering everything queued so far. Under load many appenders share one sync
//! (group commit), which is what makes durable checkpoints cheap at high concurrency. Records
//! that need no durability on their own (a node started, a context routed) are queued without
//! waiting; the next synced record makes them durable too, in order.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload` where the payload is one JSON
//! object (so `agentd` journals can be inspected with standard tools). On open, a torn or
//! corrupt tail (a crash mid-append) is cut off; everything before it is intact.
//!
//! The trade-off: one file for all runs keeps appends sequential and syncs shared, at the cost
//! of a scan on open. Compaction of finished runs is future work.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::event::Event;

const FILE_NAME: &str = "journal.log";
const HEADER: usize = 8;
/// Largest record accepted on read; a larger length field is corruption.
const MAX_RECORD: usize = 256 << 20;

/// How run state is persisted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every checkpoint is fsynced before the run moves on (the default): a finished node
    /// survives power loss.
    #[default]
    Durable,
    /// Written to the OS, not synced: survives a killed process, not power loss.
    Buffered,
    /// Nothing persisted: runs cannot resume.
    Off,
}

/// Errors of the journal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// Reading, writing or syncing the journal failed (a full disk, a missing folder...).
    #[error("run journal {path}: {message}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The writer stopped after an earlier failure; nothing more is accepted.
    #[error("run journal {path} is closed after an earlier write failure: {message}")]
    Poisoned {
        /// The journal file.
        path: PathBuf,
        /// The first failure.
        message: String,
    },
}

enum Op {
    Append {
        frame: Vec<u8>,
        ack: Option<tokio::sync::oneshot::Sender<Result<(), JournalError>>>,
    },
    Shutdown,
}

/// The append-only run journal. Cheap to share behind an `Arc`.
pub struct Journal {
    path: PathBuf,
    tx: mpsc::Sender<Op>,
    poisoned: Arc<AtomicBool>,
    writer: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and returns it with every intact event, in append
    /// order. A torn tail is truncated.
    pub fn open(dir: &Path, durability: Durability) -> Result<(Journal, Vec<Event>), JournalError> {
        let path = dir.join(FILE_NAME);
        let io = |what: &str, e: std::io::Error| JournalError::Io {
            path: path.clone(),
            message: format!("{what}: {e}"),
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating its folder", e))?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io("opening", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io("reading", e))?;
        let (events, good) = decode_all(&bytes);
        if good < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                cut = bytes.len() - good,
                "run journal had a torn tail (a crash mid-append); cutting it off"
            );
            file.set_len(good as u64)
                .map_err(|e| io("truncating a torn tail", e))?;
            file.sync_all().map_err(|e| io("syncing", e))?;
        }
        file.seek(SeekFrom::End(0)).map_err(|e| io("seeking", e))?;
        let (tx, rx) = mpsc::channel();
        let poisoned = Arc::new(AtomicBool::new(false));
        let writer = {
            let path = path.clone();
            let poisoned = Arc::clone(&poisoned);
            std::thread::Builder::new()
                .name("agentd-journal".into())
                .spawn(move || write_loop(file, path, rx, durability, poisoned))
                .map_err(|e| io("starting the writer thread", e))?
        };
        Ok((
            Journal {
                path,
                tx,
                poisoned,
                writer: parking_lot::Mutex::new(Some(writer)),
            },
            events,
        ))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `event` without waiting; a later [`Journal::append_synced`] makes it durable.
    pub fn append(&self, event: &Event) -> Result<(), JournalError> {
        self.check()?;
        let frame = encode(event);
        self.tx
            .send(Op::Append { frame, ack: None })
            .map_err(|_| self.closed())
    }

    /// Appends `event` and waits until it, and everything queued before it, is durable (under
    /// the journal's durability).
    pub async fn append_synced(&self, event: &Event) -> Result<(), JournalError> {
        self.check()?;
        let frame = encode(event);
        let (ack, done) = tokio::sync::oneshot::channel();
        self.tx
            .send(Op::Append {
                frame,
                ack: Some(ack),
            })
            .map_err(|_| self.closed())?;
        done.await.map_err(|_| self.closed())?
    }

    fn check(&self) -> Result<(), JournalError> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(self.closed())
        } else {
            Ok(())
        }
    }

    fn closed(&self) -> JournalError {
        JournalError::Poisoned {
            path: self.path.clone(),
            message: "the writer stopped; see the earlier error in the log".into(),
        }
    }

    /// Flushes what is queued and stops the writer.
    pub fn close(&self) {
        let _ = self.tx.send(Op::Shutdown);
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(
    mut file: File,
    path: PathBuf,
    rx: mpsc::Receiver<Op>,
    durability: Durability,
    poisoned: Arc<AtomicBool>,
) {
    let mut buf = Vec::with_capacity(64 << 10);
    let mut acks = Vec::new();
    let mut failure: Option<JournalError> = None;
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        buf.clear();
        let take = |op: Op, buf: &mut Vec<u8>, acks: &mut Vec<_>| match op {
            Op::Append { frame, ack } => {
                buf.extend_from_slice(&frame);
                if let Some(ack) = ack {
                    acks.push(ack);
                }
                false
            }
            Op::Shutdown => true,
        };
        stop |= take(first, &mut buf, &mut acks);
        while !stop {
            match rx.try_recv() {
                Ok(op) => stop |= take(op, &mut buf, &mut acks),
                Err(_) => break,
            }
        }
        let result = match &failure {
            Some(e) => Err(e.clone()),
            None => {
                let mut r = file.write_all(&buf);
                if r.is_ok() && durability == Durability::Durable && (!acks.is_empty() || stop) {
                    r = file.sync_data();
                }
                r.map_err(|e| {
                    let err = JournalError::Io {
                        path: path.clone(),
                        message: format!("appending: {e}"),
                    };
                    tracing::error!(error = %err, "run journal write failed; runs cannot checkpoint");
                    poisoned.store(true, Ordering::Release);
                    failure = Some(err.clone());
                    err
                })
            }
        };
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
    }
}

fn encode(event: &Event) -> Vec<u8> {
    let mut frame = vec![0u8; HEADER];
    // Serialising our own types into a Vec cannot fail.
    serde_json::to_writer(&mut frame, event).expect("events serialise");
    let payload = &frame[HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Decodes frames until the first torn or corrupt one; returns the events and the length of
/// the intact prefix.
fn decode_all(bytes: &[u8]) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        if len > MAX_RECORD || bytes.len() - at - HEADER < len {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice::<Event>(payload) {
            Ok(event) => events.push(event),
            Err(e) => {
                tracing::warn!(error = %e, "run journal record does not decode; stopping there");
                break;
            }
        }
        at += HEADER + len;
    }
    (events, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn event(run: &str, seq: u64) -> Event {
        Event {
            run: run.into(),
            seq,
            at_ms: 1,
            kind: EventKind::RoundStarted { round: seq as u32 },
        }
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, old) = Journal::open(dir.path(), Durability::Durable).unwrap();
            assert!(old.is_empty());
            j.append(&event("a", 1)).unwrap();
            j.append_synced(&event("a", 2)).await.unwrap();
            j.append_synced(&event("b", 1)).await.unwrap();
        }
        // A crash mid-append leaves half a frame.
        let path = dir.path().join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&encode(&event("c", 1))[..10]).unwrap();
        drop(f);
        let (j, events) = Journal::open(dir.path(), Durability::Durable).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[2].run, "b");
        j.append_synced(&event("d", 1)).await.unwrap();
        drop(j);
        let (_, events) = Journal::open(dir.path(), Durability::Durable).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(events[3].run, "d");
    }

    #[tokio::test]
    async fn a_flipped_byte_stops_replay_at_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, _) = Journal::open(dir.path(), Durability::Buffered).unwrap();
            for i in 0..5 {
                j.append_synced(&event("a", i)).await.unwrap();
            }
        }
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let frame_len = encode(&event("a", 0)).len();
        bytes[frame_len * 2 + HEADER + 3] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let (_, events) = Journal::open(dir.path(), Durability::Buffered).unwrap();
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn concurrent_synced_appends_share_syncs_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), Durability::Durable).unwrap();
        let j = Arc::new(j);
        let mut tasks = Vec::new();
        for t in 0..16 {
            let j = Arc::clone(&j);
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    j.append_synced(&event(&format!("r{t}"), i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(j);
        let (_, events) = Journal::open(dir.path(), Durability::Durable).unwrap();
        assert_eq!(events.len(), 320);
    }
}
