//! Half-Space-Trees (Tan, Ting & Liu, IJCAI 2011) with River 0.26.1's semantics, stored flat.
//!
//! A forest of `n_trees` complete binary trees of `height + 1` levels (`2^(height+1) − 1` nodes
//! each). Every internal node splits one feature at a threshold; every node counts two masses:
//! `l_mass`, the number of learned points that passed through it in the *latest* (filling) window,
//! and `r_mass`, the same count for the *reference* (last complete) window. Windows tumble every
//! `window_size` learns: on the last learn of a window every `r_mass` takes the `l_mass` and the
//! `l_mass` restarts at zero.
//!
//! The score of a point walks each tree from the root, adding `r_mass · 2^depth` for every node
//! visited, and stops after a node whose `r_mass` is below `0.1 · window_size` (that node's term
//! included) or at a leaf. The sum over trees is normalised by its maximum,
//! `n_trees · window_size · (2^(height+1) − 1)`, and flipped: `score = 1 − sum / max`, so **high
//! means anomalous**. No score exists before the first window completes ([`Hst::is_warm`]).
//!
//! # Storage and cost
//!
//! Nodes live in one `Vec` (24 bytes each), tree `t`'s node `i` at `t · nodes_per_tree + i`,
//! children at `2i + 1` and `2i + 2`. A span costs `n_trees · (height + 1)` node visits and never
//! allocates. Memory is `24 · n_trees · (2^(height+1) − 1)` bytes: 39 MB at (25, 15), 0.2 MB at
//! (16, 8); it does not depend on traffic. Windows pivot in one of two ways, chosen by size:
//!
//! - **Eager** (at most [`EAGER_NODES_PER_SPAN`] nodes per `window_size`: the defaults (10, 8,
//!   250), the paper's (16, 8, 175)): the pivot sweeps every node, then tabulates each leaf's
//!   *score term*, the sum a root-to-leaf walk that ends at that leaf adds under the new
//!   reference masses. Reference masses change only at a pivot, so within a window a tree's
//!   contribution to a score is a function of the leaf the point reaches: the walk only compares
//!   (8 trees interleaved level by level, so that their chains of dependent loads overlap), the
//!   score is one table look-up per tree, and learning increments the leaf and its ancestors
//!   afterwards, only if the span is learned. The table is a cache (4 KB at the defaults), not
//!   state: rebuilt after a snapshot is restored.
//! - **Lazy** (larger forests, e.g. (25, 15)): each node remembers the window (epoch) its
//!   `l_mass` belongs to and is brought up to date when next touched, since at height 15 a sweep
//!   every `window_size` spans would cost more than the walks themselves. The walk reads each
//!   visited node's reference mass, 4 trees interleaved.
//!
//! # Missing features
//!
//! A feature value of `NaN` means "absent" (River's `KeyError` on a sparse dict): the walk goes to
//! the child with the larger *latest-window* mass, ties to the left, exactly as River does.

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

/// Scoring stops below this fraction of `window_size` (Tan et al. 2011, §3; River's `size_limit`).
pub const SIZE_LIMIT_FRACTION: f64 = 0.1;
/// Split values are drawn from the feature's range narrowed by this fraction on each side
/// (River's `make_padded_tree(padding=0.15)`).
pub const SPLIT_PADDING: f64 = 0.15;
/// Trees walked together by the lazy walk (see `Walk::record`).
const LANES: usize = 4;
/// Forests of at most this many nodes per `window_size` pivot eagerly; see [`Hst`].
pub const EAGER_NODES_PER_SPAN: usize = 64;
/// Largest supported height: 2^(20+1) − 1 nodes per tree (48 MB per tree).
pub const MAX_HEIGHT: u32 = 20;

/// Parameters of a forest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HstParams {
    /// Number of trees.
    pub n_trees: u32,
    /// Height: `height + 1` levels, `2^(height+1) − 1` nodes per tree.
    pub height: u32,
    /// Points per tumbling window.
    pub window_size: u32,
    /// Seed for tree construction.
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Node {
    threshold: f64,
    feature: u32,
    l_mass: u32,
    r_mass: u32,
    /// Window index that `l_mass` counts; see the module docs.
    epoch: u32,
}

impl Node {
    /// (latest, reference) masses as of window `now`.
    #[inline(always)]
    fn masses(&self, now: u32) -> (u32, u32) {
        match now.wrapping_sub(self.epoch) {
            0 => (self.l_mass, self.r_mass),
            1 => (0, self.l_mass),
            _ => (0, 0),
        }
    }

    /// (latest, reference) masses; with `EAGER` pivots the stored values are always current.
    #[inline(always)]
    fn masses_as<const EAGER: bool>(&self, now: u32) -> (u32, u32) {
        if EAGER {
            (self.l_mass, self.r_mass)
        } else {
            self.masses(now)
        }
    }

    #[inline(always)]
    fn refresh(&mut self, now: u32) {
        if self.epoch != now {
            let (l, r) = self.masses(now);
            self.l_mass = l;
            self.r_mass = r;
            self.epoch = now;
        }
    }
}

/// A Half-Space-Trees forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Stored")]
pub struct Hst {
    params: HstParams,
    n_features: usize,
    nodes: Vec<Node>,
    nodes_per_tree: usize,
    /// Learns in the current window.
    counter: u32,
    /// Index of the current window (wrapping; see `renormalize`).
    window: u32,
    warm: bool,
    built: bool,
    /// Eager pivots only: a learn increments only the leaf's latest mass, the pivot sums the
    /// leaves up the tree, and an absent feature is routed by the children's *reference* masses
    /// (the latest ones are not summed yet). Ten node updates a learn instead of `10 · (height +
    /// 1)`; `keyed` mode uses it (paper mode keeps River's routing by latest masses).
    leaf_learning: bool,
    /// Scratch: where the last walk went, per tree: the leaf (eager pivots) or the whole path
    /// (lazy pivots, `height + 1` node indices, root first).
    #[serde(skip)]
    path: Scratch<u32>,
    /// Eager pivots: each leaf's score term under the current reference masses, tree `t`'s leaf
    /// `j` (counted from the tree's first leaf) at `t · 2^height + j`; empty until first needed.
    #[serde(skip)]
    leaf_terms: Scratch<u64>,
    /// Eager pivots: every internal node's threshold and feature, tree `t`'s node `i` at
    /// `t · (nodes_per_tree / 2) + i` — the walk's working set, 9 bytes a node instead of the
    /// node's 24 (40 KB at the defaults: it stays in L1). A cache, rebuilt when empty.
    #[serde(skip)]
    split_threshold: Scratch<f64>,
    #[serde(skip)]
    split_feature: Scratch<u8>,
}

/// Scratch space and caches: not state, so they take no part in equality or debug output.
#[derive(Clone, Default)]
struct Scratch<T>(Vec<T>);

impl<T> PartialEq for Scratch<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Scratch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// An [`Hst`] as deserialized, before its shape is checked: a damaged snapshot is an error, never
/// an out-of-bounds walk.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Clone))]
struct Stored {
    params: HstParams,
    n_features: usize,
    nodes: Vec<Node>,
    nodes_per_tree: usize,
    counter: u32,
    window: u32,
    warm: bool,
    built: bool,
    leaf_learning: bool,
}

impl TryFrom<Stored> for Hst {
    type Error = String;

    fn try_from(s: Stored) -> Result<Self, String> {
        let p = s.params;
        if p.height > MAX_HEIGHT || p.window_size == 0 || s.counter >= p.window_size {
            return Err(format!(
                "forest: height {}, window_size {}, counter {} out of range",
                p.height, p.window_size, s.counter
            ));
        }
        let mut h = Hst::new(p, s.n_features);
        let expect = if s.built {
            h.nodes_per_tree * p.n_trees as usize
        } else {
            0
        };
        if s.nodes_per_tree != h.nodes_per_tree || s.nodes.len() != expect {
            return Err(format!(
                "forest: {} nodes do not match its parameters",
                s.nodes.len()
            ));
        }
        let internal = h.nodes_per_tree / 2;
        if let Some(i) = s.nodes.iter().enumerate().position(|(i, n)| {
            i % h.nodes_per_tree < internal && n.feature as usize >= s.n_features
        }) {
            return Err(format!(
                "forest: node {i} splits feature {} of {}",
                s.nodes[i].feature, s.n_features
            ));
        }
        h.nodes = s.nodes;
        h.counter = s.counter;
        h.window = s.window;
        h.warm = s.warm;
        h.built = s.built;
        h.leaf_learning = s.leaf_learning;
        Ok(h)
    }
}

/// One interleaved score walk over a group of trees (see [`Hst::score_then_learn_if`]).
struct Walk<'a> {
    npt: usize,
    levels: usize,
    x: &'a [f64],
    now: u32,
    limit: u32,
    warm: bool,
}

impl Walk<'_> {
    /// Lazy pivots: walks the `L` trees of `group` root to leaf, level by level, writing each
    /// tree's path to `paths` (`levels` entries per tree); returns their score sum (0 when not
    /// warm). `L` is a constant so that the lanes' state stays in registers.
    #[inline(always)]
    fn record<const L: usize>(&self, group: &[Node], paths: &mut [u32]) -> u64 {
        let (npt, levels, now) = (self.npt, self.levels, self.now);
        let mut chunks = group.chunks_exact(npt);
        let trees: [&[Node]; L] =
            std::array::from_fn(|_| chunks.next().expect("L trees in the group"));
        let mut idx = [0usize; L];
        // All ones while the lane's score is still adding: the node where the reference mass
        // falls below the limit still counts, the ones after it do not.
        let mut adding = [if self.warm { u64::MAX } else { 0 }; L];
        let mut total = 0u64;
        for depth in 0..levels {
            for lane in 0..L {
                let i = idx[lane];
                paths[lane * levels + depth] = i as u32;
                let r = trees[lane][i].masses(now).1;
                total += ((r as u64) << depth) & adding[lane];
                adding[lane] &= ((r >= self.limit) as u64).wrapping_neg();
                if depth + 1 < levels {
                    idx[lane] = Hst::child::<false>(trees[lane], i, self.x, now);
                }
            }
        }
        total
    }
}

/// Per-feature value range `[lo, hi]` used to place splits.
pub type Limits = [(f64, f64)];

impl Hst {
    /// An empty forest; trees are built by [`Hst::build`] (or imported with
    /// [`Hst::from_trees`]).
    pub fn new(params: HstParams, n_features: usize) -> Self {
        let nodes_per_tree = (1usize << (params.height + 1)) - 1;
        Self {
            params,
            n_features,
            nodes: Vec::new(),
            nodes_per_tree,
            counter: 0,
            window: 0,
            warm: false,
            built: false,
            leaf_learning: false,
            path: Scratch::default(),
            leaf_terms: Scratch::default(),
            split_threshold: Scratch::default(),
            split_feature: Scratch::default(),
        }
    }

    /// Build random trees over `limits` (one `(lo, hi)` per feature, in feature order): each split
    /// feature is drawn with probability proportional to its current range width, and the split
    /// value uniformly inside that range padded by [`SPLIT_PADDING`] on each side.
    pub fn build(&mut self, limits: &Limits) {
        assert_eq!(limits.len(), self.n_features, "one limit per feature");
        let mut rng = SplitMix64::new(self.params.seed);
        self.nodes = vec![Node::default(); self.nodes_per_tree * self.params.n_trees as usize];
        self.leaf_terms.0.clear();
        self.split_threshold.0.clear();
        self.split_feature.0.clear();
        let mut lim = limits.to_vec();
        for t in 0..self.params.n_trees as usize {
            let base = t * self.nodes_per_tree;
            Self::build_node(
                &mut self.nodes[base..base + self.nodes_per_tree],
                0,
                &mut lim,
                &mut rng,
            );
        }
        self.built = true;
    }

    fn build_node(nodes: &mut [Node], i: usize, lim: &mut [(f64, f64)], rng: &mut SplitMix64) {
        if 2 * i + 1 >= nodes.len() {
            return; // leaf
        }
        let total: f64 = lim.iter().map(|(a, b)| b - a).sum();
        let mut pick = rng.next_f64() * total;
        let mut on = lim.len() - 1;
        for (f, (a, b)) in lim.iter().enumerate() {
            let w = b - a;
            if pick < w {
                on = f;
                break;
            }
            pick -= w;
        }
        let (a, b) = lim[on];
        let at = rng.uniform(a + SPLIT_PADDING * (b - a), b - SPLIT_PADDING * (b - a));
        nodes[i].feature = on as u32;
        nodes[i].threshold = at;
        lim[on] = (a, at);
        Self::build_node(nodes, 2 * i + 1, lim, rng);
        lim[on] = (at, b);
        Self::build_node(nodes, 2 * i + 2, lim, rng);
        lim[on] = (a, b);
    }

    /// Import trees built elsewhere (River): per tree, the internal nodes in heap order
    /// (`2^height − 1` of them) as `(feature index, threshold)`.
    pub fn from_trees(
        params: HstParams,
        n_features: usize,
        trees: &[Vec<(u32, f64)>],
    ) -> Result<Self, String> {
        let mut h = Self::new(params, n_features);
        if trees.len() != params.n_trees as usize {
            return Err(format!(
                "expected {} trees, got {}",
                params.n_trees,
                trees.len()
            ));
        }
        let internal = (1usize << params.height) - 1;
        h.nodes = vec![Node::default(); h.nodes_per_tree * trees.len()];
        for (t, tree) in trees.iter().enumerate() {
            if tree.len() != internal {
                return Err(format!(
                    "tree {t}: expected {internal} internal nodes, got {}",
                    tree.len()
                ));
            }
            for (i, &(f, thr)) in tree.iter().enumerate() {
                if f as usize >= n_features {
                    return Err(format!("tree {t} node {i}: feature {f} out of range"));
                }
                let n = &mut h.nodes[t * h.nodes_per_tree + i];
                n.feature = f;
                n.threshold = thr;
            }
        }
        h.built = true;
        Ok(h)
    }

    /// The forest's parameters.
    pub fn params(&self) -> &HstParams {
        &self.params
    }

    /// Number of features the trees split on.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Whether a reference window exists, i.e. whether scores mean anything yet.
    pub fn is_warm(&self) -> bool {
        self.warm
    }

    /// Bytes of node storage, the leaf-term table and the walk's scratch.
    pub fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.leaf_terms.0.capacity() * 8
            + self.path.0.capacity() * 4
    }

    fn max_score(&self) -> f64 {
        self.params.n_trees as f64 * self.params.window_size as f64 * self.nodes_per_tree as f64
    }

    /// Score `x` against the reference window and, if `learn`, add it to the latest window.
    /// Returns `None` before the first window has completed. `x[f]` is `NaN` when feature `f` is
    /// absent. Scoring happens before learning, as River's `score_one(x); learn_one(x)`.
    pub fn score_learn(&mut self, x: &[f64], learn: bool) -> Option<f64> {
        self.score_then_learn_if(x, |_| learn)
    }

    /// Score without learning.
    pub fn score(&mut self, x: &[f64]) -> Option<f64> {
        self.score_learn(x, false)
    }

    /// Learn without scoring.
    pub fn learn(&mut self, x: &[f64]) {
        self.score_learn(x, true);
    }

    /// Score `x`, then learn it only if `learn(score)` says so. Used where the decision to learn
    /// depends on the score (`keyed` mode does not learn spans it judged anomalous).
    ///
    /// The walk records where it went while it scores, so no level is walked twice: with eager
    /// pivots each tree's leaf (learning then increments the leaf and its ancestors); with lazy
    /// pivots each tree's whole path, `LANES` trees interleaved level by level so that their
    /// dependent loads overlap (the score stops adding where River's score stops; the rest of the
    /// path is what learning needs).
    pub fn score_then_learn_if(
        &mut self,
        x: &[f64],
        learn: impl FnOnce(Option<f64>) -> bool,
    ) -> Option<f64> {
        if self.eager() {
            let score = self.eager_walk(x);
            if learn(score) {
                self.learn_leaves();
            }
            return score;
        }
        let levels = self.params.height as usize + 1;
        let need = self.params.n_trees as usize * levels;
        if self.path.0.len() != need {
            self.path.0 = vec![0; need];
        }
        let score = self.record_walk(x);
        if learn(score) {
            self.learn_path();
        }
        score
    }

    /// Eager pivots: walks every tree root to leaf, 8 trees at a time, level by level, writing
    /// each tree's leaf to `self.path`, and scores from the leaves' tabulated terms. The walk only
    /// reads: a point's route never depends on its own learning (an absent feature compares the
    /// latest masses of the *children*, which the point has not reached yet), so learning can
    /// follow as [`Hst::learn_leaves`].
    #[inline(always)]
    fn eager_walk(&mut self, x: &[f64]) -> Option<f64> {
        debug_assert!(self.built);
        assert_eq!(x.len(), self.n_features, "one value per feature");
        if self.warm && self.leaf_terms.0.is_empty() {
            self.tabulate_leaf_terms();
        }
        if self.split_threshold.0.is_empty() {
            let internal = self.nodes_per_tree / 2;
            for tree in self.nodes.chunks_exact(self.nodes_per_tree) {
                for n in &tree[..internal] {
                    self.split_threshold.0.push(n.threshold);
                    // Features are few (the engine has two).
                    debug_assert!(self.n_features <= 256);
                    self.split_feature.0.push(n.feature as u8);
                }
            }
        }
        let n = self.params.n_trees as usize;
        if self.path.0.len() != n {
            self.path.0 = vec![0; n];
        }
        let mut t = 0;
        while t < n {
            t += match n - t {
                8.. => self.eager_group::<8>(t, x),
                4..=7 => self.eager_group::<4>(t, x),
                2..=3 => self.eager_group::<2>(t, x),
                _ => self.eager_group::<1>(t, x),
            };
        }
        if !self.warm {
            return None;
        }
        let leaves = self.nodes_per_tree / 2 + 1;
        let first_leaf = leaves - 1;
        let terms = &self.leaf_terms.0;
        let total: u64 = self
            .path
            .0
            .iter()
            .enumerate()
            .map(|(t, &leaf)| terms[t * leaves + leaf as usize - first_leaf])
            .sum();
        Some(1.0 - total as f64 / self.max_score())
    }

    /// [`Hst::eager_walk`] over trees `t0 .. t0 + L`; returns `L`. `L` is a constant so that the
    /// lanes' state stays in registers.
    #[inline(always)]
    fn eager_group<const L: usize>(&mut self, t0: usize, x: &[f64]) -> usize {
        let npt = self.nodes_per_tree;
        let mut trees = self.nodes[t0 * npt..(t0 + L) * npt].chunks_exact(npt);
        let trees: [&[Node]; L] = std::array::from_fn(|_| trees.next().expect("L trees"));
        let internal = npt / 2;
        let thr = &self.split_threshold.0[t0 * internal..(t0 + L) * internal];
        let feat = &self.split_feature.0[t0 * internal..(t0 + L) * internal];
        let mut idx = [0usize; L];
        if self.n_features == 2 && !x[0].is_nan() && !x[1].is_nan() {
            // The common case (every feature present, two of them, as in `keyed` mode): only
            // comparisons, without the absent-feature branch or a bounds check on the feature.
            let xs = [x[0], x[1]];
            for _ in 0..self.params.height {
                for (lane, i) in idx.iter_mut().enumerate() {
                    let k = lane * internal + *i;
                    *i = 2 * *i + 1 + (xs[(feat[k] & 1) as usize] >= thr[k]) as usize;
                }
            }
        } else {
            let by_reference = self.leaf_learning;
            for _ in 0..self.params.height {
                for (lane, (i, tree)) in idx.iter_mut().zip(trees).enumerate() {
                    let k = lane * internal + *i;
                    let v = x[feat[k] as usize];
                    *i = if !v.is_nan() {
                        2 * *i + 1 + (v >= thr[k]) as usize
                    } else if by_reference {
                        Self::child_by_reference(tree, *i, x)
                    } else {
                        Self::child::<true>(tree, *i, x, 0)
                    };
                }
            }
        }
        for (lane, i) in idx.into_iter().enumerate() {
            self.path.0[t0 + lane] = i as u32;
        }
        L
    }

    /// Eager pivots: learn the walk to the leaves in `self.path` (each leaf and its ancestors)
    /// and count the learn.
    fn learn_leaves(&mut self) {
        let leaf_only = self.leaf_learning && self.eager();
        for (tree, &leaf) in self
            .nodes
            .chunks_exact_mut(self.nodes_per_tree)
            .zip(&self.path.0)
        {
            let mut i = leaf as usize;
            if leaf_only {
                tree[i].l_mass += 1;
                continue;
            }
            while i > 0 {
                tree[i].l_mass += 1;
                i = (i - 1) / 2;
            }
            tree[0].l_mass += 1;
        }
        self.end_learn::<true>();
    }

    /// Learn by leaves, routing absent features by reference masses (see the field); only
    /// forests that pivot eagerly do, the others ignore it. Set it before the first learn.
    pub fn set_leaf_learning(&mut self, on: bool) {
        self.leaf_learning = on;
    }

    /// Eager pivots: each leaf's score term under the current reference masses. Per tree, level
    /// by level from the root, in the tree's own slice of the table: `acc[j]` holds, for node `j`
    /// of the current level, the sum so far of `r · 2^depth` and whether it is still adding (top
    /// bit; it stops after the first node whose reference mass is below the limit). A level is
    /// computed right to left, so each parent (at `j / 2 ≤ j`) is read before it is overwritten,
    /// and nothing is allocated once the table exists.
    fn tabulate_leaf_terms(&mut self) {
        const STOPPED: u64 = 1 << 63;
        let limit = self.limit() as u64;
        let npt = self.nodes_per_tree;
        let leaves = npt / 2 + 1;
        let terms = &mut self.leaf_terms.0;
        terms.clear();
        terms.resize(self.params.n_trees as usize * leaves, 0);
        for (tree, acc) in self
            .nodes
            .chunks_exact(npt)
            .zip(terms.chunks_exact_mut(leaves))
        {
            for depth in 0..=self.params.height {
                let first = (1usize << depth) - 1;
                for j in (0..1usize << depth).rev() {
                    let before = if depth == 0 { 0 } else { acc[j / 2] };
                    acc[j] = if before & STOPPED != 0 {
                        before
                    } else {
                        let r = tree[first + j].r_mass as u64;
                        (before + (r << depth)) | if r < limit { STOPPED } else { 0 }
                    };
                }
            }
            for a in acc.iter_mut() {
                *a &= !STOPPED;
            }
        }
    }

    /// `ceil(0.1 · window_size)`: masses are integers, so `r < 0.1 · window_size` ⇔ `r < limit`.
    fn limit(&self) -> u32 {
        (SIZE_LIMIT_FRACTION * self.params.window_size as f64).ceil() as u32
    }

    /// Lazy pivots: score, recording each tree's full path in `self.path` (per tree,
    /// `height + 1` node indices, root first; see [`Walk::record`]).
    fn record_walk(&mut self, x: &[f64]) -> Option<f64> {
        let limit = self.limit();
        let levels = self.params.height as usize + 1;
        let warm = self.warm;
        let now = self.window;
        let npt = self.nodes_per_tree;
        let w = Walk {
            npt,
            levels,
            x,
            now,
            limit,
            warm,
        };
        let mut total: u64 = 0;
        for (group, paths) in self
            .nodes
            .chunks(npt * LANES)
            .zip(self.path.0.chunks_mut(levels * LANES))
        {
            total += match group.len() / npt {
                LANES => w.record::<LANES>(group, paths),
                // The last group when n_trees is not a multiple of LANES.
                3 => w.record::<3>(group, paths),
                2 => w.record::<2>(group, paths),
                _ => group
                    .chunks(npt)
                    .zip(paths.chunks_mut(levels))
                    .map(|(t, p)| w.record::<1>(t, p))
                    .sum(),
            };
        }
        if warm {
            Some(1.0 - total as f64 / self.max_score())
        } else {
            None
        }
    }

    /// Learn the paths a lazy [`Hst::record_walk`] recorded.
    fn learn_path(&mut self) {
        let levels = self.params.height as usize + 1;
        let now = self.window;
        for (tree, path) in self
            .nodes
            .chunks_exact_mut(self.nodes_per_tree)
            .zip(self.path.0.chunks_exact(levels))
        {
            for &i in path {
                let n = &mut tree[i as usize];
                n.refresh(now);
                n.l_mass += 1;
            }
        }
        self.end_learn::<false>();
    }

    /// The child of internal node `i` that `x` goes to.
    #[inline(always)]
    fn child<const EAGER: bool>(tree: &[Node], i: usize, x: &[f64], now: u32) -> usize {
        let node = &tree[i];
        let v = x[node.feature as usize];
        let l = 2 * i + 1;
        if v.is_nan() {
            l + (tree[l].masses_as::<EAGER>(now).0 < tree[l + 1].masses_as::<EAGER>(now).0) as usize
        } else {
            l + (v >= node.threshold) as usize
        }
    }

    /// [`Hst::child`] for `leaf_learning` forests: an absent feature goes to the child with the
    /// larger reference mass, ties to the left.
    #[inline(always)]
    fn child_by_reference(tree: &[Node], i: usize, x: &[f64]) -> usize {
        let node = &tree[i];
        let v = x[node.feature as usize];
        let l = 2 * i + 1;
        if v.is_nan() {
            l + (tree[l].r_mass < tree[l + 1].r_mass) as usize
        } else {
            l + (v >= node.threshold) as usize
        }
    }

    /// Small forests pivot eagerly (a sweep over every node each window, at most
    /// [`EAGER_NODES_PER_SPAN`] node updates per span amortised); large ones lazily by epoch.
    #[inline(always)]
    fn eager(&self) -> bool {
        self.nodes.len() <= EAGER_NODES_PER_SPAN * self.params.window_size as usize
    }

    /// Count one learned point; pivot the windows on the last point of a window.
    #[inline(always)]
    fn end_learn<const EAGER: bool>(&mut self) {
        self.counter += 1;
        if self.counter == self.params.window_size {
            self.counter = 0;
            self.warm = true;
            if EAGER {
                if self.leaf_learning {
                    // Only the leaves learned: each node's reference mass is its leaves' sum,
                    // children before parents (a reverse sweep in heap order).
                    let (npt, internal) = (self.nodes_per_tree, self.nodes_per_tree / 2);
                    for tree in self.nodes.chunks_exact_mut(npt) {
                        for i in (0..npt).rev() {
                            let r = if i >= internal {
                                tree[i].l_mass
                            } else {
                                tree[2 * i + 1].r_mass + tree[2 * i + 2].r_mass
                            };
                            tree[i].r_mass = r;
                            tree[i].l_mass = 0;
                        }
                    }
                } else {
                    for n in &mut self.nodes {
                        n.r_mass = n.l_mass;
                        n.l_mass = 0;
                    }
                }
                self.tabulate_leaf_terms();
            } else {
                self.window = self.window.wrapping_add(1);
                if self.window == u32::MAX / 2 {
                    self.renormalize();
                }
            }
        }
    }

    /// Bring every node's epoch to the current window and restart window numbering, so that
    /// epochs never wrap around into a false "current" (once every 2^31 windows).
    fn renormalize(&mut self) {
        let now = self.window;
        for n in &mut self.nodes {
            n.refresh(now);
            n.epoch = 0;
        }
        self.window = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n_trees: u32, height: u32, window_size: u32) -> HstParams {
        HstParams {
            n_trees,
            height,
            window_size,
            seed: 42,
        }
    }

    /// A straightforward River transliteration (score then learn, eager pivot) to check the
    /// flat, fused, lazily pivoted implementation against.
    struct Reference {
        feat: Vec<Vec<(u32, f64)>>,
        l: Vec<Vec<u32>>,
        r: Vec<Vec<u32>>,
        height: u32,
        window: u32,
        counter: u32,
        first: bool,
    }

    impl Reference {
        fn walk(&self, t: usize, x: &[f64]) -> Vec<usize> {
            let mut i = 0;
            let mut path = vec![0];
            for _ in 0..self.height {
                let (f, thr) = self.feat[t][i];
                let v = x[f as usize];
                i = if v.is_nan() {
                    if self.l[t][2 * i + 1] < self.l[t][2 * i + 2] {
                        2 * i + 2
                    } else {
                        2 * i + 1
                    }
                } else if v < thr {
                    2 * i + 1
                } else {
                    2 * i + 2
                };
                path.push(i);
            }
            path
        }
        fn score(&self, x: &[f64]) -> Option<f64> {
            if self.first {
                return None;
            }
            let mut s = 0.0;
            for t in 0..self.feat.len() {
                let mut dp = 1.0;
                for &i in &self.walk(t, x) {
                    s += self.r[t][i] as f64 * dp;
                    if (self.r[t][i] as f64) < 0.1 * self.window as f64 {
                        break;
                    }
                    dp *= 2.0;
                }
            }
            let max = self.feat.len() as f64
                * self.window as f64
                * ((1u64 << (self.height + 1)) - 1) as f64;
            Some(1.0 - s / max)
        }
        fn learn(&mut self, x: &[f64]) {
            for t in 0..self.feat.len() {
                for i in self.walk(t, x) {
                    self.l[t][i] += 1;
                }
            }
            self.counter += 1;
            if self.counter == self.window {
                self.counter = 0;
                self.first = false;
                for t in 0..self.feat.len() {
                    self.r[t] = std::mem::take(&mut self.l[t]);
                    self.l[t] = vec![0; self.r[t].len()];
                }
            }
        }
    }

    fn trees_of(h: &Hst) -> Vec<Vec<(u32, f64)>> {
        let internal = h.nodes_per_tree / 2;
        h.nodes
            .chunks(h.nodes_per_tree)
            .map(|t| {
                t[..internal]
                    .iter()
                    .map(|n| (n.feature, n.threshold))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn matches_reference_including_missing_features() {
        // Window 20: eager pivots; window 2: lazy (epoch) pivots.
        for (window, eager) in [(20, true), (2, false)] {
            check_against_reference(window, eager);
        }
    }

    fn check_against_reference(window: u32, eager: bool) {
        let p = params(5, 4, window);
        let mut h = Hst::new(p, 2);
        h.build(&[(0.0, 1.0), (0.0, 1.0)]);
        assert_eq!(h.eager(), eager);
        let trees = trees_of(&h);
        let n = h.nodes_per_tree;
        let mut r = Reference {
            feat: trees
                .iter()
                .map(|t| {
                    let mut v = t.clone();
                    v.resize(n, (0, 0.0));
                    v
                })
                .collect(),
            l: vec![vec![0; n]; 5],
            r: vec![vec![0; n]; 5],
            height: 4,
            window,
            counter: 0,
            first: true,
        };
        let mut rng = SplitMix64::new(3);
        for step in 0..2_000 {
            let a = rng.next_f64();
            let b = if rng.next_f64() < 0.3 {
                f64::NAN
            } else {
                rng.next_f64()
            };
            let x = [a, b];
            let expect = r.score(&x);
            r.learn(&x);
            let got = h.score_learn(&x, true);
            assert_eq!(expect, got, "step {step}");
        }
    }

    #[test]
    fn no_score_before_first_window_then_in_unit_interval() {
        let mut h = Hst::new(params(3, 3, 10), 1);
        h.build(&[(0.0, 1.0)]);
        for _ in 0..9 {
            assert_eq!(h.score_learn(&[0.5], true), None);
        }
        assert!(!h.is_warm());
        h.score_learn(&[0.5], true);
        assert!(h.is_warm());
        let s = h.score(&[0.5]).unwrap();
        assert!((0.0..=1.0).contains(&s));
        // A point far from all mass scores higher than one in the middle of it.
        assert!(h.score(&[0.99]).unwrap() > s);
    }

    #[test]
    fn score_then_learn_if_equals_score_then_learn() {
        for window in [20, 2] {
            let mut a = Hst::new(params(5, 4, window), 2);
            a.build(&[(0.0, 1.0), (0.0, 1.0)]);
            let mut b = a.clone();
            let mut rng = SplitMix64::new(9);
            for step in 0..3_000 {
                let x = [
                    rng.next_f64(),
                    if rng.next_f64() < 0.3 {
                        f64::NAN
                    } else {
                        rng.next_f64()
                    },
                ];
                let learn = |s: Option<f64>| s.is_none_or(|s| s < 0.6);
                let sa = a.score(&x);
                if learn(sa) {
                    a.learn(&x);
                }
                let sb = b.score_then_learn_if(&x, learn);
                assert_eq!(sa, sb, "window {window} step {step}");
            }
            assert_eq!(a, b);
        }
    }

    #[test]
    fn leaf_learning_scores_as_full_learning_when_no_feature_is_absent() {
        let mut a = Hst::new(params(5, 4, 20), 2);
        a.build(&[(0.0, 1.0), (0.0, 1.0)]);
        let mut b = a.clone();
        b.set_leaf_learning(true);
        let mut rng = SplitMix64::new(11);
        for step in 0..3_000 {
            let x = [rng.next_f64(), rng.next_f64()];
            assert_eq!(
                a.score_learn(&x, true),
                b.score_learn(&x, true),
                "step {step}"
            );
        }
        // After a pivot the summed masses are the same as learned ones.
        assert_eq!(
            a.nodes.iter().map(|n| n.r_mass).collect::<Vec<_>>(),
            b.nodes.iter().map(|n| n.r_mass).collect::<Vec<_>>()
        );
    }

    #[test]
    fn import_checks_shapes() {
        let p = params(1, 2, 10);
        assert!(Hst::from_trees(p, 1, &[vec![(0, 0.5); 3]]).is_ok());
        assert!(Hst::from_trees(p, 1, &[vec![(0, 0.5); 2]]).is_err());
        assert!(Hst::from_trees(p, 1, &[vec![(1, 0.5); 3]]).is_err());
        assert!(Hst::from_trees(p, 1, &[]).is_err());
    }

    #[test]
    fn snapshot_round_trip_continues_identically_and_bad_shapes_are_errors() {
        // Eager (window 20) and lazy (window 2) forests, restored mid-window: the restored forest
        // rebuilds its leaf-term table and scores the rest of the stream exactly as the original.
        for window in [20, 2] {
            let mut a = Hst::new(params(5, 4, window), 2);
            a.build(&[(0.0, 1.0), (0.0, 1.0)]);
            let mut rng = SplitMix64::new(5);
            let mut point = move || {
                [
                    rng.next_f64(),
                    if rng.next_f64() < 0.2 {
                        f64::NAN
                    } else {
                        rng.next_f64()
                    },
                ]
            };
            for _ in 0..(3 * window + 7) {
                a.score_learn(&point(), true);
            }
            let bytes = postcard::to_allocvec(&a).unwrap();
            let mut b: Hst = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(a, b);
            for step in 0..500 {
                let x = point();
                assert_eq!(
                    a.score_then_learn_if(&x, |s| s.is_none_or(|s| s < 0.7)),
                    b.score_then_learn_if(&x, |s| s.is_none_or(|s| s < 0.7)),
                    "step {step}"
                );
            }
            assert_eq!(
                postcard::to_allocvec(&a).unwrap(),
                postcard::to_allocvec(&b).unwrap()
            );
        }
        let mut h = Hst::new(params(2, 3, 10), 2);
        h.build(&[(0.0, 1.0), (0.0, 1.0)]);
        let good = Stored::deserialize(&mut postcard::Deserializer::from_bytes(
            &postcard::to_allocvec(&h).unwrap(),
        ))
        .unwrap();
        let reencode = |s: &Stored| postcard::to_allocvec(&StoredOwned(s)).unwrap();
        let mut fewer = good.clone();
        fewer.nodes.pop();
        let mut bad_feature = good.clone();
        bad_feature.nodes[0].feature = 2;
        let mut bad_counter = good.clone();
        bad_counter.counter = 10;
        for (what, s) in [
            ("node count", fewer),
            ("feature", bad_feature),
            ("counter", bad_counter),
        ] {
            assert!(
                postcard::from_bytes::<Hst>(&reencode(&s)).is_err(),
                "a bad {what} must not restore"
            );
        }
        assert_eq!(postcard::from_bytes::<Hst>(&reencode(&good)).unwrap(), h);
    }

    /// Serializes a [`Stored`] (which only derives `Deserialize`) field by field.
    struct StoredOwned<'a>(&'a Stored);

    impl Serialize for StoredOwned<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let s0 = self.0;
            (
                s0.params,
                s0.n_features,
                &s0.nodes,
                s0.nodes_per_tree,
                s0.counter,
                s0.window,
                s0.warm,
                s0.built,
                s0.leaf_learning,
            )
                .serialize(s)
        }
    }

    #[test]
    fn renormalize_keeps_masses() {
        let mut h = Hst::new(params(2, 3, 4), 1);
        h.build(&[(0.0, 1.0)]);
        for i in 0..10 {
            h.score_learn(&[i as f64 / 10.0], true);
        }
        let before = h.clone().score(&[0.3]);
        h.renormalize();
        assert_eq!(h.score(&[0.3]), before);
    }
}
