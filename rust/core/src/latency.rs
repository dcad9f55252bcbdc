//! Per-key latency models for `keyed` mode: what is usual for one `service::operation`, how
//! unusual one span is, and how unusual a key's (or a service's) recent spans are as a whole.
//!
//! A [`KeyModel`] holds a small histogram of the key's latency (a *sketch*): [`SKETCH_BINS`]
//! bins on a logarithmic scale, each [`BIN_RATIO`] wide, with decayed weights. From it a span
//! gets ([`KeyModel::judge`]):
//!
//! * its **tail probability**: the weight of learned spans slower than it (its own bin counts
//!   half), so that for spans like the learned ones it is spread evenly over `(0, 1)` on any key
//!   and whatever the shape of its latency (several modes, a heavy tail, durations that all
//!   round to the same value). [`PRIOR_WEIGHT`] pseudo-span sits at the top of the learned range:
//!   inside the range the tail probability is at least `0.5 / (W + 1)`, where `W` is the learned
//!   weight, so a key with few spans cannot call anything rare; past the slowest learned bin the
//!   pseudo-span thins out exponentially on the scale of the key's spread (shrunk towards
//!   [`PRIOR_SPREAD`] while the key is young), so that a 3× slower span of a steady key is rare
//!   however few spans the key has.
//! * its **position**: the weight of learned spans faster than it (the same mid-bin rule), the
//!   key's empirical distribution function. A [`Context`] averages the positions of recent spans:
//!   0.5 while a key behaves as learned, more when most of its spans are slower than usual. A
//!   shift that no single span shows (every call 1.3× slower under CPU contention) is plain in
//!   the average.
//!
//! # Memory
//!
//! Learned weight decays with time: a span learned `Δt` ago counts `exp(−Δt / memory)`, except
//! that a key never forgets faster than one part in [`MIN_MEMORY_SPANS`] per learned span, so a
//! quiet key keeps what it knew (silence is not evidence) and a key with little traffic still
//! averages over its last few hundred spans. A busy key forgets by time, not by count: a fault of
//! a few minutes on a key with thousands of spans a minute is a few minutes of its memory, not
//! all of it.
//!
//! # Cost
//!
//! About 330 bytes per key (a 64-bin `f32` sketch and a few scalars, inline); nothing allocates
//! per span. A span costs one pass over the bins above it, a few dozen
//! floating-point operations, and an `exp` when the engine's clock has moved since the key's last
//! learned span (once per key per batch).

use serde::{Deserialize, Serialize};

/// Bins per sketch.
pub const SKETCH_BINS: usize = 64;
/// Ratio between the edges of a bin: `2^(1/4)` (19 %). 64 bins cover a factor of 65,536; the
/// fastest bin also holds everything faster (only the slow side needs resolution).
pub const BIN_RATIO: f64 = 1.189_207_115_002_721;
/// `ln(BIN_RATIO)`.
const BIN_LN: f64 = std::f64::consts::LN_2 / 4.0;
/// Pseudo-spans at the top of a key's learned range (see the module docs).
pub const PRIOR_WEIGHT: f64 = 1.0;
/// A key's learned weight decays by at most one part in this many per learned span.
pub const MIN_MEMORY_SPANS: f64 = 256.0;
/// Smallest extrapolation scale past the slowest learned bin, in `ln` units (10 %).
pub const MIN_SPREAD: f64 = 0.1;
/// The extrapolation scale a key is assumed to have before it has spans of its own, in `ln`
/// units (a factor of 1.65); it weighs as much as [`PRIOR_SPREAD_SPANS`] spans of the key.
pub const PRIOR_SPREAD: f64 = 0.5;
/// See [`PRIOR_SPREAD`].
pub const PRIOR_SPREAD_SPANS: f64 = 16.0;
/// Weights are rescaled once the weight of a new span passes this.
const RESCALE_AT: f32 = 1e30;

/// Log-duration in the sketch's units: `ln(1 + d_µs)`, so that 0 ms is 0 (to within 2·10⁻⁵,
/// far below a bin's 0.17: the binary exponent, and `2·atanh` of the mantissa by four terms of
/// its series, instead of the library's `ln_1p`, a sixth of the featurization's cost).
#[inline]
pub fn log_duration(d_ms: f64) -> f64 {
    let x = 1.0 + (d_ms * 1000.0).max(0.0);
    if !x.is_finite() {
        return x;
    }
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000); // [1, 2)
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    e as f64 * std::f64::consts::LN_2
        + 2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0))))
}

/// What a key's model says about one span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// Probability that a learned span of the key is slower (mid-bin, with the prior).
    pub tail: f64,
    /// Probability that a learned span of the key is faster (mid-bin).
    pub position: f64,
}

/// One key's latency model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyModel {
    /// Global index of `bins[0]` (empty sketch: unused).
    lo: i32,
    /// Highest bin with weight.
    top: u8,
    /// Spans learned (saturating).
    n: u32,
    /// Decayed weights, in units where a span learned now weighs `unit` (inline: judging a span
    /// touches one object, not two).
    #[serde(with = "bins_serde")]
    bins: [f32; SKETCH_BINS],
    unit: f32,
    total: f32,
    /// Engine clock at the last learned span, ns.
    last_ns: u64,
    /// Moving mean and mean absolute deviation of the log-duration: the key's spread, the scale
    /// of the extrapolation past its slowest bin.
    mean: f32,
    mad: f32,
    /// The key's recent spans as a whole.
    context: Context,
}

impl Default for KeyModel {
    fn default() -> Self {
        Self {
            lo: 0,
            top: 0,
            n: 0,
            bins: [0.0; SKETCH_BINS],
            unit: 1.0,
            total: 0.0,
            last_ns: 0,
            mean: 0.0,
            mad: 0.0,
            context: Context::default(),
        }
    }
}

/// Recent spans as a whole (of one key, or of one service): the time-weighted mean of their
/// positions minus 0.5 over about the last `window` of the engine's clock ([`Context::shift`]),
/// and how many of them were rare.
///
/// How far the shift wanders by chance depends on how many spans the window holds: for
/// independent spans like the learned ones, a standard deviation of `sqrt(Σw² / 12) / Σw`
/// ([`Context::z`] divides by it). A key with a span a minute never has a significant context;
/// one with a hundred a second has a significant one within a second of a shift.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    sum: f32,
    weight: f32,
    weight_sq: f32,
    /// Time-weighted count of recent rare spans.
    rare: f32,
    /// Time-weighted sum of recent log-durations ([`log_duration`]), for
    /// [`Context::excess_us`].
    ld: f32,
    at_ns: u64,
}

impl Context {
    /// Add a span's position, its log-duration ([`log_duration`]) and whether it was rare at
    /// engine time `now_ns`; older spans fade with time constant `window_ns`.
    #[inline]
    pub fn add(&mut self, position: f64, ld: f64, rare: bool, now_ns: u64, window_ns: f64) {
        if now_ns > self.at_ns {
            if self.weight > 0.0 {
                let f = decay((now_ns - self.at_ns) as f64 / window_ns) as f32;
                self.sum *= f;
                self.weight *= f;
                self.weight_sq *= f * f;
                self.rare *= f;
                self.ld *= f;
            }
            self.at_ns = now_ns;
        }
        self.sum += (position - 0.5) as f32;
        self.weight += 1.0;
        self.weight_sq += 1.0;
        self.ld += ld as f32;
        if rare {
            self.rare += 1.0;
        }
    }

    /// The mean position minus 0.5, in `[−0.5, 0.5]`.
    #[inline]
    pub fn shift(&self) -> f64 {
        if self.weight > 0.0 {
            (self.sum / self.weight) as f64
        } else {
            0.0
        }
    }

    /// The shift in standard deviations of chance (independent spans like the learned ones).
    #[inline]
    pub fn z(&self) -> f64 {
        self.z_squared().sqrt().copysign(self.sum as f64)
    }

    /// `z²`, without the square root: `z > k` is `sum > 0 && z² > k²`.
    #[inline]
    pub fn z_squared(&self) -> f64 {
        if self.weight_sq > 0.0 {
            12.0 * (self.sum as f64) * (self.sum as f64) / self.weight_sq as f64
        } else {
            0.0
        }
    }

    /// How much longer the recent spans take than `learned_ld` (a mean log-duration,
    /// [`KeyModel::mean_ld`]) says they usually do, in µs of absolute time (their geometric
    /// means; 0 if they are not slower, or there are none).
    #[inline]
    pub fn excess_us(&self, learned_ld: f64) -> f64 {
        if self.weight <= 0.0 {
            return 0.0;
        }
        let recent = f64::from(self.ld / self.weight);
        (recent.exp() - learned_ld.exp()).max(0.0)
    }

    /// The share of rare spans in the window, and its excess over `expected` (the share chance
    /// gives) in standard deviations (Poisson).
    #[inline]
    pub fn rare_excess(&self, expected: f64) -> (f64, f64) {
        if self.weight <= 0.0 {
            return (0.0, 0.0);
        }
        let expect = self.weight as f64 * expected;
        (
            (self.rare / self.weight) as f64,
            (self.rare as f64 - expect) / expect.max(0.1).sqrt(),
        )
    }
}

/// Serde for the inline sketch (serde's arrays stop at 32): a sequence of 64 numbers.
mod bins_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::SKETCH_BINS;

    pub fn serialize<S: Serializer>(b: &[f32; SKETCH_BINS], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(b.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[f32; SKETCH_BINS], D::Error> {
        let v = Vec::<f32>::deserialize(d)?;
        let n = v.len();
        v.try_into().map_err(|_| {
            serde::de::Error::custom(format!("a latency sketch has {SKETCH_BINS} bins, not {n}"))
        })
    }
}

/// `exp(−x)` for `x ≥ 0`: three terms of the series below 0.05 (error under 3·10⁻⁷; the engine's
/// clock moves milliseconds between batches against decays of seconds and minutes), the library
/// above.
#[inline]
fn decay(x: f64) -> f64 {
    if x < 0.05 {
        1.0 - x * (1.0 - x * (0.5 - x / 6.0))
    } else {
        (-x).exp()
    }
}

/// Sum of a few dozen weights, in eight lanes so that it vectorizes.
#[inline]
fn sum(w: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = w.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline]
fn bin_of(ld: f64) -> i32 {
    (ld / BIN_LN) as i32
}

impl KeyModel {
    /// Spans learned.
    pub fn count(&self) -> u32 {
        self.n
    }

    /// The moving mean of the learned spans' log-durations ([`log_duration`]); `None` before
    /// any.
    pub fn mean_ld(&self) -> Option<f64> {
        (self.n > 0).then_some(f64::from(self.mean))
    }

    /// The key's recent spans as a whole.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The key's recent spans as a whole, to update.
    pub fn context_mut(&mut self) -> &mut Context {
        &mut self.context
    }

    /// Judge a span of log-duration `ld` ([`log_duration`]) against what was learned.
    pub fn judge(&self, ld: f64) -> Judgement {
        if self.n == 0 {
            return Judgement {
                tail: 0.5,
                position: 0.5,
            };
        }
        let j = bin_of(ld) as i64 - self.lo as i64;
        let top = self.top as i64;
        let (above, within) = if j < 0 {
            (self.total as f64, 0.0)
        } else if j > top {
            (0.0, 0.0)
        } else {
            let j = j as usize;
            (
                sum(&self.bins[j + 1..=top as usize]) as f64,
                self.bins[j] as f64,
            )
        };
        let total = self.total as f64;
        // Mid-bin: half of the span's own bin counts as slower (a key whose spans all last the
        // same sits at position 0.5, wherever its duration falls inside the bin).
        let slower = above + 0.5 * within;
        let top_edge = (self.lo as i64 + top + 1) as f64 * BIN_LN;
        // The key's own spread, shrunk towards PRIOR_SPREAD while it has few spans: a young key's
        // spread is not known well enough to call a span just past its slowest one rare.
        let prior = if ld > top_edge {
            let n = self.n as f64;
            let spread = ((n * self.mad as f64 * 1.25 + PRIOR_SPREAD_SPANS * PRIOR_SPREAD)
                / (n + PRIOR_SPREAD_SPANS))
                .max(MIN_SPREAD);
            0.5 * (-(ld - top_edge) / spread).exp()
        } else {
            0.5
        };
        let unit = PRIOR_WEIGHT * self.unit as f64;
        Judgement {
            tail: (slower + prior * unit) / (total + unit),
            position: if total > 0.0 {
                1.0 - slower / total
            } else {
                0.5
            },
        }
    }

    /// Learn a span of log-duration `ld` at engine time `now_ns`, forgetting with time constant
    /// `memory_ns`.
    pub fn learn(&mut self, ld: f64, now_ns: u64, memory_ns: f64) {
        let g = bin_of(ld);
        if self.n == 0 {
            // The first span sits a quarter from the top: room for slower spans; the sketch
            // slides down later if the first span was slow and the rest are not.
            self.lo = g - (3 * SKETCH_BINS / 4) as i32;
        }
        let mut j = g - self.lo;
        if j >= SKETCH_BINS as i32 {
            // Slower than the sketch reaches: slide it up, folding the fastest bins together.
            let shift = (j - SKETCH_BINS as i32 + 1) as usize;
            let folded: f32 = self.bins[..=shift.min(SKETCH_BINS - 1)].iter().sum();
            self.bins
                .copy_within(shift.min(SKETCH_BINS)..SKETCH_BINS, 0);
            for b in &mut self.bins[SKETCH_BINS.saturating_sub(shift)..] {
                *b = 0.0;
            }
            self.bins[0] = folded;
            self.lo += shift as i32;
            self.top = (self.top as usize).saturating_sub(shift) as u8;
            j = g - self.lo;
        } else if j < 0 && (self.top as usize) < SKETCH_BINS - 1 {
            // Faster than the sketch reaches, with room at the top (it was anchored on a slow
            // first span): slide it down as far as the room allows. What was folded into the
            // fastest bin stays together where it was.
            let shift = (-j).min(SKETCH_BINS as i32 - 1 - self.top as i32) as usize;
            self.bins.copy_within(0..SKETCH_BINS - shift, shift);
            for b in &mut self.bins[..shift] {
                *b = 0.0;
            }
            self.lo -= shift as i32;
            self.top += shift as u8;
            j = g - self.lo;
        }
        let j = j.max(0) as usize;
        // Decay: by time, but never faster than one part in MIN_MEMORY_SPANS per span.
        let mut keep = 1.0;
        if self.n > 0 && now_ns > self.last_ns {
            keep =
                decay((now_ns - self.last_ns) as f64 / memory_ns).max(1.0 - 1.0 / MIN_MEMORY_SPANS);
        }
        if self.n == 0 || now_ns > self.last_ns {
            self.last_ns = now_ns;
        }
        self.unit /= keep as f32;
        if self.unit > RESCALE_AT {
            let s = 1.0 / self.unit;
            for b in &mut self.bins {
                *b *= s;
            }
            self.total *= s;
            self.unit = 1.0;
        }
        self.bins[j] += self.unit;
        self.total += self.unit;
        self.top = self.top.max(j as u8);
        self.n = self.n.saturating_add(1);
        // Mean and spread, forgetting alike (the first spans count equally).
        if self.n == 1 {
            self.mean = ld as f32;
            self.mad = 0.0;
        } else {
            let rate = (1.0 / self.n as f64)
                .max(1.0 - keep)
                .max(1.0 / MIN_MEMORY_SPANS);
            let dev = (ld - self.mean as f64).abs();
            self.mad += (rate * (dev - self.mad as f64)) as f32;
            self.mean += (rate * (ld - self.mean as f64)) as f32;
        }
    }

    /// Heap bytes (none: the model is inline).
    pub fn memory_bytes(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    const S: u64 = 1_000_000_000;

    #[test]
    fn log_duration_is_ln_1p_of_microseconds() {
        for d in [0.0, 1e-6, 0.001, 0.123, 1.0, 5.0, 999.9, 1e6, 8.64e7] {
            let want = (d * 1000.0f64).ln_1p();
            assert!(
                (log_duration(d) - want).abs() < 2e-5,
                "{d}: {} {want}",
                log_duration(d)
            );
        }
        let mut last = -1.0;
        for i in 0..100_000 {
            let v = log_duration(i as f64 * 0.0137);
            assert!(v >= last);
            last = v;
        }
    }

    #[test]
    fn tail_is_spread_evenly_for_spans_like_the_learned_ones() {
        // Two modes and a heavy tail: 70 % near 2 ms, 30 % near 40 ms, log-uniform jitter.
        let mut m = KeyModel::default();
        let mut rng = SplitMix64::new(1);
        let mut draw = move || {
            let base: f64 = if rng.next_f64() < 0.7 { 2.0 } else { 40.0 };
            base * (rng.next_f64() * 3.0).exp()
        };
        for i in 0..20_000u64 {
            m.learn(log_duration(draw()), i * S / 100, 600.0 * S as f64);
        }
        let n = 20_000;
        let (mut below_1, mut below_10) = (0, 0);
        for _ in 0..n {
            let j = m.judge(log_duration(draw()));
            below_1 += (j.tail < 0.01) as u32;
            below_10 += (j.tail < 0.1) as u32;
        }
        let (r1, r10) = (below_1 as f64 / n as f64, below_10 as f64 / n as f64);
        assert!((0.004..0.02).contains(&r1), "{r1}");
        assert!((0.06..0.14).contains(&r10), "{r10}");
    }

    #[test]
    fn slower_than_anything_learned_is_rare_even_for_a_young_key() {
        let mut m = KeyModel::default();
        for i in 0..20 {
            m.learn(log_duration(5.0 * (1.0 + 0.01 * (i % 5) as f64)), i, 1e12);
        }
        assert!(m.judge(log_duration(15.0)).tail < 1e-3);
        assert!(m.judge(log_duration(5.0)).tail > 0.2);
        assert!(m.judge(log_duration(1.0)).tail > 0.9);
        assert!(m.judge(log_duration(1.0)).position < 0.05);
    }

    #[test]
    fn constant_durations_sit_in_the_middle() {
        let mut m = KeyModel::default();
        for i in 0..1_000 {
            m.learn(log_duration(0.123), i, 1e12);
        }
        let j = m.judge(log_duration(0.123));
        assert!((j.position - 0.5).abs() < 1e-3, "{j:?}");
        assert!((j.tail - 0.5).abs() < 1e-2, "{j:?}");
    }

    #[test]
    fn forgets_by_time_but_keeps_what_a_quiet_key_knew() {
        let mut m = KeyModel::default();
        for i in 0..1_000u64 {
            m.learn(log_duration(5.0), i * S / 10, 60.0 * S as f64);
        }
        // A long silence, then a new level: the old level fades only span by span.
        for i in 0..100u64 {
            m.learn(log_duration(50.0), 10_000 * S + i, 60.0 * S as f64);
        }
        assert!(m.judge(log_duration(5.0)).position < 0.5);
        assert!(m.judge(log_duration(5.0)).tail > 0.5);
        // Ten memories later at a steady pace, the new level is the norm.
        for i in 0..6_000u64 {
            m.learn(log_duration(50.0), 20_000 * S + i * S / 10, 60.0 * S as f64);
        }
        assert!(m.judge(log_duration(50.0)).tail > 0.2);
        assert!(m.judge(log_duration(5.0)).position < 0.01);
    }

    #[test]
    fn sketch_slides_both_ways() {
        let mut m = KeyModel::default();
        m.learn(log_duration(5_000.0), 0, 1e12);
        for i in 0..100 {
            m.learn(log_duration(0.1), i, 1e12);
        }
        // Anchored on a 5 s span, the sketch slid down to resolve the 0.1 ms ones.
        assert!(m.judge(log_duration(0.3)).tail < 0.05);
        m.learn(log_duration(1e7), 200, 1e12);
        assert_eq!(m.count(), 102);
        assert!(m.judge(log_duration(2e7)).tail < 0.01);
    }

    #[test]
    fn context_shift_and_significance() {
        let mut c = Context::default();
        for i in 0..1_000u64 {
            c.add(
                if i % 2 == 0 { 0.25 } else { 0.75 },
                log_duration(1.0),
                false,
                i * S / 100,
                10.0 * S as f64,
            );
        }
        assert!(c.shift().abs() < 0.01 && c.z().abs() < 1.0);
        for i in 0..200u64 {
            c.add(
                0.9,
                log_duration(4.0),
                i % 2 == 0,
                (10 + i / 100) * S,
                10.0 * S as f64,
            );
        }
        // 1 ms spans, then 4 ms ones for two seconds of a 10 s window: about a third of the
        // recent weight, so a geometric mean of about 1 ms · 4^⅓ ≈ 1.4–1.6 ms, 0.4–0.6 ms more.
        let excess = c.excess_us(log_duration(1.0));
        assert!((300.0..600.0).contains(&excess), "{excess}");
        assert_eq!(c.excess_us(log_duration(10.0)), 0.0);
        assert!(c.shift() > 0.08 && c.z() > 10.0, "{c:?}");
        let (share, z) = c.rare_excess(0.01);
        assert!(share > 0.1 && z > 4.0, "{share} {z}");
    }
}
