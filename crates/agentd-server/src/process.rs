//! Process-wide preparation for serving many connections at once.
//!
//! Every connection is a file descriptor. The kernel keeps a process's descriptors in a table
//! that doubles when full, and a doubling waits for an RCU grace period (10 to 15 ms measured
//! on a 2-core VM) while other threads that open a descriptor wait for it: the accept loop, and
//! the LLM client opening a connection for a node. A burst of a thousand submissions (two
//! thousand sockets with the client's) doubles the table five times during the burst.
//! [`prepare`] grows the table once, before serving. It first raises the soft open-files limit
//! to the hard one, as servers meant for many connections do: the common default of 1024
//! would refuse such a burst.

/// The descriptor table is grown to hold this many descriptors at most (its size then is
/// about 9 bytes per descriptor: 144 KiB).
pub const RESERVED_DESCRIPTORS: u64 = 16_384;

/// What [`prepare`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The soft limit on open files after raising it.
    pub open_files_limit: u64,
    /// The descriptor table holds at least this many descriptors (0: it could not be grown).
    pub reserved: u64,
}

/// Raises the soft open-files limit to the hard limit and grows the descriptor table to
/// `min(limit, RESERVED_DESCRIPTORS)` entries. Never fails: what cannot be done is skipped
/// (and reported in the result). Idempotent. Unix only; elsewhere it does nothing.
pub fn prepare() -> Prepared {
    #[cfg(unix)]
    {
        let limit = raise_open_files_limit();
        let reserved = grow_descriptor_table(limit.min(RESERVED_DESCRIPTORS));
        Prepared {
            open_files_limit: limit,
            reserved,
        }
    }
    #[cfg(not(unix))]
    {
        Prepared {
            open_files_limit: 0,
            reserved: 0,
        }
    }
}

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit; returns the soft limit in force.
#[cfg(unix)]
fn raise_open_files_limit() -> u64 {
    let Some(mut limit) = open_files_limit() else {
        return 0;
    };
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; lowering nothing, raising the soft limit up to
        // the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    rlim_to_u64(limit.rlim_cur)
}

/// `RLIMIT_NOFILE` (soft and hard), or `None` if it cannot be read.
#[cfg(unix)]
fn open_files_limit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// `rlim_t` as `u64` (it is not `u64` on every platform).
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)]
fn rlim_to_u64(value: libc::rlim_t) -> u64 {
    value as u64
}

/// Grows the descriptor table to hold `n` descriptors: duplicates a descriptor onto the
/// lowest free number from `n - 1` (the table grows to hold it and never shrinks), then closes
/// the duplicate. Returns `n`, or 0 if it failed.
#[cfg(unix)]
fn grow_descriptor_table(n: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let Ok(target) = libc::c_int::try_from(n.saturating_sub(1)) else {
        return 0;
    };
    let Ok(null) = std::fs::File::open("/dev/null") else {
        return 0;
    };
    if target <= null.as_raw_fd() {
        return 0;
    }
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor (the lowest free one from `target`)
    // for the open file `null`; it touches no other descriptor.
    let fd = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, target) };
    if fd < 0 {
        return 0;
    }
    // SAFETY: `fd` was just created here and nothing else knows it.
    unsafe { libc::close(fd) };
    n
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The size of this process's descriptor table (`FDSize` in `/proc/self/status`).
    fn table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize in /proc/self/status")
    }

    #[test]
    fn the_descriptor_table_is_grown_up_front_and_the_limit_raised() {
        let before = (table_size(), open_files_limit().unwrap());
        let prepared = prepare();
        let after = open_files_limit().unwrap();
        assert_eq!(prepared.open_files_limit, rlim_to_u64(after.rlim_cur));
        assert!(after.rlim_cur >= before.1.rlim_cur);
        if after.rlim_max != libc::RLIM_INFINITY {
            assert_eq!(
                after.rlim_cur, after.rlim_max,
                "the soft limit is the hard one"
            );
        }
        let want = prepared.open_files_limit.min(RESERVED_DESCRIPTORS);
        assert_eq!(prepared.reserved, want);
        let size = table_size();
        assert!(
            size >= want,
            "table of {size} (was {}), want {want}",
            before.0
        );
        // Idempotent, and no descriptor is left open.
        assert_eq!(prepare(), prepared);
        // SAFETY: F_GETFD only queries.
        assert_eq!(unsafe { libc::fcntl((want - 1) as i32, libc::F_GETFD) }, -1);
    }
}
