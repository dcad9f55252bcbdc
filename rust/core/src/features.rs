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
//! Each key keeps a latency baseline: an exponentially weighted mean `m` and mean absolute
//! deviation `s` of `ln(duration)`, learned from spans that were *not* judged anomalous (so a
//! latency fault does not teach the baseline that slowness is normal), except that a key's first
//! `min_key_count` spans are always learned and one anomalous span in
//! [`crate::engine::ANOMALY_LEARN_EVERY`] is too (see [`crate::Engine`]). The forest sees two
//! features in `[0, 1]`:
//!
//! 1. the span's deviation from its own key's baseline, `(ln d − m) / (s + s0)`, squashed to
//!    `[0, 1]` — a 5 ms call that now takes 50 ms and a 5 s call that now takes 50 s look alike;
//! 2. the global log-duration, `ln(1 + d) / ln(1 + max_duration)`, so the forest also learns
//!    which deviations are usual at which latency.
//!
//! Until a key has `min_key_count` spans its deviation is absent (routed like River's missing
//! features). Cost: one table look-up and a few floating-point operations per span, and 24 bytes
//! per key.

use serde::{Deserialize, Serialize};

use crate::config::{EngineConfig, KeyedConfig, Mode};
use crate::keys::{KeyId, KeyTable, OVERFLOW};
use crate::latency::{KeyModel, log_duration};

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
/// The context feature is 0 up to this many standard deviations of ordinary traffic (a key's
/// recent spans are seldom this much slower than usual by chance), and rises over the next
/// [`CONTEXT_SPAN`].
pub const CONTEXT_FLOOR: f64 = 3.0;
/// Standard deviations of context over [`CONTEXT_FLOOR`] that map to 1 in the context feature.
pub const CONTEXT_SPAN: f64 = 16.0;

/// Weight of each span of a key not in an incident in its estimate of how much the context
/// varies in ordinary traffic.
pub const CONTEXT_VAR_RATE: f64 = 1.0 / 4096.0;
/// A key is in an incident only if its recent spans are, on average, this much slower in
/// position than usual (a mean position of 0.6 instead of 0.5): a shift of 5 % of spans to far
/// slower, however significant, is isolated anomalies, not an incident.
pub const CONTEXT_MIN_SHIFT: f64 = 0.1;

/// What the featurizer found out about one span in `keyed` mode, for the learning policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    /// The key has a trusted model (`min_key_count` spans learned).
    pub established: bool,
    /// The span's tail probability under its key's model.
    pub tail: f64,
    /// The span is far beyond its key's body (see [`KeyModel::is_extreme`]).
    pub extreme: bool,
    /// The key's context in standard deviations of ordinary traffic.
    pub context_z: f64,
    /// The key's context: its recent spans' mean position minus 0.5.
    pub shift: f64,
    /// The key is in an incident: its recent spans as a whole are slower than usual, by more
    /// than [`CONTEXT_MIN_SHIFT`] and more than `context_gate` standard deviations.
    pub incident: bool,
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
    /// `keyed`: models by key id.
    models: Vec<KeyModel>,
    /// `keyed`: the overflow key's model.
    overflow: KeyModel,
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
        }
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

    /// Fill `x` for a span of `key` lasting `d` ms. In `keyed` mode this also moves the key's
    /// context, and says what the learning policy needs.
    #[inline]
    pub fn features(
        &mut self,
        key: KeyId,
        d: f64,
        now_ns: u64,
        x: &mut [f64; N_FEATURES],
    ) -> Look {
        match self.mode {
            Mode::Paper => {
                let (pk, key_first) = self.paper_key.expect("paper features initialised");
                let dur = d.min(self.max_duration_ms) / self.max_duration_ms;
                let onehot = if key == pk { 1.0 } else { f64::NAN };
                *x = if key_first {
                    [onehot, dur]
                } else {
                    [dur, onehot]
                };
                Look {
                    established: true,
                    tail: 0.5,
                    extreme: false,
                    context_z: 0.0,
                    shift: 0.0,
                    incident: false,
                }
            }
            Mode::Keyed => {
                let k = self.keyed;
                let m = self.model_mut(key);
                let ld = log_duration(d);
                let j = m.judge(ld);
                if m.count() < k.min_key_count {
                    *x = [f64::NAN; N_FEATURES];
                    return Look {
                        established: false,
                        tail: j.tail,
                        extreme: false,
                        context_z: 0.0,
                        shift: 0.0,
                        incident: false,
                    };
                }
                let extreme = m.is_extreme(ld, k.extreme_spreads);
                let c = m.context_mut();
                c.add(j.position, j.tail, now_ns, k.context_window_ms * 1e6);
                let (shift, z) = (c.shift(), c.z());
                let incident = (shift > k.min_shift && z > k.context_gate)
                    || (k.extreme_rate && {
                        let (z, share) = c.rare_excess();
                        z > k.context_gate && share > k.rare_share
                    });
                if !incident && k.inflate {
                    c.learn_variation(CONTEXT_VAR_RATE);
                }
                let (tail, z, shift) = if k.slower_only {
                    (j.tail, z, shift)
                } else {
                    (j.tail.min(1.0 - j.tail), z.abs(), shift.abs())
                };
                let tail = match k.surprise {
                    0 => tail,
                    1 => j.rarity,
                    2 => tail.min(j.rarity),
                    _ => (tail * j.rarity).sqrt(),
                };
                x[0] = ((0.5 / tail).log10() / SURPRISE_DECADES).clamp(0.0, 1.0);
                x[1] = if z > CONTEXT_FLOOR {
                    (2.0 * shift).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                Look {
                    established: true,
                    tail,
                    extreme,
                    context_z: z,
                    shift,
                    incident,
                }
            }
        }
    }

    /// `keyed` mode: add a span to its key's model at engine time `now_ns`.
    #[inline]
    pub fn learn(&mut self, key: KeyId, d: f64, now_ns: u64) {
        if self.mode != Mode::Keyed {
            return;
        }
        let memory = self.keyed.memory_ms * 1e6;
        self.model_mut(key).learn(log_duration(d), now_ns, memory);
    }

    /// Heap bytes of per-key state.
    pub fn memory_bytes(&self) -> usize {
        self.models.capacity() * std::mem::size_of::<KeyModel>()
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
        f.features(a, 100_000.0, 0, &mut x);
        assert_eq!(x, [1.0, 1.0]);
        f.features(b, 5_000.0, 0, &mut x);
        assert_eq!(x[0], 0.1);
        assert!(x[1].is_nan());
    }
}
