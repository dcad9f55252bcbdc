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
//! # `for`: a condition that lasts
//!
//! A rule with `for: D` fires only once its target's matched spans have breached for the last
//! `D`: a run of breaches that began at least `D` ago, with no break between two of them longer
//! than [`FOR_BREAK`] of the engine's `keyed.context_window` (nor than the window: missing input
//! is not evidence). Until the run is old enough, the window keeps its `N` latest breaches
//! instead of firing. This is a Prometheus alert's `for`, and it is made for `incident: true`:
//! an incident is a state of the service, which all its spans share, so a run of them is the
//! incident lasting. The break a run survives is the verdict's own wobble: an incident is judged
//! on a context that fades over `context_window`, and a service whose slowness sits near the bar
//! goes in and out of it by chance; over half that window the context has replaced less than
//! 40 % of what it holds, so a break that short is the verdict wavering, not the evidence
//! changing (Prometheus, which evaluates `for` every interval, does not see such breaks either). Scaling takes as long as a new pod needs to start to help at all, so a
//! slowdown that is over sooner (a garbage collection, a burst, a neighbour's moment on the node)
//! is not worth acting on; a fault that calls for more capacity lasts minutes.
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
//! # Evidence between decisions
//!
//! A rule that has not fired says nothing by itself: no decision may mean healthy latency or no
//! input at all. So every window also keeps what it saw since it was last reported
//! ([`RuleSet::reports`]): the spans it matched, the breaches among them, and their latency in a
//! [`LatencyBins`] histogram (quarter-octave bins, read off the float's exponent and mantissa:
//! no logarithm on the hot path) from which the report's quantiles come. The collector sends
//! these reports to the daemon at a fixed interval, and the daemon scales down only on reports
//! that show healthy latency ([`RuleReport::healthy`]). The evidence is not part of snapshots:
//! a restart starts a new reporting interval.
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
    /// A rule with `for`: since when its matched spans have breached (with no break over
    /// [`FOR_BREAK`]), and the last breach's time (engine clock, ns; `None`: none yet).
    run: Option<(u64, u64)>,
    /// What the window saw since its last report (not snapshotted).
    #[serde(skip)]
    evidence: Evidence,
}

/// Bins of [`LatencyBins`]: quarter octaves from 1 µs, so the last bin starts at about 71 min.
pub const LATENCY_BINS: usize = 128;

/// A histogram of durations in quarter-octave bins (each bin's upper edge is at most 25 % above
/// its lower one), starting at 1 µs; shorter durations fall in the first bin, longer than the
/// last bin's start in the last. Allocated on the first duration added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyBins {
    bins: Vec<u32>,
    n: u64,
    max_ms: f64,
}

impl LatencyBins {
    /// The bin of a duration in ms: the exponent and the top two mantissa bits of the duration
    /// in µs (four linear sub-bins per octave).
    fn bin(d_ms: f64) -> usize {
        let us = d_ms * 1000.0;
        if us.is_nan() || us < 1.0 {
            return 0;
        }
        let bits = us.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
        let sub = ((bits >> 50) & 3) as i64;
        (exp * 4 + sub).clamp(0, LATENCY_BINS as i64 - 1) as usize
    }

    /// Upper edge of bin `b`, ms.
    fn upper_ms(b: usize) -> f64 {
        let (exp, sub) = ((b / 4) as i32, (b % 4) as f64);
        2f64.powi(exp) * (1.0 + (sub + 1.0) / 4.0) / 1000.0
    }

    /// Add a duration (ms).
    pub fn add(&mut self, d_ms: f64) {
        if self.bins.is_empty() {
            self.bins = vec![0; LATENCY_BINS];
        }
        let b = &mut self.bins[Self::bin(d_ms)];
        *b = b.saturating_add(1);
        self.n += 1;
        if d_ms > self.max_ms {
            self.max_ms = d_ms;
        }
    }

    /// Durations added.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// The `q` quantile (0–1), as the upper edge of its bin (never above the largest duration
    /// added): at most 25 % above the true value. None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let want = (q.clamp(0.0, 1.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut acc = 0u64;
        for (b, &c) in self.bins.iter().enumerate() {
            acc += u64::from(c);
            if acc >= want {
                return Some(Self::upper_ms(b).min(self.max_ms));
            }
        }
        Some(self.max_ms)
    }

    /// The largest duration added, ms. None when empty.
    pub fn max_ms(&self) -> Option<f64> {
        (self.n > 0).then_some(self.max_ms)
    }
}

/// What one window saw since its last report.
#[derive(Debug, Clone, Default, PartialEq)]
struct Evidence {
    since_ns: u64,
    matched: u64,
    breaches: u64,
    latency: LatencyBins,
}

/// One window's evidence over one reporting interval ([`RuleSet::reports`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleReport {
    /// Index of the rule in the configuration.
    pub rule_index: u32,
    /// The rule's name.
    pub rule: String,
    /// For a rule whose target is named after the service (`${service}`): the service.
    pub service: Option<String>,
    /// Start of the interval (engine clock, ns): the previous report, or the first span seen.
    pub since_ns: u64,
    /// End of the interval: when the report was made.
    pub until_ns: u64,
    /// Spans the window matched in the interval.
    pub matched: u64,
    /// Of them, breaches (what the rule counts).
    pub breaches: u64,
    /// Breaches inside the rule's window at `until_ns` (the rule fires at its `count`).
    pub in_window: u32,
    /// The rule's `count`.
    pub count: u32,
    /// The rule's window, ms.
    pub window_ms: f64,
    /// The rule's duration threshold, ms.
    pub threshold_ms: Option<f64>,
    /// Latency of the matched spans, ms: median, 90th and 99th percentiles (the upper edge of
    /// a quarter-octave bin: at most 25 % high) and the largest. None when nothing matched.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p90_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    /// See `p50_ms`.
    pub max_ms: Option<f64>,
}

impl RuleReport {
    /// Whether this interval is evidence of healthy latency: spans were matched (no input is
    /// no evidence), and breaches came slower than the rate at which the rule fires (`count`
    /// per `window`), so the rule would not fire at this interval's rate.
    pub fn healthy(&self) -> bool {
        let interval_ms = (self.until_ns.saturating_sub(self.since_ns) as f64 / 1e6).max(1.0);
        self.matched > 0
            && (self.breaches as f64) * self.window_ms < f64::from(self.count) * interval_ms
    }
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
            run: None,
            evidence: Evidence::default(),
        }
    }

    /// Note a breach at `now` for a rule with `for` (`for_ns`); whether the breaches have now
    /// lasted that long. A break since the last breach over `break_ns`, or not shorter than the
    /// window (missing input is not evidence), starts the run over.
    fn held(&mut self, now: u64, window_ns: u64, break_ns: u64, for_ns: u64) -> bool {
        self.run = match self.run {
            Some((since, last))
                if now.saturating_sub(last) <= break_ns && now.saturating_sub(last) < window_ns =>
            {
                Some((since, now.max(last)))
            }
            _ => Some((now, now)),
        };
        self.run
            .is_some_and(|(since, _)| now.saturating_sub(since) >= for_ns)
    }

    /// Breaches still inside the window at `now`.
    fn in_window(&self, now: u64, window_ns: u64) -> u32 {
        let cap = self.ring.len();
        (0..self.len)
            .filter(|k| {
                let t = self.ring[(self.head + cap - 1 - k) % cap];
                now.saturating_sub(t) < window_ns
            })
            .count() as u32
    }

    /// Record a breach at `now`; true when the window now holds `N` breaches and `may_fire`
    /// (the window is then emptied; otherwise it keeps its `N` latest).
    fn breach(&mut self, now: u64, window_ns: u64, may_fire: bool) -> bool {
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
        if self.len == cap && may_fire {
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
    /// Whether the span's service is in an incident of its own: its recent spans far slower
    /// than usual, and not explained by a service it calls (by operation names shared between
    /// services): one in an incident at the same time, or delayed calls into one.
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
    /// The longest break between breaches a `for` run survives, ns ([`FOR_BREAK`]; from the
    /// configuration, not the snapshot).
    #[serde(skip)]
    for_break_ns: u64,
}

/// A rule's `for` run survives a break between breaches of up to this share of the engine's
/// `keyed.context_window` (see the module docs, "`for`: a condition that lasts").
pub const FOR_BREAK: f64 = 0.5;

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
    /// Windows for `rules`, all empty; `context_window_ms` is the engine's
    /// `keyed.context_window` (for [`FOR_BREAK`]).
    pub fn new(rules: Vec<Rule>, context_window_ms: f64) -> Self {
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
        let mut set = Self {
            rules,
            state,
            windows,
            for_break_ns: 0,
        };
        set.set_context_window(context_window_ms);
        set
    }

    /// The longest break between breaches a `for` run survives, ms ([`FOR_BREAK`]).
    pub fn for_break_ms(&self) -> f64 {
        self.for_break_ns as f64 / 1e6
    }

    /// Set the engine's `keyed.context_window` (a restored rule set has it from the
    /// configuration, not the snapshot).
    pub fn set_context_window(&mut self, context_window_ms: f64) {
        self.for_break_ns = (context_window_ms * FOR_BREAK * 1e6) as u64;
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
        let ev = &mut st.evidence;
        if ev.since_ns == 0 {
            ev.since_ns = now_ns;
        }
        ev.matched += 1;
        ev.breaches += u64::from(breach);
        ev.latency.add(obs.duration_ms);
        if !breach {
            return None;
        }
        let held = rule.for_ms <= 0.0
            || st.held(
                now_ns,
                window_ns.max(1),
                self.for_break_ns,
                (rule.for_ms * 1e6) as u64,
            );
        if !st.breach(now_ns, window_ns.max(1), held) {
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

    /// How many reports [`RuleSet::reports`] would return, and the total length of their
    /// services' names.
    pub fn report_sizes(&self) -> (usize, usize) {
        self.windows.iter().fold((0, 0), |(n, b), w| match w {
            Windows::One(_) => (n + 1, b),
            Windows::PerService(l) => (
                n + l.len(),
                b + l.iter().map(|(s, _)| s.len()).sum::<usize>(),
            ),
        })
    }

    /// Every window's evidence since its last report, and a new interval from `now_ns`: one
    /// report per rule with a fixed target, one per service seen for a rule named after the
    /// service.
    pub fn reports(&mut self, now_ns: u64) -> Vec<RuleReport> {
        let mut out = Vec::new();
        for (i, (rule, windows)) in self.rules.iter().zip(&self.windows).enumerate() {
            let list: Vec<(Option<&str>, u32)> = match windows {
                Windows::One(slot) => vec![(None, *slot)],
                Windows::PerService(l) => l.iter().map(|(s, w)| (Some(s.as_str()), *w)).collect(),
            };
            let window_ns = ((rule.window_ms * 1e6) as u64).max(1);
            for (service, slot) in list {
                let st = &mut self.state[slot as usize];
                let ev = std::mem::take(&mut st.evidence);
                st.evidence.since_ns = now_ns;
                let since_ns = if ev.since_ns == 0 {
                    now_ns
                } else {
                    ev.since_ns
                };
                out.push(RuleReport {
                    rule_index: i as u32,
                    rule: rule.name.clone(),
                    service: service.map(str::to_string),
                    since_ns: since_ns.min(now_ns),
                    until_ns: now_ns,
                    matched: ev.matched,
                    breaches: ev.breaches,
                    in_window: st.in_window(now_ns, window_ns),
                    count: rule.count,
                    window_ms: rule.window_ms,
                    threshold_ms: rule.duration_above_ms,
                    p50_ms: ev.latency.quantile(0.5),
                    p90_ms: ev.latency.quantile(0.9),
                    p99_ms: ev.latency.quantile(0.99),
                    max_ms: ev.latency.max_ms(),
                });
            }
        }
        out
    }

    /// Approximate heap bytes of the windows.
    pub fn memory_bytes(&self) -> usize {
        self.state
            .iter()
            .map(|s| {
                s.ring.capacity() * 8
                    + s.evidence.latency.bins.capacity() * 4
                    + std::mem::size_of::<RuleState>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesFile;

    fn rules(yaml: &str) -> RuleSet {
        RuleSet::new(RulesFile::from_yaml(yaml).unwrap().rules, 5_000.0)
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
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn latency_bins_quantiles_are_within_a_quarter_octave() {
        let mut b = LatencyBins::default();
        assert_eq!(b.quantile(0.5), None);
        for i in 1..=1000 {
            b.add(i as f64); // 1..1000 ms
        }
        for (q, want) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = b.quantile(q).unwrap();
            assert!(got >= want && got <= want * 1.25, "q{q}: {got} vs {want}");
        }
        assert_eq!(b.max_ms(), Some(1000.0));
        assert_eq!(b.quantile(1.0), Some(1000.0));
        // Out of range and bad values land in the end bins, never panic.
        for d in [0.0, -1.0, f64::NAN, 1e-9, 1e12, f64::INFINITY] {
            b.add(d);
        }
        assert_eq!(b.count(), 1006);
    }

    #[test]
    fn reports_say_what_each_window_saw_and_start_a_new_interval() {
        let mut r = rules(
            r#"
rules:
  - name: slow
    match: { service: "*" }
    when: { duration_above: 100ms }
    count: 3
    window: 10s
    action: { kind: horizontal, target: { kind: Deployment, name: "${service}" }, max: 3 }
  - name: fixed
    match: { service: a }
    when: { duration_above: 100ms }
    count: 3
    window: 10s
    action: { kind: horizontal, target: { kind: Deployment, name: a }, max: 3 }
"#,
        );
        // Nothing seen yet: one report for the fixed rule, none per service.
        let first = r.reports(SEC);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].rule.as_str(), first[0].matched), ("fixed", 0));
        assert!(!first[0].healthy(), "no input is no evidence");
        let a = r.slots("a", "op");
        let b = r.slots("b", "op");
        for k in 0..10u64 {
            let t = 2 * SEC + k * SEC / 10;
            for &s in &a {
                r.observe(s, &obs(if k == 0 { 500.0 } else { 20.0 }), t);
            }
            for &s in &b {
                r.observe(s, &obs(500.0), t);
            }
        }
        let rep = r.reports(12 * SEC);
        assert_eq!(rep.len(), 3);
        let find = |rule: &str, svc: Option<&str>| {
            rep.iter()
                .find(|x| x.rule == rule && x.service.as_deref() == svc)
                .unwrap()
                .clone()
        };
        let slow_a = find("slow", Some("a"));
        assert_eq!((slow_a.matched, slow_a.breaches), (10, 1));
        assert_eq!(slow_a.since_ns, 2 * SEC);
        assert_eq!(slow_a.until_ns, 12 * SEC);
        assert!(slow_a.p50_ms.unwrap() >= 20.0 && slow_a.p50_ms.unwrap() <= 25.0);
        assert_eq!(slow_a.max_ms, Some(500.0));
        assert!(
            slow_a.healthy(),
            "1 breach in 10 s, the rule fires at 3 in 10 s"
        );
        let slow_b = find("slow", Some("b"));
        assert_eq!((slow_b.matched, slow_b.breaches), (10, 10));
        assert!(!slow_b.healthy());
        assert_eq!(find("fixed", None).matched, 10);
        // A new interval: nothing matched since.
        let next = r.reports(20 * SEC);
        assert!(
            next.iter()
                .all(|x| x.matched == 0 && x.since_ns == 12 * SEC)
        );
    }

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
    fn for_asks_the_breaches_to_last_that_long_without_a_long_break() {
        let y = "rules:\n- name: r\n  when: { duration_above: 100ms }\n  count: 3\n  window: 1s\n  for: 500ms\n  action: { kind: horizontal, target: { kind: Deployment, name: a }, max: 5 }\n";
        // A context window of 400 ms: a run survives breaks of up to 200 ms.
        let mut rs = RuleSet::new(RulesFile::from_yaml(y).unwrap().rules, 400.0);
        // Three breaches, but the run is 200 ms old: no decision yet, and the window keeps them.
        for t in [0, 100, 200] {
            assert!(rs.observe((0, 0), &obs(200.0), t * MS).is_none());
        }
        // A span that does not breach is not a break by itself...
        assert!(rs.observe((0, 0), &obs(50.0), 250 * MS).is_none());
        // ...but 300 ms without a breach is: the run starts over at 500 ms.
        for t in [500, 600, 700, 900] {
            assert!(rs.observe((0, 0), &obs(200.0), t * MS).is_none(), "{t}");
        }
        // At 1,000 ms it has lasted 500 ms, with three breaches in the window.
        let d = rs
            .observe((0, 0), &obs(200.0), 1_000 * MS)
            .expect("held for 500 ms");
        assert_eq!(d.count, 3);
        // Cleared, as without `for`; the run goes on through a span that does not breach and
        // a break of 200 ms.
        assert!(rs.observe((0, 0), &obs(50.0), 1_050 * MS).is_none());
        assert!(rs.observe((0, 0), &obs(200.0), 1_200 * MS).is_none());
        assert!(rs.observe((0, 0), &obs(200.0), 1_300 * MS).is_none());
        assert!(rs.observe((0, 0), &obs(200.0), 1_400 * MS).is_some());
        // A silence ends the run too: missing input is not evidence.
        for t in [3_000, 3_100, 3_200, 3_300, 3_400] {
            assert!(rs.observe((0, 0), &obs(200.0), t * MS).is_none(), "{t}");
        }
        assert!(rs.observe((0, 0), &obs(200.0), 3_500 * MS).is_some());
        // A break the context window would allow is still cut at the rule's window: with a
        // context window of 10 s (breaks of 5 s), 1.2 s without a breach in a 1 s window ends
        // the run.
        let mut rs = RuleSet::new(RulesFile::from_yaml(y).unwrap().rules, 10_000.0);
        for t in [0, 100, 200, 1_400, 1_500] {
            assert!(rs.observe((0, 0), &obs(200.0), t * MS).is_none(), "{t}");
        }
        assert!(rs.observe((0, 0), &obs(200.0), 1_900 * MS).is_some());
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
