//! Featurization: a span's timing and key become the feature vector Half-Space-Trees scores.
//!
//! # Validating timing
//!
//! [`duration_ms`] turns start/end nanoseconds into milliseconds, refusing (as a [`SkipReason`],
//! never a panic) zero timestamps, an end before the start, timestamps outside 2000–2200, and
//! durations over a day.
//!
//! # `paper` mode
//!
//! Exactly River's view of the paper's features: a sparse dict `{ key: 1.0, "duration": d }` with
//! `d = min(duration_ms, max_duration) / max_duration`. River builds its trees from the *first*
//! learned span's features, sorted by name, so the forest knows two features: `"duration"` and
//! that first span's key. Every other key is absent from the split feature, and absent features
//! go to the child with the larger latest-window mass (see [`crate::hst`]). In other words the
//! paper's detector judges nearly every span on one global duration scale.
//!
//! # `keyed` mode (the default)
//!
//! Each key has a latency model ([`crate::latency`]): a decayed histogram of its durations, from
//! which a span gets its *tail probability* (the share of the key's learned spans that were slower)
//! and its *position* (the share that were faster). Each key, and each service, also has a
//! *context*: the mean position of its recent spans (over about `context_window` of the
//! engine's clock), 0.5 while it behaves as learned. The forest sees two features in `[0, 1]`:
//!
//! 1. **surprise**: `log10(0.5 / tail) / SURPRISE_DECADES`, 0 at or below the key's median, 1 for
//!    a tail probability of `5·10⁻⁷` or less. The tail probability is calibrated per key, so the
//!    feature means the same on every key and every system: a 5 ms call that now takes 50 ms and
//!    a 5 s call that now takes 50 s are alike, and a key with a heavy tail or several modes is
//!    judged against its own shape.
//! 2. **context**: twice the shift of the mean position (`0.5` → 0, every recent span slower
//!    than anything learned → 1) of the span's key, or of its service if that says more, counted
//!    only when the shift is beyond [`CONTEXT_FLOOR`] standard deviations of chance: a span of a
//!    key that is slow as a whole is more anomalous than the same span on a quiet day, which is
//!    what finds a CPU-starved service whose spans are each only a little slower.
//!
//! Only slower than usual counts (`sides: slower`, the default): a span faster than its key's
//! median has surprise 0 and a key faster than usual has context 0. With `sides: both`, the
//! smaller of the two tail probabilities and the absolute shift are used.
//!
//! A key also tells the engine when it is in an **incident** ([`Look::incident`]): its recent
//! spans as a whole are slower than usual by a wide margin (a shift over [`INCIDENT_SHIFT`], a
//! mean position over 0.8, and beyond [`INCIDENT_Z`] standard deviations of chance), or rare spans
//! (a tail probability under [`RARE_TAIL`]) make up over [`INCIDENT_RARE_SHARE`] of them (and are
//! beyond [`INCIDENT_Z`] of chance) where ordinary traffic has [`RARE_TAIL`]. What the engine
//! does with that is in [`crate::Engine`].
//!
//! Until a key has `min_key_count` spans its features are absent (routed like River's missing
//! features): there is no judging a key that is not known yet.

use serde::{Deserialize, Serialize};

use crate::config::{EngineConfig, KeyedConfig, Mode};
use crate::keys::{KeyId, KeyTable, OVERFLOW, ServiceId};
use crate::latency::{Context, KeyModel, log_duration};

/// Why a span was not scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum SkipReason {
    /// Start or end is zero.
    ZeroTimestamp = 0,
    /// End is before start.
    EndBeforeStart = 1,
    /// A timestamp before 2000 or after 2200.
    AbsurdTimestamp = 2,
    /// Duration over one day.
    AbsurdDuration = 3,
    /// A duration that is NaN, infinite or negative.
    InvalidDuration = 4,
    /// A key that is not valid (bad id, bad UTF-8 from a foreign caller).
    InvalidKey = 5,
}

impl SkipReason {
    /// Every reason, in discriminant order.
    pub const ALL: [SkipReason; 6] = [
        SkipReason::ZeroTimestamp,
        SkipReason::EndBeforeStart,
        SkipReason::AbsurdTimestamp,
        SkipReason::AbsurdDuration,
        SkipReason::InvalidDuration,
        SkipReason::InvalidKey,
    ];

    /// Short snake_case name for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::ZeroTimestamp => "zero_timestamp",
            SkipReason::EndBeforeStart => "end_before_start",
            SkipReason::AbsurdTimestamp => "absurd_timestamp",
            SkipReason::AbsurdDuration => "absurd_duration",
            SkipReason::InvalidDuration => "invalid_duration",
            SkipReason::InvalidKey => "invalid_key",
        }
    }
}

/// 2000-01-01T00:00:00Z in ns.
const MIN_TS_NS: u64 = 946_684_800_000_000_000;
/// 2200-01-01T00:00:00Z in ns.
const MAX_TS_NS: u64 = 7_258_118_400_000_000_000;
/// One day in ms: longer spans are treated as broken clocks.
pub const MAX_SANE_DURATION_MS: f64 = 86_400_000.0;

/// Duration in ms from start/end in ns since the Unix epoch, or why the span is unusable.
pub fn duration_ms(start_ns: u64, end_ns: u64) -> Result<f64, SkipReason> {
    if start_ns == 0 || end_ns == 0 {
        return Err(SkipReason::ZeroTimestamp);
    }
    if end_ns < start_ns {
        return Err(SkipReason::EndBeforeStart);
    }
    if !(MIN_TS_NS..MAX_TS_NS).contains(&start_ns) || !(MIN_TS_NS..MAX_TS_NS).contains(&end_ns) {
        return Err(SkipReason::AbsurdTimestamp);
    }
    check_duration_ms((end_ns - start_ns) as f64 / 1e6)
}

/// Validate a duration given directly in ms.
pub fn check_duration_ms(d: f64) -> Result<f64, SkipReason> {
    if !d.is_finite() || d < 0.0 {
        return Err(SkipReason::InvalidDuration);
    }
    if d > MAX_SANE_DURATION_MS {
        return Err(SkipReason::AbsurdDuration);
    }
    Ok(d)
}

/// Number of features the forest sees (both modes use two).
pub const N_FEATURES: usize = 2;

/// Decades of tail probability the surprise feature spans: `tail = 0.5` (the key's median)
/// maps to 0, `tail = 0.5 · 10^−SURPRISE_DECADES` and rarer to 1.
pub const SURPRISE_DECADES: f64 = 6.0;
/// The context feature is 0 unless the shift is beyond this many standard deviations of chance
/// (a key's or service's recent spans are seldom this much slower than usual by chance).
pub const CONTEXT_FLOOR: f64 = 3.0;
/// A span whose tail probability under its key's model is below this is *rare*: ordinary traffic
/// has this share of rare spans on any system, and many more of them is evidence of an incident
/// (see [`crate::Engine`]).
pub const RARE_TAIL: f64 = 0.01;
/// A key is in an incident when its recent spans are slower than usual by this much in mean
/// position (0.8 instead of 0.5: most of them slower than 80 % of what it learned)...
pub const INCIDENT_SHIFT: f64 = 0.3;
/// ...or when rare spans make up this share of them (ten times their ordinary share)...
pub const INCIDENT_RARE_SHARE: f64 = 0.1;
/// ...and in either case beyond this many standard deviations of chance.
pub const INCIDENT_Z: f64 = 4.0;
/// While its *service* is in an incident, a span slower than this share of its key's learned
/// spans is held back like a span of a key in an incident: a key with a span every few seconds
/// never shows an incident of its own within `context_window`, and would otherwise learn the
/// fault its service is in, one slow span at a time. The fault's spans are slower than 90 % of
/// what the key learned; most of the service's other spans are not, and are learned as usual.
pub const SERVICE_INCIDENT_TAIL: f64 = 0.1;

/// Which side of a key's latency is anomalous (`keyed.sides`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sides {
    /// Only slower than usual (the default): a fast span is not kept for being fast.
    #[default]
    Slower,
    /// Slower or faster than usual.
    Both,
}

/// What a context (a key's or a service's recent spans as a whole) says.
#[derive(Debug, Clone, Copy)]
struct ContextVerdict {
    feature: f64,
    shift: f64,
    incident: bool,
}

fn judge_context(c: &Context, sides: Sides) -> ContextVerdict {
    let raw = c.shift();
    let z2 = c.z_squared();
    // A significant shift in the judged direction (`z > k` is `z² > k²` on that side).
    let beyond = |k: f64| {
        z2 > k * k
            && match sides {
                Sides::Slower => raw > 0.0,
                Sides::Both => true,
            }
    };
    let shift = match sides {
        Sides::Slower => raw,
        Sides::Both => raw.abs(),
    };
    let rare_incident = || {
        let (share, z) = c.rare_excess(RARE_TAIL);
        share > INCIDENT_RARE_SHARE && z > INCIDENT_Z
    };
    ContextVerdict {
        feature: if beyond(CONTEXT_FLOOR) {
            (2.0 * shift).clamp(0.0, 1.0)
        } else {
            0.0
        },
        shift,
        incident: (shift > INCIDENT_SHIFT && beyond(INCIDENT_Z)) || rare_incident(),
    }
}

/// What the featurizer found out about one span in `keyed` mode, for the learning policy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Look {
    /// The key has a trusted model (`min_key_count` spans learned).
    pub established: bool,
    /// The span's log-duration ([`log_duration`]), for [`Featurizer::learn`].
    pub ld: f64,
    /// The span's tail probability under its key's model (the smaller of the two with
    /// `sides: both`).
    pub tail: f64,
    /// The context the feature came from (the key's or its service's): its shift in mean
    /// position...
    pub shift: f64,
    /// ...and that shift in standard deviations of chance.
    pub context_z: f64,
    /// The key is in an incident (see the module docs).
    pub incident: bool,
    /// The key's service is in an incident: the service's recent spans, all its keys together,
    /// are far slower than usual (a fault in the service itself slows them all; one in a service
    /// it calls, only those that wait for it). For what is kept and learned; rules judge a
    /// service on its own work ([`Featurizer::own_work`]).
    pub service_incident: bool,
}

/// Mode-specific featurization state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Featurizer {
    mode: Mode,
    max_duration_ms: f64,
    keyed: KeyedConfig,
    /// `paper`: the key the first learned span had (the forest's one-hot feature), and whether
    /// its name sorts before `"duration"` (then it is feature 0).
    paper_key: Option<(KeyId, bool)>,
    /// `keyed`: models by key id, and the overflow key's.
    models: Vec<KeyModel>,
    overflow: KeyModel,
    /// `keyed`: the recent spans of each service as a whole, by service id, and of the overflow
    /// key.
    services: Vec<Context>,
    overflow_service: Context,
    /// `keyed`, with rules: each service's own work, by service id: its spans that are not
    /// its side of a call it makes ([`Featurizer::own_work`]).
    own_work: Vec<Context>,
}

impl Featurizer {
    /// A featurizer for `cfg`.
    pub fn new(cfg: &EngineConfig) -> Self {
        Self {
            mode: cfg.mode,
            max_duration_ms: cfg.sampler.max_duration_ms,
            keyed: cfg.keyed,
            paper_key: None,
            models: Vec::new(),
            overflow: KeyModel::default(),
            services: Vec::new(),
            overflow_service: Context::default(),
            own_work: Vec::new(),
        }
    }

    /// `keyed` mode: whether `service`'s own work is in an incident at `now_ns`, adding a span
    /// of `key` (log-duration `ld`) to it first when `own` (a span of its own work, of an
    /// established key). A service's own work is its spans that are not its side of a call it
    /// makes: its server spans and its internal ones. A service starved of CPU is slower in
    /// them, while its client spans may barely show it (most of their time is the callee's),
    /// and with many of them would dilute it in the service's context as a whole.
    pub fn own_work(
        &mut self,
        key: KeyId,
        service: ServiceId,
        ld: f64,
        now_ns: u64,
        own: bool,
    ) -> bool {
        let s = service as usize;
        if s >= self.own_work.len() {
            self.own_work.resize_with(s + 1, Context::default);
        }
        if own && let Some(m) = self.models.get(key as usize) {
            let j = m.judge(ld);
            let window_ns = self.keyed.context_window_ms * 1e6;
            self.own_work[s].add(j.position, ld, j.tail < RARE_TAIL, now_ns, window_ns);
        }
        judge_context(&self.own_work[s], self.keyed.sides).incident
    }

    /// Features are known (in `paper` mode only after the first span).
    pub fn is_ready(&self) -> bool {
        self.mode == Mode::Keyed || self.paper_key.is_some()
    }

    /// `paper` mode: fix the one-hot feature from the first learned span. Returns the forest's
    /// feature names in order.
    pub fn init_paper(&mut self, key: KeyId, keys: &KeyTable) -> [String; 2] {
        let name = keys.display(key);
        let first = name.as_str() < "duration";
        self.paper_key = Some((key, first));
        if first {
            [name, "duration".into()]
        } else {
            ["duration".into(), name]
        }
    }

    /// `keyed` mode: the mean log-duration a key learned ([`KeyModel::mean_ld`]); `None` for an
    /// unknown key or one with nothing learned.
    pub fn mean_ld(&self, key: KeyId) -> Option<f64> {
        self.models.get(key as usize).and_then(KeyModel::mean_ld)
    }

    /// `keyed` mode: whether a key's model is trusted (`min_key_count` spans learned).
    pub fn is_established(&self, key: KeyId) -> bool {
        self.models
            .get(key as usize)
            .is_some_and(|m| m.count() >= self.keyed.min_key_count)
    }

    /// `keyed` mode: how much longer a key's recent spans take than it learned they usually do,
    /// in µs ([`Context::excess_us`]); 0 for an unknown key or one with nothing learned.
    pub fn recent_excess_us(&self, key: KeyId) -> f64 {
        self.models
            .get(key as usize)
            .and_then(|m| Some(m.context().excess_us(m.mean_ld()?)))
            .unwrap_or(0.0)
    }

    /// `keyed` mode: whether a key is in an incident (as of its last span).
    pub fn key_in_incident(&self, key: KeyId) -> bool {
        self.models
            .get(key as usize)
            .is_some_and(|m| judge_context(m.context(), self.keyed.sides).incident)
    }

    fn model_mut(&mut self, key: KeyId) -> &mut KeyModel {
        if key == OVERFLOW {
            return &mut self.overflow;
        }
        let i = key as usize;
        if i >= self.models.len() {
            self.models.resize_with(i + 1, KeyModel::default);
        }
        &mut self.models[i]
    }

    /// Fill `x` for a span of `key` (of `service`; `None` for the overflow key) lasting `d` ms,
    /// at engine time `now_ns`. In `keyed` mode this also adds the span to its key's and
    /// service's contexts, and says what the learning policy needs.
    #[inline]
    pub fn features(
        &mut self,
        key: KeyId,
        service: Option<ServiceId>,
        d: f64,
        now_ns: u64,
        x: &mut [f64; N_FEATURES],
    ) -> Look {
        if self.mode == Mode::Paper {
            let (pk, key_first) = self.paper_key.expect("paper features initialised");
            let dur = d.min(self.max_duration_ms) / self.max_duration_ms;
            let onehot = if key == pk { 1.0 } else { f64::NAN };
            *x = if key_first {
                [onehot, dur]
            } else {
                [dur, onehot]
            };
            return Look {
                established: true,
                tail: 0.5,
                ..Look::default()
            };
        }
        let k = self.keyed;
        let window_ns = k.context_window_ms * 1e6;
        let ld = log_duration(d);
        let m = self.model_mut(key);
        let j = m.judge(ld);
        if m.count() < k.min_key_count {
            *x = [f64::NAN; N_FEATURES];
            return Look {
                ld,
                tail: j.tail,
                ..Look::default()
            };
        }
        let rare = j.tail < RARE_TAIL;
        m.context_mut().add(j.position, ld, rare, now_ns, window_ns);
        let own = judge_context(m.context(), k.sides);
        let sc = match service {
            Some(s) => {
                let s = s as usize;
                if s >= self.services.len() {
                    self.services.resize_with(s + 1, Context::default);
                }
                &mut self.services[s]
            }
            None => &mut self.overflow_service,
        };
        sc.add(j.position, ld, rare, now_ns, window_ns);
        let svc = judge_context(sc, k.sides);
        let use_service = svc.feature > own.feature;
        let ctx = if use_service { svc } else { own };
        let z = if use_service {
            sc.z()
        } else {
            self.model_mut(key).context().z()
        };
        let tail = match k.sides {
            Sides::Slower => j.tail,
            Sides::Both => j.tail.min(1.0 - j.tail),
        };
        x[0] = ((0.5 / tail).log10() / SURPRISE_DECADES).clamp(0.0, 1.0);
        x[1] = ctx.feature;
        // Only the key's own context puts it in an incident: a service's context spreads over
        // all its operations, most of which a fault in one dependency leaves alone.
        Look {
            established: true,
            ld,
            tail,
            shift: ctx.shift,
            context_z: match k.sides {
                Sides::Slower => z,
                Sides::Both => z.abs(),
            },
            incident: own.incident,
            service_incident: svc.incident,
        }
    }

    /// `keyed` mode: add a span of log-duration `ld` ([`Look::ld`]) to its key's model at
    /// engine time `now_ns`.
    #[inline]
    pub fn learn(&mut self, key: KeyId, ld: f64, now_ns: u64) {
        if self.mode != Mode::Keyed {
            return;
        }
        let memory = self.keyed.memory_ms * 1e6;
        self.model_mut(key).learn(ld, now_ns, memory);
    }

    /// Heap bytes of per-key and per-service state.
    pub fn memory_bytes(&self) -> usize {
        self.models.capacity() * std::mem::size_of::<KeyModel>()
            + self.services.capacity() * std::mem::size_of::<Context>()
            + self
                .models
                .iter()
                .chain([&self.overflow])
                .map(KeyModel::memory_bytes)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_validation() {
        let t = MIN_TS_NS + 1_000;
        assert_eq!(duration_ms(t, t + 2_000_000), Ok(2.0));
        assert_eq!(duration_ms(t, t), Ok(0.0));
        assert_eq!(duration_ms(0, t), Err(SkipReason::ZeroTimestamp));
        assert_eq!(duration_ms(t, 0), Err(SkipReason::ZeroTimestamp));
        assert_eq!(duration_ms(t + 1, t), Err(SkipReason::EndBeforeStart));
        assert_eq!(duration_ms(5, 10), Err(SkipReason::AbsurdTimestamp));
        assert_eq!(duration_ms(t, u64::MAX), Err(SkipReason::AbsurdTimestamp));
        assert_eq!(
            duration_ms(t, t + 2 * 86_400_000_000_000),
            Err(SkipReason::AbsurdDuration)
        );
        assert_eq!(
            check_duration_ms(f64::NAN),
            Err(SkipReason::InvalidDuration)
        );
        assert_eq!(check_duration_ms(-1.0), Err(SkipReason::InvalidDuration));
        assert_eq!(
            check_duration_ms(f64::INFINITY),
            Err(SkipReason::InvalidDuration)
        );
    }

    #[test]
    fn paper_features_follow_river() {
        let cfg = EngineConfig {
            mode: Mode::Paper,
            ..Default::default()
        };
        let mut keys = KeyTable::new(10);
        let (a, _) = keys.intern("otel-demo", "ingress");
        let (b, _) = keys.intern("otel-demo", "GET");
        let mut f = Featurizer::new(&cfg);
        assert_eq!(
            f.init_paper(a, &keys),
            ["duration".to_string(), "otel-demo::ingress".to_string()]
        );
        let mut x = [0.0; 2];
        f.features(a, None, 100_000.0, 0, &mut x);
        assert_eq!(x, [1.0, 1.0]);
        f.features(b, None, 5_000.0, 0, &mut x);
        assert_eq!(x[0], 0.1);
        assert!(x[1].is_nan());
    }
}
