//! The keep budget: a score threshold calibrated online so that a set fraction of ordinary
//! traffic is kept, whatever the scores look like on a given system.
//!
//! A [`Calibrator`] keeps a weighted histogram of scores and puts the threshold at its
//! `1 − keep_budget` quantile, recomputed every [`RECOMPUTE_EVERY`] scores; old scores fade by
//! half every [`HALF_LIFE_SCORES`] (of weight).
//!
//! **A young calibrator forgets as fast as it has learned.** Until it is ready every score counts
//! alike; from then until it holds [`HALF_LIFE_SCORES`] of weight, its half-life is the weight it
//! holds (at least [`YOUNG_TAIL_SCORES`] scores above the threshold's worth, `2,000` scores at a
//! budget of 1 %): a young engine's scores drift as its forest's first windows pass and its keys
//! mature, upwards on one system and downwards on another, and a threshold that weighed the first
//! minute as much as the tenth would keep too little for minutes afterwards (the OpenTelemetry
//! demo's first replay: 0.62 % of the other services' spans against 0.92 % in the second) or too
//! much. Once it holds that much weight, the half-life is fixed: a settled engine's threshold does
//! not chase the last minute's traffic. The engine decides what each score weighs (see
//! [`crate::Engine`]): ordinary spans count fully, the spans of an incident hardly at all, so an
//! incident does not raise the threshold its own spans are judged by and its spans are not "used
//! up" by the budget.
//!
//! Scores are binned by `1 − score` on a logarithmic scale ([`BINS_PER_OCTAVE`] bins per halving,
//! read off the floating-point exponent and mantissa), so the resolution is finest where
//! anomalous scores lie (close to 1); within a bin the quantile is interpolated. Until [`Calibrator::is_ready`] (enough weight to put [`MIN_TAIL_SCORES`] above
//! the threshold) there is no threshold and nothing is kept.
//!
//! Cost: one logarithm per score; the threshold costs one pass over the bins every
//! [`RECOMPUTE_EVERY`] scores. Memory: `4 · BINS` bytes (5 KB).

use serde::{Deserialize, Serialize};

/// Bins per halving of `1 − score`.
pub const BINS_PER_OCTAVE: usize = 32;
/// Octaves covered: `1 − score` down to `2^−40`.
const OCTAVES: usize = 40;
const BINS: usize = BINS_PER_OCTAVE * OCTAVES;
/// Scores between two recomputations of the threshold.
pub const RECOMPUTE_EVERY: u32 = 256;
/// Weight of scores after which an old score counts half.
pub const HALF_LIFE_SCORES: f64 = 32_768.0;
/// Scores the tail above the threshold must hold before the threshold is trusted.
pub const MIN_TAIL_SCORES: f64 = 10.0;
/// While young, the calibrator's half-life is the weight it holds, but never shorter than
/// this many scores above the threshold (`YOUNG_TAIL_SCORES / budget` scores in all).
pub const YOUNG_TAIL_SCORES: f64 = 20.0;

/// A threshold calibrated to a keep budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibrator {
    budget: f64,
    bins: Vec<f32>,
    unit: f32,
    total: f64,
    since: u32,
    threshold: Option<f64>,
}

/// The bin of a score: from the binary exponent and the top five mantissa bits of `1 − score`
/// (32 bins per halving, linear within each; no logarithm on the hot path).
#[inline]
fn bin_of(score: f64) -> usize {
    let t = 1.0 - score;
    // NaN too (a score of NaN is no score): the top bin.
    if t.is_nan() || t <= 0.0 {
        return BINS - 1;
    }
    if t >= 1.0 {
        return 0;
    }
    let bits = t.to_bits();
    let octave = 1022 - ((bits >> 52) & 0x7ff) as i64; // t in [2^-(octave+1), 2^-octave)
    let mant = ((bits >> 47) & 31) as i64;
    (octave * BINS_PER_OCTAVE as i64 + (BINS_PER_OCTAVE as i64 - 1 - mant))
        .clamp(0, BINS as i64 - 1) as usize
}

/// The score `frac` of the way through bin `b`, from its low-score edge (0) to its high-score
/// edge (1).
#[inline]
fn score_at(b: usize, frac: f64) -> f64 {
    let octave = (b / BINS_PER_OCTAVE) as i32;
    let mant = (BINS_PER_OCTAVE - 1 - b % BINS_PER_OCTAVE) as f64;
    let t = (2.0f64).powi(-octave - 1) * (1.0 + (mant + 1.0 - frac) / BINS_PER_OCTAVE as f64);
    1.0 - t
}

impl Calibrator {
    /// A calibrator for `budget` (the fraction of ordinary spans to keep, in `(0, 1)`).
    pub fn new(budget: f64) -> Self {
        Self {
            budget,
            bins: vec![0.0; BINS],
            unit: 1.0,
            total: 0.0,
            since: 0,
            threshold: None,
        }
    }

    /// The keep budget.
    pub fn budget(&self) -> f64 {
        self.budget
    }

    /// Change the budget (e.g. a snapshot restored under a configuration with another
    /// `keep_budget`, or the budget counted in traces): the threshold moves at once if the
    /// scores seen support it.
    pub fn set_budget(&mut self, budget: f64) {
        if budget != self.budget {
            self.budget = budget;
            self.recompute();
        }
    }

    /// Whether enough scores were seen for the threshold to mean something.
    pub fn is_ready(&self) -> bool {
        self.threshold.is_some()
    }

    /// The current threshold (keep iff `score ≥ threshold`), once ready.
    pub fn threshold(&self) -> Option<f64> {
        self.threshold
    }

    /// Add the score of an ordinary span, with `weight` (1 for a span that counts fully).
    pub fn add(&mut self, score: f64, weight: f32) {
        // Old scores fade per unit of weight added: 2^(weight / HALF_LIFE_SCORES).
        const GROWTH: f32 = 1.000_021_1; // 2^(1 / HALF_LIFE_SCORES)
        // While young, the half-life is the weight held, at least `YOUNG_TAIL_SCORES / budget`
        // (see the module docs).
        if self.threshold.is_none() {
            // Not ready: every score counts alike until there are enough for a threshold.
        } else if self.total < HALF_LIFE_SCORES * self.unit as f64 {
            let held = self.total / self.unit as f64;
            let half_life = held.max(YOUNG_TAIL_SCORES / self.budget);
            self.unit *= (weight as f64 / half_life.min(HALF_LIFE_SCORES)).exp2() as f32;
        } else {
            self.unit *= if weight == 1.0 {
                GROWTH
            } else {
                (weight as f64 / HALF_LIFE_SCORES).exp2() as f32
            };
        }
        if self.unit > 1e30 {
            for b in &mut self.bins {
                *b *= 1e-30;
            }
            self.total *= 1e-30;
            self.unit *= 1e-30;
        }
        self.bins[bin_of(score)] += self.unit * weight;
        self.total += (self.unit * weight) as f64;
        self.since += 1;
        if self.since >= RECOMPUTE_EVERY {
            self.since = 0;
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        let want = self.budget * self.total;
        if want < MIN_TAIL_SCORES * self.unit as f64 {
            return;
        }
        // From the anomalous end (the highest bins) down until the budget's weight is covered.
        let mut acc = 0.0;
        for b in (0..BINS).rev() {
            let w = self.bins[b] as f64;
            if acc + w >= want {
                if w > 2.0 * want {
                    // Many spans share this bin's score (traffic so regular that they score
                    // alike): keeping part of a tie is not possible, and keeping all of it would
                    // be many times the budget, so none of it is kept.
                    self.threshold = Some(score_at(b + 1, 0.0));
                    return;
                }
                // Interpolate within the bin (uniform on its log scale): the part above the
                // threshold is `want − acc` of `w`.
                let frac = if w > 0.0 { (want - acc) / w } else { 0.0 };
                self.threshold = Some(score_at(b, 1.0 - frac));
                return;
            }
            acc += w;
        }
        self.threshold = Some(score_at(0, 0.0));
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

    #[test]
    fn threshold_keeps_the_budget_whatever_the_distribution() {
        for (budget, shape) in [(0.01, 1.0), (0.005, 3.0), (0.02, 0.2)] {
            let mut c = Calibrator::new(budget);
            let mut rng = SplitMix64::new(3);
            let mut draw = || 1.0 - rng.next_f64().powf(shape) * 0.3;
            for _ in 0..100_000 {
                c.add(draw(), 1.0);
            }
            let t = c.threshold().unwrap();
            let kept = (0..100_000).filter(|_| draw() >= t).count() as f64 / 1e5;
            assert!(
                (kept / budget - 1.0).abs() < 0.15,
                "budget {budget} shape {shape}: kept {kept}"
            );
        }
    }

    #[test]
    fn bins_are_monotone_and_score_at_inverts_them() {
        let mut last = 0;
        for i in 0..100_000 {
            let s = i as f64 / 100_000.0;
            let b = bin_of(s);
            assert!(b >= last, "{s}");
            last = b;
            assert!(
                score_at(b, 0.0) <= s + 1e-12 && s < score_at(b, 1.0) + 1e-12,
                "{s} {b}"
            );
        }
        assert_eq!(bin_of(1.0), BINS - 1);
        assert_eq!(bin_of(-3.0), 0);
    }

    #[test]
    fn a_young_calibrator_follows_its_scores_as_they_settle() {
        // A young engine's first scores have a heavier upper tail than its settled ones (here
        // 5,000 of them, then 15,000 settled). The threshold must keep about the budget of the
        // settled scores, not a fraction of it (a half-life fixed at HALF_LIFE_SCORES from the
        // start keeps 0.15 % here).
        let mut c = Calibrator::new(0.01);
        let mut rng = SplitMix64::new(9);
        for _ in 0..5_000 {
            c.add(1.0 - 0.2 * rng.next_f64().sqrt(), 1.0);
        }
        let mut settled = move || 1.0 - 0.2 * rng.next_f64().powf(0.25);
        for _ in 0..15_000 {
            c.add(settled(), 1.0);
        }
        let t = c.threshold().unwrap();
        let kept = (0..100_000).filter(|_| settled() >= t).count() as f64 / 1e5;
        assert!((0.005..0.02).contains(&kept), "kept {kept} at {t}");
    }

    #[test]
    fn a_tie_at_the_threshold_is_not_kept() {
        let mut c = Calibrator::new(0.01);
        for i in 0..20_000 {
            c.add(if i % 100 == 0 { 0.5 } else { 0.9 }, 1.0);
        }
        assert!(c.threshold().unwrap() > 0.9);
    }

    #[test]
    fn not_ready_until_the_tail_holds_enough_scores() {
        let mut c = Calibrator::new(0.01);
        for i in 0..900 {
            c.add((i % 100) as f64 / 100.0, 1.0);
        }
        assert!(!c.is_ready());
        for i in 0..2_000 {
            c.add((i % 100) as f64 / 100.0, 1.0);
        }
        assert!(c.is_ready());
    }
}
