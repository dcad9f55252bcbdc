//! Per-key latency models for `keyed` mode: what is usual for one `service::operation`, and how
//! unusual one span and the key's recent spans are.
//!
//! A [`KeyModel`] holds a small histogram of the key's latency (a *sketch*): [`SKETCH_BINS`]
//! bins on a logarithmic scale, each [`BIN_RATIO`] wide, with exponentially decayed weights. From
//! it a span gets:
//!
//! * its **tail probability** `p`: the weight of learned spans slower than it (mid-bin), so
//!   `p` is uniform on `(0, 1)` for spans like the ones learned, on any key and any latency
//!   distribution (multi-modal, heavy-tailed, quantized). With `a` = [`PRIOR_WEIGHT`] pseudo-spans
//!   at the top of the learned range, `p ≥ a / 2 / (W + a)` inside the range, where `W` is the
//!   learned weight: a key with few spans cannot claim a rare event. Past the slowest learned bin
//!   the pseudo-spans thin out exponentially, on the scale of the key's own spread, so a 3× slower
//!   span of a steady key is rare however few spans it has.
//! * its **position** `u`: the weight of learned spans faster than it (the key's empirical CDF).
//!   Its mean over the key's recent spans, the key's *context*, is 0.5 while the key behaves as
//!   learned and rises when most of its spans are slower than usual: a shift that no single span
//!   shows (a 1.3× slowdown of every call under CPU contention) is plain in the mean.
//!
//! # Memory
//!
//! Learned weight decays with time: a span learned `Δt` ago counts `exp(−Δt / memory)`, except
//! that a key never forgets faster than [`MIN_MEMORY_SPANS`] spans (a quiet key keeps what it
//! knew: silence is not evidence). The context is a moving mean over the key's last
//! ~`1 / context_rate` spans.
//!
//! # Cost
//!
//! `size_of::<KeyModel>()` bytes per key (about 300), no allocation after the key's first span.
//! A span costs a few dozen floating-point operations: one pass over the bins above it, one `exp`
//! when time has moved since the key's last learned span.

use serde::{Deserialize, Serialize};

/// Bins per sketch.
pub const SKETCH_BINS: usize = 64;
/// Ratio between the edges of a bin: `2^(1/4)` (19 %). 64 bins cover a factor of 65,536 above
/// the fastest bin, which takes everything faster (only the slow side needs resolution).
pub const BIN_RATIO: f64 = 1.189_207_115_002_721;
/// `ln(BIN_RATIO)`.
const BIN_LN: f64 = std::f64::consts::LN_2 / 4.0;
/// Pseudo-spans at the top of a key's learned range (see the module docs).
pub const PRIOR_WEIGHT: f64 = 1.0;
/// A key's learned weight decays by at most `1 / MIN_MEMORY_SPANS` per learned span.
pub const MIN_MEMORY_SPANS: f64 = 256.0;
/// Smallest extrapolation scale past the slowest learned bin, in `ln` units (10 %).
pub const MIN_SPREAD: f64 = 0.1;
/// Weights are rescaled once the weight of a new span passes this.
const RESCALE_AT: f32 = 1e30;

/// Log-duration in the sketch's units: `ln(1 + d_µs)`, so that 0 ms is 0.
#[inline]
pub fn log_duration(d_ms: f64) -> f64 {
    (d_ms * 1000.0).ln_1p()
}

/// What a key's model says about one span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// Probability that a learned span of the key is slower (mid-bin, with the prior).
    pub tail: f64,
    /// Probability that a learned span of the key is faster.
    pub position: f64,
    /// Probability that a learned span of the key lies where its latency is as rare or rarer (a
    /// bin of the sketch with as little weight or less, among bins above the median), with the
    /// prior: the tail probability of a density rather than of a direction, so that a span in
    /// the gap between two usual latencies is rare too.
    pub rarity: f64,
}

/// One key's latency model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyModel {
    /// Global index of `bins[0]`; `i32::MIN` until the first span is learned.
    lo: i32,
    /// Highest bin with weight.
    top: u8,
    /// Spans learned (saturating).
    n: u32,
    /// Decayed weights, in units where a span learned now weighs `unit`.
    bins: Vec<f32>,
    unit: f32,
    total: f32,
    /// Engine clock at the last learned span, ns.
    last_ns: u64,
    /// Exponentially weighted mean and mean absolute deviation of the log-duration (the
    /// extrapolation scale).
    mean: f32,
    mad: f32,
    /// The key's recent spans as a whole.
    context: Context,
    /// The body of the distribution, for [`KeyModel::is_extreme`]: the log-durations of the
    /// median and the 90th percentile, refreshed every [`BODY_REFRESH`] learned spans.
    q50: f32,
    q90: f32,
}

/// Learned spans between two refreshes of a key's median and 90th percentile.
pub const BODY_REFRESH: u32 = 16;

impl Default for KeyModel {
    fn default() -> Self {
        Self {
            lo: i32::MIN,
            top: 0,
            n: 0,
            bins: Vec::new(),
            unit: 1.0,
            total: 0.0,
            last_ns: 0,
            mean: 0.0,
            mad: 0.0,
            context: Context::default(),
            q50: 0.0,
            q90: 0.0,
        }
    }
}

/// A key's recent spans as a whole: the time-weighted mean of their positions (minus 0.5) over
/// about the last `window` of the engine's clock. 0 while the key behaves as learned; towards 0.5
/// when nearly every recent span is slower than nearly everything learned.
///
/// How far from 0 it wanders by chance depends on how many spans the window holds (independent
/// spans: a standard deviation of `sqrt(Σw² / 12) / Σw`) and on how much the key's latency moves
/// as a whole in ordinary traffic (load waves): a slow moving mean of `(mean / sd)²` over ordinary
/// periods, at least 1, inflates the standard deviation accordingly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    sum: f32,
    weight: f32,
    weight_sq: f32,
    /// Time-weighted count of recent spans with a tail probability below [`RARE_TAIL`].
    rare: f32,
    at_ns: u64,
    inflation: f32,
}

/// A span whose tail probability is below this is rare (see [`Context::rare_excess`]).
pub const RARE_TAIL: f64 = 0.01;

impl Context {
    /// Add a span's position at engine time `now_ns`; older spans fade with time constant
    /// `window_ns`.
    #[inline]
    pub fn add(&mut self, position: f64, tail: f64, now_ns: u64, window_ns: f64) {
        if now_ns > self.at_ns {
            if self.weight > 0.0 {
                let f = (-((now_ns - self.at_ns) as f64) / window_ns).exp() as f32;
                self.sum *= f;
                self.weight *= f;
                self.weight_sq *= f * f;
                self.rare *= f;
            }
            self.at_ns = now_ns;
        }
        self.sum += (position - 0.5) as f32;
        self.weight += 1.0;
        self.weight_sq += 1.0;
        if tail < RARE_TAIL {
            self.rare += 1.0;
        }
    }

    /// How many more rare spans the window holds than chance gives, in standard deviations
    /// (Poisson), and their share of the window.
    #[inline]
    pub fn rare_excess(&self) -> (f64, f64) {
        let expect = self.weight as f64 * RARE_TAIL;
        (
            (self.rare as f64 - expect) / expect.max(0.1).sqrt(),
            if self.weight > 0.0 {
                (self.rare / self.weight) as f64
            } else {
                0.0
            },
        )
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

    /// The standard deviation of [`Context::shift`] for independent spans like the learned ones.
    #[inline]
    fn chance_sd(&self) -> f64 {
        if self.weight > 0.0 {
            (self.weight_sq as f64 / 12.0).sqrt() / self.weight as f64
        } else {
            1.0
        }
    }

    /// The shift in standard deviations of the key's ordinary variation.
    #[inline]
    pub fn z(&self) -> f64 {
        self.shift() / (self.chance_sd() * (self.inflation as f64).max(1.0).sqrt())
    }

    /// Let the current shift count as ordinary variation, with weight `rate`.
    #[inline]
    pub fn learn_variation(&mut self, rate: f64) {
        let r = self.shift() / self.chance_sd();
        let v = (self.inflation as f64).max(1.0);
        self.inflation = (v + rate * (r * r - v)).max(1.0) as f32;
    }
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

    /// The key's context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The key's context, to update.
    pub fn context_mut(&mut self) -> &mut Context {
        &mut self.context
    }

    /// Judge a span of log-duration `ld` ([`log_duration`]) against what was learned.
    pub fn judge(&self, ld: f64) -> Judgement {
        if self.n == 0 {
            return Judgement {
                tail: 0.5,
                position: 0.5,
                rarity: 1.0,
            };
        }
        let g = ld / BIN_LN;
        let j = g.floor() as i64 - self.lo as i64;
        let top = self.top as i64;
        let (above, within) = if j < 0 {
            (self.total as f64, 0.0)
        } else if j > top {
            (0.0, 0.0)
        } else {
            let j = j as usize;
            let above: f32 = self.bins[j + 1..=top as usize].iter().sum();
            (above as f64, self.bins[j] as f64)
        };
        let total = self.total as f64;
        // Mid-bin: half of the span's own bin counts as slower (a key whose spans all last the
        // same sits at position 0.5, not at wherever its duration falls inside the bin).
        let slower = above + 0.5 * within;
        let top_edge = (self.lo as i64 + top + 1) as f64 * BIN_LN;
        let spread = (self.mad as f64 * 1.25).max(MIN_SPREAD);
        let prior = 0.5 * PRIOR_WEIGHT * (-(ld - top_edge).max(0.0) / spread).exp();
        let unit = PRIOR_WEIGHT * self.unit as f64;
        let tail = (slower + prior * self.unit as f64) / (total + unit);
        let position = if total > 0.0 {
            1.0 - slower / total
        } else {
            0.5
        };
        // Rarity: only above the median (a faster span is not rare for being fast).
        let rarity = if position <= 0.5 {
            1.0
        } else {
            let here = if j < 0 || j > top {
                0.0
            } else {
                self.smoothed(j as usize)
            };
            let mut rarer = 0.0f32;
            for i in 0..=top as usize {
                if self.smoothed(i) <= here {
                    rarer += self.bins[i];
                }
            }
            (rarer as f64 + prior * self.unit as f64) / (total + unit)
        };
        Judgement {
            tail,
            position,
            rarity,
        }
    }

    /// A bin's weight smoothed with its neighbours (1/4, 1/2, 1/4).
    #[inline]
    fn smoothed(&self, i: usize) -> f32 {
        let left = if i > 0 { self.bins[i - 1] } else { 0.0 };
        let right = if i + 1 < SKETCH_BINS { self.bins[i + 1] } else { 0.0 };
        0.25 * left + 0.5 * self.bins[i] + 0.25 * right
    }

    /// Learn a span of log-duration `ld` at engine time `now_ns`, forgetting with time constant
    /// `memory_ns`.
    pub fn learn(&mut self, ld: f64, now_ns: u64, memory_ns: f64) {
        let g = bin_of(ld);
        if self.bins.is_empty() {
            self.bins = vec![0.0; SKETCH_BINS];
            // The first span sits a quarter from the top: room for slower spans, and everything
            // more than 48 bins (a factor of 4,096) faster shares the fastest bin.
            self.lo = g - (3 * SKETCH_BINS / 4) as i32;
        }
        let mut j = g - self.lo;
        if j >= SKETCH_BINS as i32 {
            // Slower than the sketch reaches: slide it up, folding the fastest bins together.
            let shift = (j - SKETCH_BINS as i32 + 1) as usize;
            let folded: f32 = self.bins[..=shift.min(SKETCH_BINS - 1)].iter().sum();
            self.bins.copy_within(shift.min(SKETCH_BINS)..SKETCH_BINS, 0);
            for b in &mut self.bins[SKETCH_BINS.saturating_sub(shift)..] {
                *b = 0.0;
            }
            self.bins[0] = folded;
            self.lo += shift as i32;
            self.top = (self.top as usize).saturating_sub(shift) as u8;
            j = g - self.lo;
        }
        if j < 0 && (self.top as i32) < SKETCH_BINS as i32 - 1 {
            // Faster than the sketch reaches, with room at the top (the sketch was anchored on a
            // slow first span): slide it down as far as the room allows. What was folded into
            // the fastest bin stays together where it was.
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
        // Decay: by time, but never faster than MIN_MEMORY_SPANS per span.
        let mut keep = 1.0;
        if self.n > 0 && now_ns > self.last_ns {
            keep = (-((now_ns - self.last_ns) as f64) / memory_ns)
                .exp()
                .max(1.0 - 1.0 / MIN_MEMORY_SPANS);
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
        if self.n <= BODY_REFRESH || self.n.is_multiple_of(BODY_REFRESH) {
            self.q50 = self.quantile(0.5) as f32;
            self.q90 = self.quantile(0.9) as f32;
        }
        // Mean and spread, with the same forgetting (but the first spans count equally).
        let rate = (1.0 / self.n as f64).max(1.0 - keep).max(1.0 / MIN_MEMORY_SPANS);
        let rate = if self.n == 1 { 1.0 } else { rate };
        let dev = (ld - self.mean as f64).abs();
        if self.n == 1 {
            self.mean = ld as f32;
            self.mad = 0.0;
        } else {
            self.mad += (rate * (dev - self.mad as f64)) as f32;
            self.mean += (rate * (ld - self.mean as f64)) as f32;
        }
    }

    /// Whether `ld` lies beyond the key's body by more than `spreads` times its width: slower
    /// than the 90th percentile by `spreads · (q90 − q50)` (at least [`MIN_SPREAD`]). The body is
    /// a robust reference: not learning such spans cannot shrink it, as it would shrink a
    /// reference taken from the tail itself.
    pub fn is_extreme(&self, ld: f64, spreads: f64) -> bool {
        let (q50, q90) = (self.q50 as f64, self.q90 as f64);
        self.n > 0 && ld > q90 + spreads * (q90 - q50).max(MIN_SPREAD)
    }

    /// The log-duration below which `p` of the learned weight lies (interpolated in its bin).
    fn quantile(&self, p: f64) -> f64 {
        let want = p * self.total as f64;
        let mut acc = 0.0;
        for (j, &w) in self.bins[..=self.top as usize].iter().enumerate() {
            let w = w as f64;
            if acc + w >= want && w > 0.0 {
                let frac = if j == 0 { 1.0 } else { (want - acc) / w };
                return (self.lo as f64 + j as f64 + frac) * BIN_LN;
            }
            acc += w;
        }
        (self.lo as f64 + self.top as f64 + 1.0) * BIN_LN
    }

    /// Heap bytes.
    pub fn memory_bytes(&self) -> usize {
        self.bins.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    const S: u64 = 1_000_000_000;

    #[test]
    fn tail_is_uniform_for_spans_like_the_learned_ones() {
        // Bimodal and heavy-tailed: 70 % near 2 ms, 30 % near 40 ms, log-uniform jitter.
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
        assert!((0.005..0.02).contains(&r1), "{r1}");
        assert!((0.08..0.12).contains(&r10), "{r10}");
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
    fn forgets_by_time_but_keeps_what_a_quiet_key_knew() {
        let mut m = KeyModel::default();
        for i in 0..1_000u64 {
            m.learn(log_duration(5.0), i * S / 10, 60.0 * S as f64);
        }
        // A long silence, then a new level: the old level fades only span by span.
        for i in 0..100u64 {
            m.learn(log_duration(50.0), 10_000 * S + i, 60.0 * S as f64);
        }
        assert!(m.judge(log_duration(5.0)).position > 0.4, "{:?}", m.judge(5.0));
        // Ten memories later at a steady pace, the new level is the norm.
        for i in 0..6_000u64 {
            m.learn(log_duration(50.0), 20_000 * S + i * S / 10, 60.0 * S as f64);
        }
        assert!(m.judge(log_duration(50.0)).tail > 0.2);
        assert!(m.judge(log_duration(5.0)).position < 0.01);
    }

    #[test]
    fn sketch_slides_up_and_folds_the_fast_side() {
        let mut m = KeyModel::default();
        m.learn(log_duration(0.001), 0, 1e12);
        m.learn(log_duration(60_000.0), 1, 1e12);
        assert_eq!(m.count(), 2);
        let j = m.judge(log_duration(30.0));
        assert!((j.position - 0.5).abs() < 1e-6, "{j:?}");
        assert!(m.judge(log_duration(1e6)).tail < 0.2);
    }
}
