//! `agentd bench ...`: benchmarks that print one JSON object, so figures can be compared across
//! runs and machines. Goals live here, not in timed tests.

pub mod memory;
pub mod route;
pub mod runtime;
pub mod serve;

/// Peak resident set size of this process so far, in MiB (Linux; 0 elsewhere).
pub fn rss_peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system, all threads) the process has used so far, in seconds; 0 where
/// `/proc/self/stat` is unavailable. Resolution: one clock tick (`USER_HZ`, 100 on Linux).
pub fn cpu_time_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces, so split after its ')').
            let rest = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line, 12 and 13 of `rest`.
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// The `p`-th percentile (0..=100) of `samples`, by nearest rank; 0 for no samples.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&mut v, 50.0), 50.0);
        assert_eq!(super::percentile(&mut v, 95.0), 95.0);
        assert_eq!(super::percentile(&mut v, 100.0), 100.0);
        assert_eq!(super::percentile(&mut [], 50.0), 0.0);
        assert_eq!(super::percentile(&mut [3.0], 99.0), 3.0);
    }
}
