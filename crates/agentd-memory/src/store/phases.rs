//! Phase timings of a write, for the write-latency harness (`cargo test -p agentd-memory
//! --release -- --ignored --nocapture write_latency`). Compiled to nothing outside tests.

#[cfg(test)]
use std::cell::RefCell;
#[cfg(test)]
use std::time::{Duration, Instant};

#[cfg(test)]
thread_local! {
    static PHASES: RefCell<Vec<(&'static str, Duration)>> = const { RefCell::new(Vec::new()) };
}

/// A stopwatch whose laps are recorded per thread (in tests; a no-op otherwise).
pub(crate) struct Phases {
    #[cfg(test)]
    last: Instant,
}

impl Phases {
    #[inline(always)]
    pub(crate) fn start() -> Self {
        Phases {
            #[cfg(test)]
            last: Instant::now(),
        }
    }

    /// Records the time since the previous lap under `name`.
    #[inline(always)]
    pub(crate) fn lap(&mut self, _name: &'static str) {
        #[cfg(test)]
        {
            let now = Instant::now();
            let d = now - self.last;
            self.last = now;
            PHASES.with(|p| p.borrow_mut().push((_name, d)));
        }
    }

    /// Restarts the stopwatch without recording (another stopwatch timed the gap).
    #[inline(always)]
    pub(crate) fn reset(&mut self) {
        #[cfg(test)]
        {
            self.last = Instant::now();
        }
    }
}

/// The laps recorded on this thread since the last call.
#[cfg(test)]
pub(crate) fn take() -> Vec<(&'static str, Duration)> {
    PHASES.with(|p| std::mem::take(&mut *p.borrow_mut()))
}
