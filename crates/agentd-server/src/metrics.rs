//! Prometheus metrics, computed from the runtime's events (an [`agentd_runtime::EventHook`])
//! and, at scrape time, from the runs' states.
//!
//! The hook sees every event right after it is journaled, on the run's task, so it only takes
//! one short lock. Per-node clocks measure, from `node_started` to the synced `node_finished`:
//! the node's wall time, the LLM time within it (`llm_call` latencies) and so the daemon's
//! **overhead** (wall minus LLM: routing, prompt, parsing, write-back, events, checkpoint);
//! and from `node_started` to `context_routed`, the routing latency.
//!
//! Rendering is hand-written Prometheus text format 0.0.4: a few counters, gauges and
//! histograms do not need a metrics library.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use agentd_runtime::{Event, EventKind};
use parking_lot::Mutex;

/// Seconds buckets of the overhead and routing histograms.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Token buckets of the pack-size histogram.
const TOKEN_BUCKETS: &[f64] = &[
    0.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
/// How many node overheads are kept for [`Metrics::node_overheads_ms`] (a ring).
const OVERHEAD_SAMPLES: usize = 1 << 16;

#[derive(Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// A node attempt being timed.
struct NodeClock {
    first_start: Instant,
    attempt_start: Instant,
    llm_secs: f64,
    /// When the context was routed, the LLM call returned, the items were written.
    routed: Option<Instant>,
    called: Option<Instant>,
    written: Option<Instant>,
}

/// Where one node's overhead went, in ms (see [`Metrics::node_phases_ms`]).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct NodePhases {
    /// Wall time minus LLM time, to the synced checkpoint.
    pub overhead: f64,
    /// Start to routed context.
    pub routing: f64,
    /// Routed context to the LLM call's return, minus the call's own latency (prompt,
    /// events, client queueing).
    pub act: f64,
    /// The call's return to the items written (parsing, the deferred store write).
    pub write_back: f64,
    /// Items written to the synced checkpoint (the store's flush and the journal's group
    /// commit, side by side).
    pub checkpoint: f64,
    /// When the checkpoint was published: ms since the overheads were last cleared (or since
    /// the metrics were created), to place a node's overhead on a timeline.
    pub finished_at: f64,
}

/// A run's node clocks, by (node, round).
type RunClocks = HashMap<(Arc<str>, u32), NodeClock>;

struct Inner {
    clocks: HashMap<Arc<str>, RunClocks>,
    llm_calls: BTreeMap<(Arc<str>, String), u64>,
    llm_tokens: BTreeMap<(Arc<str>, String, &'static str), u64>,
    runs_ended: BTreeMap<&'static str, u64>,
    runs_started: u64,
    routing: Histogram,
    pack_tokens: Histogram,
    overhead: Histogram,
    overhead_ring: Vec<NodePhases>,
    ring_next: usize,
    /// The origin of [`NodePhases::finished_at`].
    ring_since: Instant,
}

/// The daemon's metrics.
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                clocks: HashMap::new(),
                llm_calls: BTreeMap::new(),
                llm_tokens: BTreeMap::new(),
                runs_ended: BTreeMap::new(),
                runs_started: 0,
                routing: Histogram::new(SECONDS_BUCKETS),
                pack_tokens: Histogram::new(TOKEN_BUCKETS),
                overhead: Histogram::new(SECONDS_BUCKETS),
                overhead_ring: Vec::new(),
                ring_next: 0,
                ring_since: Instant::now(),
            }),
        }
    }
}

/// Figures only known at scrape time.
pub struct Gauges {
    /// Runs by status (`queued`, `running`, `finished`, `failed`, `cancelled`).
    pub runs_by_status: BTreeMap<&'static str, u64>,
    /// Runs waiting for a run slot.
    pub queue_depth: usize,
    /// Runs executing nodes.
    pub active: usize,
}

impl Metrics {
    /// Observes one event (the runtime's event hook calls this).
    pub fn observe(&self, event: &Event) {
        let mut m = self.inner.lock();
        // Read under the lock, so the overhead ring's finish times follow its order.
        let now = Instant::now();
        match &event.kind {
            EventKind::RunStarted { .. } => m.runs_started += 1,
            EventKind::NodeStarted { node, round, .. } => {
                let clocks = m.clocks.entry(event.run.clone()).or_default();
                clocks
                    .entry((node.clone(), *round))
                    .and_modify(|c| c.attempt_start = now)
                    .or_insert(NodeClock {
                        first_start: now,
                        attempt_start: now,
                        llm_secs: 0.0,
                        routed: None,
                        called: None,
                        written: None,
                    });
            }
            EventKind::ContextRouted {
                node,
                round,
                manifest,
                ..
            } => {
                let routed = m
                    .clocks
                    .get_mut(&event.run)
                    .and_then(|c| c.get_mut(&(node.clone(), *round)))
                    .map(|c| {
                        c.routed = Some(now);
                        now.duration_since(c.attempt_start).as_secs_f64()
                    });
                if let Some(secs) = routed {
                    m.routing.observe(secs);
                }
                m.pack_tokens.observe(f64::from(manifest.tokens_used));
            }
            EventKind::LlmCall {
                node,
                role,
                round,
                model,
                usage,
                latency_ms,
                ..
            } => {
                *m.llm_calls
                    .entry((role.clone(), model.clone()))
                    .or_default() += 1;
                *m.llm_tokens
                    .entry((role.clone(), model.clone(), "prompt"))
                    .or_default() += u64::from(usage.prompt_tokens);
                *m.llm_tokens
                    .entry((role.clone(), model.clone(), "completion"))
                    .or_default() += u64::from(usage.completion_tokens);
                if let Some(clock) = m
                    .clocks
                    .get_mut(&event.run)
                    .and_then(|c| c.get_mut(&(node.clone(), *round)))
                {
                    clock.llm_secs += latency_ms / 1e3;
                    clock.called = Some(now);
                }
            }
            EventKind::ItemsWritten { node, round, .. } => {
                if let Some(clock) = m
                    .clocks
                    .get_mut(&event.run)
                    .and_then(|c| c.get_mut(&(node.clone(), *round)))
                {
                    clock.written = Some(now);
                }
            }
            EventKind::NodeFinished { node, round, .. } => {
                let clock = m
                    .clocks
                    .get_mut(&event.run)
                    .and_then(|c| c.remove(&(node.clone(), *round)));
                if let Some(clock) = clock {
                    let wall = now.duration_since(clock.first_start).as_secs_f64();
                    let overhead = (wall - clock.llm_secs).max(0.0);
                    m.overhead.observe(overhead);
                    let ms = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
                        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64() * 1e3,
                        _ => 0.0,
                    };
                    let phases = NodePhases {
                        overhead: overhead * 1e3,
                        routing: ms(Some(clock.attempt_start), clock.routed),
                        act: (ms(clock.routed, clock.called) - clock.llm_secs * 1e3).max(0.0),
                        write_back: ms(clock.called.or(clock.routed), clock.written),
                        checkpoint: ms(clock.written, Some(now)),
                        finished_at: ms(Some(m.ring_since), Some(now)),
                    };
                    let next = m.ring_next;
                    if m.overhead_ring.len() < OVERHEAD_SAMPLES {
                        m.overhead_ring.push(phases);
                    } else {
                        m.overhead_ring[next] = phases;
                    }
                    m.ring_next = (next + 1) % OVERHEAD_SAMPLES;
                }
            }
            kind if kind.is_terminal() => {
                m.clocks.remove(&event.run);
                *m.runs_ended.entry(kind.name()).or_default() += 1;
            }
            EventKind::RunDeleted => {
                m.clocks.remove(&event.run);
            }
            _ => {}
        }
    }

    /// The most recent node overheads (wall time minus LLM time), in ms; for benchmarks.
    pub fn node_overheads_ms(&self) -> Vec<f64> {
        self.node_phases_ms().iter().map(|p| p.overhead).collect()
    }

    /// The most recent nodes' overheads broken down by phase; for benchmarks.
    pub fn node_phases_ms(&self) -> Vec<NodePhases> {
        self.inner.lock().overhead_ring.clone()
    }

    /// Forgets the node overheads recorded so far (after a benchmark's warm-up).
    pub fn clear_node_overheads(&self) {
        let mut m = self.inner.lock();
        m.overhead_ring.clear();
        m.ring_next = 0;
        m.ring_since = Instant::now();
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let m = self.inner.lock();
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP agentd_runs Runs known to the daemon, by status.\n# TYPE agentd_runs gauge"
        );
        for (status, n) in &gauges.runs_by_status {
            let _ = writeln!(out, "agentd_runs{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP agentd_queue_depth Runs waiting for a run slot.\n# TYPE agentd_queue_depth gauge\nagentd_queue_depth {}",
            gauges.queue_depth
        );
        let _ = writeln!(
            out,
            "# HELP agentd_runs_active Runs executing nodes.\n# TYPE agentd_runs_active gauge\nagentd_runs_active {}",
            gauges.active
        );
        let _ = writeln!(
            out,
            "# HELP agentd_runs_started_total Runs started since the daemon started.\n# TYPE agentd_runs_started_total counter\nagentd_runs_started_total {}",
            m.runs_started
        );
        let _ = writeln!(
            out,
            "# HELP agentd_runs_ended_total Runs ended since the daemon started, by terminal event.\n# TYPE agentd_runs_ended_total counter"
        );
        for (event, n) in &m.runs_ended {
            let _ = writeln!(out, "agentd_runs_ended_total{{event=\"{event}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP agentd_llm_calls_total LLM calls, by role and model.\n# TYPE agentd_llm_calls_total counter"
        );
        for ((role, model), n) in &m.llm_calls {
            let _ = writeln!(
                out,
                "agentd_llm_calls_total{{role=\"{}\",model=\"{}\"}} {n}",
                escape(role),
                escape(model)
            );
        }
        let _ = writeln!(
            out,
            "# HELP agentd_llm_tokens_total LLM tokens, by role, model and type (prompt or completion).\n# TYPE agentd_llm_tokens_total counter"
        );
        for ((role, model, kind), n) in &m.llm_tokens {
            let _ = writeln!(
                out,
                "agentd_llm_tokens_total{{role=\"{}\",model=\"{}\",type=\"{kind}\"}} {n}",
                escape(role),
                escape(model)
            );
        }
        m.routing.render(
            &mut out,
            "agentd_routing_latency_seconds",
            "Time from a node's start to its routed context.",
        );
        m.pack_tokens.render(
            &mut out,
            "agentd_context_pack_tokens",
            "Tokens of each routed context pack.",
        );
        m.overhead.render(
            &mut out,
            "agentd_node_overhead_seconds",
            "A node's wall time minus its LLM time, to its synced checkpoint.",
        );
        out
    }
}

/// Escapes a label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(3.0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count 3"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
