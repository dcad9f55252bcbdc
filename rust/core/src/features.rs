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

/// Added to a key's deviation scale, in ln units. A key whose latency never varies would
/// otherwise make every jitter infinitely surprising; on the paper's stream, values from 0.1 to 2
/// change F1 by under 0.01, and 2 was best (BENCHMARKS.md).
pub const KEYED_SCALE_FLOOR: f64 = 2.0;
/// Deviations are squashed with `0.5 + z / (2 · (|z| + KEYED_SQUASH))`.
pub const KEYED_SQUASH: f64 = 8.0;

/// A key's baseline in `keyed` mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Baseline {
    n: u32,
    mean: f64,
    mad: f64,
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
    /// `keyed`: baselines by key id; the overflow key uses the last slot.
    baselines: Vec<Baseline>,
}

impl Featurizer {
    /// A featurizer for `cfg`.
    pub fn new(cfg: &EngineConfig) -> Self {
        Self {
            mode: cfg.mode,
            max_duration_ms: cfg.sampler.max_duration_ms,
            keyed: cfg.keyed,
            paper_key: None,
            baselines: Vec::new(),
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

    /// Fill `x` for a span of `key` lasting `d` ms.
    #[inline]
    pub fn features(&mut self, key: KeyId, d: f64, x: &mut [f64; N_FEATURES]) {
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
            }
            Mode::Keyed => {
                let b = self.baseline(key);
                let ld = (d + 1e-3).ln();
                x[0] = if b.n >= self.keyed.min_key_count {
                    let z = (ld - b.mean) / (b.mad + KEYED_SCALE_FLOOR);
                    0.5 + z / (2.0 * (z.abs() + KEYED_SQUASH))
                } else {
                    f64::NAN
                };
                x[1] = ((1.0 + d.min(self.max_duration_ms)).ln()
                    / (1.0 + self.max_duration_ms).ln())
                .clamp(0.0, 1.0);
            }
        }
    }

    fn slot(&self, key: KeyId) -> usize {
        if key == OVERFLOW {
            usize::MAX
        } else {
            key as usize
        }
    }

    fn baseline(&mut self, key: KeyId) -> Baseline {
        let i = self.slot(key);
        self.baselines.get(i).copied().unwrap_or_default()
    }

    /// `keyed` mode: whether `key`'s baseline has seen `min_key_count` spans (before that the
    /// engine learns every span of the key, anomalous or not: a new service must become known).
    pub fn is_established(&self, key: KeyId, max_keys: u32) -> bool {
        let i = if key == OVERFLOW {
            max_keys as usize
        } else {
            key as usize
        };
        self.baselines
            .get(i)
            .is_some_and(|b| b.n >= self.keyed.min_key_count)
    }

    /// `keyed` mode: add a span to its key's baseline.
    #[inline]
    pub fn learn(&mut self, key: KeyId, d: f64, max_keys: u32) {
        if self.mode != Mode::Keyed {
            return;
        }
        let i = if key == OVERFLOW {
            max_keys as usize
        } else {
            key as usize
        };
        if i >= self.baselines.len() {
            self.baselines.resize(i + 1, Baseline::default());
        }
        let b = &mut self.baselines[i];
        let ld = (d + 1e-3).ln();
        b.n = b.n.saturating_add(1);
        // Running mean for the first 1/rate spans, then exponentially weighted.
        let rate = (1.0 / b.n as f64).max(self.keyed.baseline_rate);
        let dev = (ld - b.mean).abs();
        if b.n == 1 {
            b.mean = ld;
            b.mad = 0.0;
        } else {
            b.mad += rate * (dev - b.mad);
            b.mean += rate * (ld - b.mean);
        }
    }

    /// Heap bytes of per-key state.
    pub fn memory_bytes(&self) -> usize {
        self.baselines.capacity() * std::mem::size_of::<Baseline>()
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
        f.features(a, 100_000.0, &mut x);
        assert_eq!(x, [1.0, 1.0]);
        f.features(b, 5_000.0, &mut x);
        assert_eq!(x[0], 0.1);
        assert!(x[1].is_nan());
    }

    #[test]
    fn keyed_features_are_scale_free() {
        let cfg = EngineConfig::default();
        let mut keys = KeyTable::new(10);
        let (fast, _) = keys.intern("s", "fast");
        let (slow, _) = keys.intern("s", "slow");
        let mut f = Featurizer::new(&cfg);
        for i in 0..100 {
            let j = 1.0 + (i % 5) as f64 * 0.01;
            f.learn(fast, 5.0 * j, 10);
            f.learn(slow, 5_000.0 * j, 10);
        }
        let (mut xf, mut xs) = ([0.0; 2], [0.0; 2]);
        f.features(fast, 50.0, &mut xf);
        f.features(slow, 50_000.0, &mut xs);
        assert!((xf[0] - xs[0]).abs() < 1e-3, "{xf:?} {xs:?}");
        assert!(xf[0] > 0.55, "{xf:?}");
        f.features(fast, 5.0, &mut xf);
        assert!((xf[0] - 0.5).abs() < 0.05);
        // Unknown keys have no deviation yet.
        let (new, _) = keys.intern("s", "new");
        f.features(new, 5.0, &mut xf);
        assert!(xf[0].is_nan());
    }
}
