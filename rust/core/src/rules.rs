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
//! # One rule for every service
//!
//! A rule whose target name contains `${service}` (see [`SERVICE_PLACEHOLDER`]) counts each
//! service it matches in a window of its own, and its decisions are for that service's workload:
//! `match: { service: "*" }`, `when: { anomalous: true }` and a target named `${service}` is one
//! anomaly rule per service, in a few lines. A decision carries the service ([`Decision::service`]);
//! the daemon puts it into its own copy of the target (the collector's decision event sits on a
//! span of that service). Windows are made when a key of a new service is first seen, so there
//! are at most as many as keys.
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

use crate::config::{ActionKind, Rule, Target};
use crate::keys::{KeyId, glob_match};

/// In a rule's target name, stands for the service of the spans it counts (one window per
/// service).
pub const SERVICE_PLACEHOLDER: &str = "${service}";

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
    /// For a rule whose target is named after the service (`${service}`): the service.
    pub service: Option<String>,
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
    /// Whether the span counts as anomalous (kept, after training).
    pub anomalous: bool,
    /// Whether the span's service is in an incident.
    pub incident: bool,
    /// Evidence ids.
    pub trace_id: [u8; 16],
    /// Evidence ids.
    pub span_id: [u8; 8],
    /// Index in the batch.
    pub span_index: u32,
    /// The span's key.
    pub key: KeyId,
}

/// Where a key's spans go: a rule and one of its windows.
pub type Slot = (u16, u32);

/// All rules and their windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Windows; a rule named after the service has one per service.
    state: Vec<RuleState>,
    /// Per rule: its window (a fixed target) or its windows by service (`${service}`), with
    /// the service each window is for.
    windows: Vec<Windows>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Windows {
    One(u32),
    PerService(Vec<(String, u32)>),
}

impl Rule {
    /// Whether the rule's target is named after the service of its spans (`${service}`).
    pub fn per_service(&self) -> bool {
        self.action.target.name.contains(SERVICE_PLACEHOLDER)
    }

    /// The workload a decision of this rule is for. For a rule named after the service, the
    /// service (the one whose spans fired it) must match the rule's service pattern and make a
    /// valid Kubernetes object name (a DNS-1123 subdomain): a service name is span content, and
    /// only the rule decides which workloads it may reach.
    pub fn resolve_target(&self, service: Option<&str>) -> Result<Target, String> {
        let mut t = self.action.target.clone();
        if !self.per_service() {
            return Ok(t);
        }
        let s = service.ok_or("no service.name on the decision's span")?;
        if !glob_match(&self.matcher.service, s) {
            return Err(format!(
                "service {s:?} does not match the rule's service pattern {:?}",
                self.matcher.service
            ));
        }
        t.name = t.name.replace(SERVICE_PLACEHOLDER, s);
        if !is_dns1123_subdomain(&t.name) {
            return Err(format!("{:?} is not a valid object name", t.name));
        }
        Ok(t)
    }
}

/// A Kubernetes object name: at most 253 characters of lowercase letters, digits, `-` and `.`,
/// starting and ending with a letter or digit.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|c| ok(c) || c == b'-' || c == b'.')
        && s.bytes().next().is_some_and(ok)
        && s.bytes().last().is_some_and(ok)
}

impl RuleSet {
    /// Windows for `rules`, all empty.
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut state = Vec::new();
        let windows = rules
            .iter()
            .map(|r| {
                if r.per_service() {
                    Windows::PerService(Vec::new())
                } else {
                    state.push(RuleState::new(r.count));
                    Windows::One(state.len() as u32 - 1)
                }
            })
            .collect();
        Self {
            rules,
            state,
            windows,
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The windows that spans of `service::operation` go to, making a window for `service` in
    /// each matching per-service rule that has none yet.
    pub fn slots(&mut self, service: &str, operation: &str) -> Vec<Slot> {
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if !(glob_match(&r.matcher.service, service)
                && glob_match(&r.matcher.operation, operation))
            {
                continue;
            }
            let slot = match &mut self.windows[i] {
                Windows::One(s) => *s,
                Windows::PerService(list) => match list.iter().find(|(s, _)| s == service) {
                    Some(&(_, slot)) => slot,
                    None => {
                        self.state.push(RuleState::new(r.count));
                        let slot = self.state.len() as u32 - 1;
                        list.push((service.to_string(), slot));
                        slot
                    }
                },
            };
            out.push((i as u16, slot));
        }
        out
    }

    /// Whether some per-service rule already has a window for `service`.
    pub fn has_window_for(&self, service: &str) -> bool {
        self.windows.iter().any(|w| match w {
            Windows::PerService(list) => list.iter().any(|(s, _)| s == service),
            Windows::One(_) => false,
        })
    }

    /// Like [`RuleSet::slots`], but only the windows of rules with a fixed target (never makes
    /// a window).
    pub fn fixed_slots(&self, service: &str, operation: &str) -> Vec<Slot> {
        self.rules
            .iter()
            .zip(&self.windows)
            .enumerate()
            .filter_map(|(i, (r, w))| match w {
                Windows::One(slot)
                    if glob_match(&r.matcher.service, service)
                        && glob_match(&r.matcher.operation, operation) =>
                {
                    Some((i as u16, *slot))
                }
                _ => None,
            })
            .collect()
    }

    /// Feed one span to a rule's window; a decision if the rule fired.
    pub fn observe(&mut self, (i, slot): Slot, obs: &Observation, now_ns: u64) -> Option<Decision> {
        let i = i as usize;
        let rule = &self.rules[i];
        let st = &mut self.state[slot as usize];
        let window_ns = (rule.window_ms * 1e6) as u64;
        if rule.action.kind == ActionKind::Auto {
            st.arrival(now_ns, (window_ns / AUTO_BUCKETS as u64).max(1));
        }
        let slow = rule.duration_above_ms.is_none_or(|t| obs.duration_ms > t);
        let breach = slow && (!rule.anomalous || obs.anomalous) && (!rule.incident || obs.incident);
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
        let service = match &self.windows[i] {
            Windows::One(_) => None,
            Windows::PerService(list) => list
                .iter()
                .find(|(_, s)| *s == slot)
                .map(|(name, _)| name.clone()),
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
            service,
        })
    }

    /// The workload a decision is for: its rule's target, named after its service for a rule
    /// with `${service}` in the target's name.
    pub fn target_of(&self, d: &Decision) -> Target {
        let mut t = self.rules[d.rule_index as usize].action.target.clone();
        if let Some(s) = &d.service {
            t.name = t.name.replace(SERVICE_PLACEHOLDER, s);
        }
        t
    }

    /// Merge decisions of one batch that name the same target: the first one stays (its span
    /// carries the event) and counts the others in `conflated`.
    pub fn conflate(&self, decisions: &mut Vec<Decision>) {
        if decisions.len() < 2 {
            return;
        }
        let mut i = 0;
        while i < decisions.len() {
            let target = self.target_of(&decisions[i]);
            let mut j = i + 1;
            while j < decisions.len() {
                if self.target_of(&decisions[j]) == target {
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
            incident: false,
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
        assert!(rs.observe((0, 0), &obs(200.0), 0).is_none());
        assert!(
            rs.observe((0, 0), &obs(50.0), 10 * MS).is_none(),
            "not a breach"
        );
        assert!(rs.observe((0, 0), &obs(200.0), 20 * MS).is_none());
        let d = rs
            .observe((0, 0), &obs(300.0), 30 * MS)
            .expect("third breach fires");
        assert_eq!(d.count, 3);
        assert_eq!(d.observed_ms, 300.0);
        assert_eq!(d.action, ActionKind::Horizontal);
        // Cleared: needs three fresh breaches.
        assert!(rs.observe((0, 0), &obs(300.0), 40 * MS).is_none());
    }

    #[test]
    fn window_boundary_is_half_open() {
        let y = "rules:\n- name: r\n  when: { duration_above: 0ms }\n  count: 2\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, name: a }, max: 5 }\n";
        let mut rs = rules(y);
        rs.observe((0, 0), &obs(1.0), 1_000 * MS);
        assert!(
            rs.observe((0, 0), &obs(1.0), 2_000 * MS - 1).is_some(),
            "W − 1 ns apart: both inside"
        );
        let mut rs = rules(y);
        rs.observe((0, 0), &obs(1.0), 1_000 * MS);
        assert!(
            rs.observe((0, 0), &obs(1.0), 2_000 * MS).is_none(),
            "exactly W apart: the first left"
        );
    }

    #[test]
    fn anomalous_condition() {
        let mut rs = rules(
            "rules:\n- name: r\n  when: { anomalous: true }\n  count: 1\n  window: 1s\n  action: { kind: vertical, target: { kind: Deployment, name: a }, max: 5 }\n",
        );
        assert!(rs.observe((0, 0), &obs(1e6), 0).is_none());
        let mut o = obs(1.0);
        o.anomalous = true;
        assert_eq!(
            rs.observe((0, 0), &o, 0).unwrap().action,
            ActionKind::Vertical
        );
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
            if let Some(dec) = rs.observe((0, 0), &obs(d), t) {
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
            rs.observe((0, 0), &obs(10.0), t);
            t += 10 * MS;
        }
        let mut last = None;
        for _ in 0..300u64 {
            if let Some(dec) = rs.observe((0, 0), &obs(500.0), t) {
                last = Some(dec);
            }
            t += 10 * MS / 3;
        }
        let dec = last.expect("fired");
        assert_eq!(dec.action, ActionKind::Horizontal, "{dec:?}");
        assert!(dec.load_ratio.unwrap() > 2.0);
    }

    #[test]
    fn per_service_rules_count_each_service_apart() {
        let mut rs = rules(
            "rules:\n- name: slow-service\n  match: { service: \"*\" }\n  when: { anomalous: true }\n  count: 2\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, namespace: shop, name: \"${service}\" }, max: 5 }\n",
        );
        let a = rs.slots("cart", "GetCart");
        let a2 = rs.slots("cart", "AddItem");
        let b = rs.slots("checkout", "PlaceOrder");
        assert_eq!(a, a2, "one window per service");
        assert_ne!(a, b);
        let mut o = obs(1.0);
        o.anomalous = true;
        assert!(rs.observe(a[0], &o, 0).is_none());
        assert!(
            rs.observe(b[0], &o, MS).is_none(),
            "another service's window"
        );
        let d = rs.observe(a2[0], &o, 2 * MS).expect("cart's second breach");
        assert_eq!(d.service.as_deref(), Some("cart"));
        let t = rs.target_of(&d);
        assert_eq!((t.namespace.as_str(), t.name.as_str()), ("shop", "cart"));
        let r = &rs.rules()[0];
        assert_eq!(r.resolve_target(Some("cart")).unwrap(), t);
        assert!(r.resolve_target(None).is_err());
        assert!(
            r.resolve_target(Some("Cart_Service")).is_err(),
            "not an object name"
        );
        assert!(is_dns1123_subdomain("a-b.c") && !is_dns1123_subdomain("-a"));
        let mut e = d.clone();
        e.service = Some("checkout".into());
        let mut v = vec![d, e];
        rs.conflate(&mut v);
        assert_eq!(v.len(), 2, "different services are different targets");
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
            service: None,
        };
        let mut v = vec![mk(0), mk(1), mk(2), mk(0)];
        rs.conflate(&mut v);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].rule_index, v[0].conflated), (0, 2));
        assert_eq!((v[1].rule_index, v[1].conflated), (2, 0));
    }
}
