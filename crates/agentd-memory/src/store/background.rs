//! Background work at a lower CPU priority than the requests it serves.
//!
//! tantivy's indexing and merge threads can take a core for milliseconds to seconds (a tail
//! commit, a segment merge). On a small machine that time comes out of the searches and writes
//! waiting to run, as latency. At a lower priority (a nice value [`NICE_INCREMENT`] above the
//! caller's), the kernel gives the cores to request threads first and to this work whenever
//! they are idle, which on a daemon is most of the time; it is never starved outright (CFS
//! gives every runnable thread a share).
//!
//! Only threads that hold none of the store's locks run at low priority. A low-priority thread
//! holding a lock that requests wait for would make them wait at its priority (priority
//! inversion; a bench serve run showed 100 ms stalls when the text committer ran nice), and a
//! thread cannot raise its priority back unprivileged. So the text committer and the HNSW
//! builder, which take the tail's and the catalog's locks, keep the caller's priority; the
//! committer mostly waits for tantivy's threads, which do the indexing. tantivy starts new
//! indexing threads at every commit from the committing thread, so each commit lowers them
//! again by name ([`lower_priority_of_threads`]) before giving them documents.
//!
//! On Linux the nice value is a per-thread attribute, inherited by the threads a thread
//! starts; elsewhere these functions do nothing.

/// How much nicer than the thread that starts it background work runs (lower priority; the
/// kernel's weight for nice +10 is about a tenth of nice 0).
pub(crate) const NICE_INCREMENT: i32 = 10;

/// Lowers the calling thread's CPU priority by [`NICE_INCREMENT`]. Failure (a platform
/// without per-thread nice values, a sandbox forbidding it) leaves the priority as it is.
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `nice` takes and returns plain integers; on Linux it changes the nice value of
    // the calling thread only (a per-thread attribute under NPTL).
    unsafe {
        libc::nice(NICE_INCREMENT);
    }
}

/// Lowers to background priority (a nice value [`NICE_INCREMENT`] above the caller's) every
/// thread of this process whose name starts with one of `prefixes` and that runs at a higher
/// priority: for threads a library starts from whichever thread calls it (tantivy starts new
/// indexing threads at every commit, from the committing thread). Threads that fail to change (gone,
/// forbidden) are left as they are. Reads `/proc/self/task`: tens of small reads, for a call
/// made once per commit, not per write.
pub(crate) fn lower_priority_of_threads(prefixes: &[&str]) {
    #[cfg(target_os = "linux")]
    {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        // The kernel keeps the first 15 bytes of a thread's name.
        let matches = |name: &str| {
            prefixes
                .iter()
                .any(|p| name.starts_with(p.get(..15).unwrap_or(p)))
        };
        // SAFETY: plain integers in and out; on Linux `getpriority(PRIO_PROCESS, 0)` reads
        // the calling thread's nice value.
        let target = (unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) } + NICE_INCREMENT).min(19);
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<libc::id_t>().ok())
            else {
                continue;
            };
            match std::fs::read_to_string(task.path().join("comm")) {
                Ok(name) if matches(&name) => {}
                _ => continue,
            }
            // SAFETY: plain integers; `tid` names a thread of this process (or, if it has
            // exited and its id was reused meanwhile, the call fails or nices a thread of
            // ours: thread ids of a process are its tasks).
            unsafe {
                if libc::getpriority(libc::PRIO_PROCESS, tid) < target {
                    libc::setpriority(libc::PRIO_PROCESS, tid, target);
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = prefixes;
}

/// Runs `work` on a new thread at background priority and returns its result: threads that
/// `work` starts inherit that priority. A panic in `work` is resumed on the caller.
pub(crate) fn spawn_low_priority<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                lower_priority();
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's nice value.
    fn nice() -> i32 {
        // SAFETY: plain integers in and out; `getpriority` may return -1 legitimately, so a
        // test only compares values it knows are in range.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn threads_named_with_the_prefix_are_lowered_and_others_are_not() {
        let parent = nice();
        let expected = (parent + NICE_INCREMENT).min(19);
        let spawn = |name: &str| {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
            let handle = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    ready_tx.send(()).unwrap();
                    rx.recv().unwrap();
                    nice()
                })
                .unwrap();
            ready_rx.recv().unwrap();
            (tx, handle)
        };
        // Names longer than the kernel keeps (15 bytes), as tantivy's are.
        let (stop_match, matching) = spawn("agentd-test-lowered-worker");
        let (stop_other, other) = spawn("agentd-test-kept");
        lower_priority_of_threads(&["agentd-test-lowered", "agentd-test-absent"]);
        stop_match.send(()).unwrap();
        stop_other.send(()).unwrap();
        assert_eq!(
            matching.join().unwrap(),
            expected,
            "the named thread is lowered"
        );
        assert_eq!(
            other.join().unwrap(),
            parent,
            "another thread keeps its priority"
        );
        assert_eq!(nice(), parent, "the caller keeps its priority");
    }

    #[test]
    fn background_threads_and_their_children_run_nicer_than_their_parent() {
        let parent = nice();
        let (own, child) =
            spawn_low_priority(|| (nice(), std::thread::spawn(nice).join().unwrap()));
        let expected = (parent + NICE_INCREMENT).min(19);
        assert_eq!(own, expected, "the background thread's nice value");
        assert_eq!(
            child, expected,
            "a thread started by background work inherits it"
        );
        assert_eq!(nice(), parent, "the caller's priority is unchanged");
    }
}
