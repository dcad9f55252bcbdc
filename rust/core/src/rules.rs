//! Latency rules: `Count(D > T, W) ≥ N` over sliding windows, and the decisions they yield.
//!
//! # Windows
//!
//! Each rule remembers the times of its last `N` breaches in a ring (memory `8·N` bytes per
//! rule). At time `now` (from the engine's injected clock, nanoseconds) a breach at time `t` is
//! inside the window iff `now − t < W`: the window is the half-open interval `(now − W, now]`.
//! The rule fires when a breach brings the count inside the window to `N`; the ring is then
//! cleared, so the next decision needs `N` fresh breaches. Rules see every scored span, whether
//! or not the sampler keeps it.
//!
//! # `auto` actions
//!
//! A rule with `kind: auto` also counts *every* span it matches (breach or not) in 8 buckets of
//! `W/8`. When a bucket without breaches closes, its count updates an exponentially weighted
//! baseline (weight [`AUTO_BASELINE_RATE`]); buckets with breaches do not, so a sustained load
//! spike never becomes the baseline it is judged against. When the rule fires, the arrivals of the last `W` (the 8 buckets)
//! are compared with the baseline's `8 ×` per-bucket rate:
//!
//! * `load_ratio = arrivals_in_window / (8 · baseline_per_bucket) ≥ AUTO_LOAD_RATIO` (1.5)
//!   **and** the baseline has seen at least 8 closed buckets → `horizontal`: more requests are
//!   arriving than usual, a load bottleneck, so add replicas;
//! * otherwise → `vertical`: the operation slowed down at a steady rate, so give its pods more
//!   cpu/memory.
//!
//! The decision carries `load_ratio` so the operator sees why. The first decision of a sudden
//! load spike may still say `vertical` when the `N` breaches arrive faster than the arrival
//! buckets can show the new rate; the following ones say `horizontal`.

use serde::{Deserialize, Serialize};

use crate::config::{ActionKind, Rule};
use crate::keys::{KeyId, glob_match};

/// Buckets per window for `auto` arrival counting.
pub const AUTO_BUCKETS: usize = 8;
/// Weight of a closed bucket in the arrival baseline.
pub const AUTO_BASELINE_RATE: f64 = 0.05;
/// Arrival rate above the baseline by this factor means load.
pub const AUTO_LOAD_RATIO: f64 = 1.5;

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Index of the rule in the configuration.
    pub rule_index: u32,
    /// The rule's name.
    pub rule: String,
    /// `horizontal` or `vertical` (`auto` is resolved).
    pub action: ActionKind,
    /// Breaches counted in the window (N).
    pub count: u32,
    /// The window, ms.
    pub window_ms: f64,
    /// The rule's duration threshold, ms.
    pub threshold_ms: Option<f64>,
    /// Duration of the span that completed the window, ms.
    pub observed_ms: f64,
    /// That span's anomaly score, if it had one.
    pub score: Option<f64>,
    /// For `auto` rules: arrivals in the window over the baseline.
    pub load_ratio: Option<f64>,
    /// Evidence: trace id of the span that completed the window.
    pub trace_id: [u8; 16],
    /// Evidence: span id.
    pub span_id: [u8; 8],
    /// Index of that span in its batch.
    pub span_index: u32,
    /// That span's key (`service::operation`), as [`crate::Engine::intern`] numbers them.
    pub key: KeyId,
    /// When the rule fired (engine clock, ns).
    pub time_ns: u64,
    /// Other decisions for the same target in the same batch that were merged into this one.
    pub conflated: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RuleState {
    /// Breach times, ring of capacity `count`.
    ring: Vec<u64>,
    head: usize,
    len: usize,
    /// `auto`: arrival buckets.
    buckets: [u32; AUTO_BUCKETS],
    bucket_start_ns: u64,
    bucket_idx: usize,
    baseline_per_bucket: f64,
    closed_buckets: u64,
    /// Whether the current bucket saw a breach (such buckets do not update the baseline).
    bucket_breached: bool,
}

impl RuleState {
    fn new(n: u32) -> Self {
        Self {
            ring: vec![0; n as usize],
            head: 0,
            len: 0,
            buckets: [0; AUTO_BUCKETS],
            bucket_start_ns: 0,
            bucket_idx: 0,
            baseline_per_bucket: 0.0,
            closed_buckets: 0,
            bucket_breached: false,
        }
    }

    /// Record a breach at `now`; true when the window now holds `N` breaches.
    fn breach(&mut self, now: u64, window_ns: u64) -> bool {
        let cap = self.ring.len();
        // Drop breaches that left the window (oldest first).
        while self.len > 0 {
            let oldest = self.ring[(self.head + cap - self.len) % cap];
            if now.saturating_sub(oldest) >= window_ns {
                self.len -= 1;
            } else {
                break;
            }
        }
        self.ring[self.head] = now;
        self.head = (self.head + 1) % cap;
        self.len = (self.len + 1).min(cap);
        if self.len == cap {
            self.len = 0;
            true
        } else {
            false
        }
    }

    fn arrival(&mut self, now: u64, bucket_ns: u64) {
        if self.bucket_start_ns == 0 {
            self.bucket_start_ns = now;
        }
        let mut closed = 0;
        while now.saturating_sub(self.bucket_start_ns) >= bucket_ns && closed < 4 * AUTO_BUCKETS {
            let c = self.buckets[self.bucket_idx] as f64;
            if !self.bucket_breached {
                self.baseline_per_bucket = if self.closed_buckets == 0 {
                    c
                } else {
                    self.baseline_per_bucket + AUTO_BASELINE_RATE * (c - self.baseline_per_bucket)
                };
                self.closed_buckets += 1;
            }
            self.bucket_breached = false;
            self.bucket_idx = (self.bucket_idx + 1) % AUTO_BUCKETS;
            self.buckets[self.bucket_idx] = 0;
            self.bucket_start_ns += bucket_ns;
            closed += 1;
        }
        if now.saturating_sub(self.bucket_start_ns) >= bucket_ns {
            // A long silence: restart the bucket grid at now.
            self.bucket_start_ns = now;
        }
        self.buckets[self.bucket_idx] += 1;
    }

    fn load_ratio(&self) -> Option<f64> {
        if self.closed_buckets < AUTO_BUCKETS as u64 || self.baseline_per_bucket <= 0.0 {
            return None;
        }
        let recent: u32 = self.buckets.iter().sum();
        Some(recent as f64 / (AUTO_BUCKETS as f64 * self.baseline_per_bucket))
    }
}

/// What the rules need to know about one span.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// Duration, ms.
    pub duration_ms: f64,
    /// Anomaly score (None before the model is warm).
    pub score: Option<f64>,
    /// Whether the span counts as anomalous (score ≥ min_score, after training).
    pub anomalous: bool,
    /// Evidence ids.
    pub trace_id: [u8; 16],
    /// Evidence ids.
    pub span_id: [u8; 8],
    /// Index in the batch.
    pub span_index: u32,
    /// The span's key.
    pub key: KeyId,
}

/// All rules and their windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSet {
    rules: Vec<Rule>,
    state: Vec<RuleState>,
}

impl RuleSet {
    /// Windows for `rules`, all empty.
    pub fn new(rules: Vec<Rule>) -> Self {
        let state = rules.iter().map(|r| RuleState::new(r.count)).collect();
        Self { rules, state }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Indices of the rules whose patterns match `service` and `operation`.
    pub fn matching(&self, service: &str, operation: &str) -> Vec<u16> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                glob_match(&r.matcher.service, service)
                    && glob_match(&r.matcher.operation, operation)
            })
            .map(|(i, _)| i as u16)
            .collect()
    }

    /// Feed one span to rule `i` at time `now_ns`; a decision if the rule fired.
    pub fn observe(&mut self, i: usize, obs: &Observation, now_ns: u64) -> Option<Decision> {
        let rule = &self.rules[i];
        let st = &mut self.state[i];
        let window_ns = (rule.window_ms * 1e6) as u64;
        if rule.action.kind == ActionKind::Auto {
            st.arrival(now_ns, (window_ns / AUTO_BUCKETS as u64).max(1));
        }
        let slow = rule.duration_above_ms.is_none_or(|t| obs.duration_ms > t);
        let breach = slow && (!rule.anomalous || obs.anomalous);
        if breach {
            st.bucket_breached = true;
        }
        if !breach || !st.breach(now_ns, window_ns.max(1)) {
            return None;
        }
        let load_ratio = st.load_ratio();
        let action = match rule.action.kind {
            ActionKind::Auto => {
                if load_ratio.is_some_and(|r| r >= AUTO_LOAD_RATIO) {
                    ActionKind::Horizontal
                } else {
                    ActionKind::Vertical
                }
            }
            k => k,
        };
        Some(Decision {
            rule_index: i as u32,
            rule: rule.name.clone(),
            action,
            count: rule.count,
            window_ms: rule.window_ms,
            threshold_ms: rule.duration_above_ms,
            observed_ms: obs.duration_ms,
            score: obs.score,
            load_ratio: if rule.action.kind == ActionKind::Auto {
                load_ratio
            } else {
                None
            },
            trace_id: obs.trace_id,
            span_id: obs.span_id,
            span_index: obs.span_index,
            key: obs.key,
            time_ns: now_ns,
            conflated: 0,
        })
    }

    /// Merge decisions of one batch that name the same target: the first one stays (its span
    /// carries the event) and counts the others in `conflated`.
    pub fn conflate(&self, decisions: &mut Vec<Decision>) {
        if decisions.len() < 2 {
            return;
        }
        let mut i = 0;
        while i < decisions.len() {
            let target = &self.rules[decisions[i].rule_index as usize].action.target;
            let mut j = i + 1;
            while j < decisions.len() {
                if &self.rules[decisions[j].rule_index as usize].action.target == target {
                    decisions.remove(j);
                    decisions[i].conflated += 1;
                } else {
                    j += 1;
                }
            }
            i += 1;
        }
    }

    /// Approximate heap bytes of the windows.
    pub fn memory_bytes(&self) -> usize {
        self.state
            .iter()
            .map(|s| s.ring.capacity() * 8 + std::mem::size_of::<RuleState>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesFile;

    fn rules(yaml: &str) -> RuleSet {
        RuleSet::new(RulesFile::from_yaml(yaml).unwrap().rules)
    }

    fn obs(d: f64) -> Observation {
        Observation {
            duration_ms: d,
            score: Some(0.5),
            anomalous: false,
            trace_id: [1; 16],
            span_id: [2; 8],
            span_index: 0,
            key: 0,
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn fires_at_n_within_window_and_resets() {
        let mut rs = rules(
            "rules:\n- name: r\n  when: { duration_above: 100ms }\n  count: 3\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, name: a }, max: 5 }\n",
        );
        assert!(rs.observe(0, &obs(200.0), 0).is_none());
        assert!(rs.observe(0, &obs(50.0), 10 * MS).is_none(), "not a breach");
        assert!(rs.observe(0, &obs(200.0), 20 * MS).is_none());
        let d = rs
            .observe(0, &obs(300.0), 30 * MS)
            .expect("third breach fires");
        assert_eq!(d.count, 3);
        assert_eq!(d.observed_ms, 300.0);
        assert_eq!(d.action, ActionKind::Horizontal);
        // Cleared: needs three fresh breaches.
        assert!(rs.observe(0, &obs(300.0), 40 * MS).is_none());
    }

    #[test]
    fn window_boundary_is_half_open() {
        let y = "rules:\n- name: r\n  when: { duration_above: 0ms }\n  count: 2\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, name: a }, max: 5 }\n";
        let mut rs = rules(y);
        rs.observe(0, &obs(1.0), 1_000 * MS);
        assert!(
            rs.observe(0, &obs(1.0), 2_000 * MS - 1).is_some(),
            "W − 1 ns apart: both inside"
        );
        let mut rs = rules(y);
        rs.observe(0, &obs(1.0), 1_000 * MS);
        assert!(
            rs.observe(0, &obs(1.0), 2_000 * MS).is_none(),
            "exactly W apart: the first left"
        );
    }

    #[test]
    fn anomalous_condition() {
        let mut rs = rules(
            "rules:\n- name: r\n  when: { anomalous: true }\n  count: 1\n  window: 1s\n  action: { kind: vertical, target: { kind: Deployment, name: a }, max: 5 }\n",
        );
        assert!(rs.observe(0, &obs(1e6), 0).is_none());
        let mut o = obs(1.0);
        o.anomalous = true;
        assert_eq!(rs.observe(0, &o, 0).unwrap().action, ActionKind::Vertical);
    }

    #[test]
    fn auto_picks_horizontal_under_load_and_vertical_at_steady_rate() {
        let y = "rules:\n- name: r\n  when: { duration_above: 100ms }\n  count: 5\n  window: 800ms\n  action: { kind: auto, target: { kind: Deployment, name: a }, max: 5 }\n";
        // Steady 10 spans per 100 ms bucket for 4 s, then slow at the same rate.
        let mut rs = rules(y);
        let mut t = 1;
        let mut last = None;
        for i in 0..500u64 {
            let d = if i >= 400 { 500.0 } else { 10.0 };
            if let Some(dec) = rs.observe(0, &obs(d), t) {
                last = Some(dec);
            }
            t += 10 * MS;
        }
        let dec = last.expect("fired");
        assert_eq!(dec.action, ActionKind::Vertical, "{dec:?}");
        assert!((dec.load_ratio.unwrap() - 1.0).abs() < 0.2, "{dec:?}");
        // Same baseline, then three times the arrivals, slow.
        let mut rs = rules(y);
        let mut t = 1;
        for _ in 0..400u64 {
            rs.observe(0, &obs(10.0), t);
            t += 10 * MS;
        }
        let mut last = None;
        for _ in 0..300u64 {
            if let Some(dec) = rs.observe(0, &obs(500.0), t) {
                last = Some(dec);
            }
            t += 10 * MS / 3;
        }
        let dec = last.expect("fired");
        assert_eq!(dec.action, ActionKind::Horizontal, "{dec:?}");
        assert!(dec.load_ratio.unwrap() > 2.0);
    }

    #[test]
    fn conflates_same_target() {
        let rs = rules(
            "rules:\n- name: a\n  when: { duration_above: 1ms }\n  count: 1\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, name: x }, max: 5 }\n- name: b\n  when: { duration_above: 1ms }\n  count: 1\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, name: x }, max: 5 }\n- name: c\n  when: { duration_above: 1ms }\n  count: 1\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, name: y }, max: 5 }\n",
        );
        let mk = |i: u32| Decision {
            rule_index: i,
            rule: String::new(),
            action: ActionKind::Horizontal,
            count: 1,
            window_ms: 1.0,
            threshold_ms: None,
            observed_ms: 1.0,
            score: None,
            load_ratio: None,
            trace_id: [0; 16],
            span_id: [0; 8],
            span_index: i,
            key: 0,
            time_ns: 0,
            conflated: 0,
        };
        let mut v = vec![mk(0), mk(1), mk(2), mk(0)];
        rs.conflate(&mut v);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].rule_index, v[0].conflated), (0, 2));
        assert_eq!((v[1].rule_index, v[1].conflated), (2, 0));
    }
}
