//! Engine and rules configuration: YAML in, validated plain structs out.
//!
//! Parsing has two stages. serde-saphyr reads the text into `Raw*` structs whose leaves are
//! [`Spanned`] (so every value knows its line); unknown keys and wrong types stop there with the
//! parser's own message and line. Validation then checks every value, collects **every** problem
//! with its key path and line, and only if there are none builds the plain [`EngineConfig`] /
//! [`Rule`] values the engine uses.
//!
//! # Example: an engine configuration
//!
//! ```
//! let cfg = scale_core::EngineConfig::from_yaml(r#"
//! mode: keyed
//! sampler: { n_trees: 10, height: 8, window_size: 250, min_score: 0.7, train_size: 500 }
//! rules:
//!   - name: checkout-latency
//!     match: { service: checkoutservice, operation: "oteldemo.CheckoutService/*" }
//!     when: { duration_above: 500ms }
//!     count: 5
//!     window: 30s
//!     action: { kind: auto, target: { kind: Deployment, namespace: shop, name: checkout }, max: 10 }
//! "#)?;
//! assert_eq!(cfg.rules[0].count, 5);
//! assert_eq!(cfg.rules[0].window_ms, 30_000.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_saphyr::Spanned;

use crate::error::{ConfigError, ConfigProblem};
pub use crate::features::Sides;

/// The limits of the engine's integer settings (inclusive `(lo, hi)`), named once: the parser
/// enforces them, and rust/ffi generates them (with the defaults, [`SamplerConfig::DEFAULT`],
/// [`KeysConfig::DEFAULT`], [`KeyedConfig::DEFAULT`]) into `include/scale.h` and the Go
/// processor's `contract_gen.go`.
pub mod limits {
    /// `sampler.n_trees`.
    pub const N_TREES: (i64, i64) = (1, 1_000);
    /// `sampler.height` (see [`crate::hst::MAX_HEIGHT`]).
    pub const HEIGHT: (i64, i64) = (1, crate::hst::MAX_HEIGHT as i64);
    /// `sampler.window_size`.
    pub const WINDOW_SIZE: (i64, i64) = (1, 10_000_000);
    /// `sampler.train_size`.
    pub const TRAIN_SIZE: (i64, i64) = (0, i64::MAX);
    /// `keys.max_keys`.
    pub const MAX_KEYS: (i64, i64) = (1, 10_000_000);
    /// `keyed.min_key_count`.
    pub const MIN_KEY_COUNT: (i64, i64) = (1, 1_000_000);
    /// The largest forest, bytes (24 per node).
    pub const FOREST_BYTES: u128 = 4 << 30;

    /// The MiB a forest of `n_trees` trees of `height` needs, if that is over [`FOREST_BYTES`].
    pub fn forest_too_large_mib(n_trees: u32, height: u32) -> Option<u128> {
        let bytes = 24u128 * ((1u128 << (height.min(63) + 1)) - 1) * n_trees as u128;
        (bytes > FOREST_BYTES).then_some(bytes >> 20)
    }

    /// Every limit: `(identifier, (lo, hi))`, for the generated C and Go constants.
    pub const ALL: &[(&str, (i64, i64))] = &[
        ("N_TREES", N_TREES),
        ("HEIGHT", HEIGHT),
        ("WINDOW_SIZE", WINDOW_SIZE),
        ("TRAIN_SIZE", TRAIN_SIZE),
        ("MAX_KEYS", MAX_KEYS),
        ("MIN_KEY_COUNT", MIN_KEY_COUNT),
    ];
}

/// Featurization mode. See the crate docs for the evaluation behind the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The source paper's and River's features: a sparse one-hot `service::operation` key plus
    /// the duration in ms capped at `max_duration` and scaled to `[0, 1]`. Kept to reproduce the
    /// paper.
    Paper,
    /// Each span is judged against its own key's latency baseline (see [`crate::features`]).
    #[default]
    Keyed,
}

impl Mode {
    /// The lowercase name used in YAML and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Paper => "paper",
            Mode::Keyed => "keyed",
        }
    }
}

/// Sampler parameters (the paper's six, plus the seed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// Half-Space-Trees in the forest (default 10).
    pub n_trees: u32,
    /// Tree height (`height + 1` levels).
    pub height: u32,
    /// Spans per tumbling mass window.
    pub window_size: u32,
    /// Fraction of ordinary traffic to keep, in `(0, 1)`: the keep threshold is calibrated
    /// online so that this share of the spans not part of an incident is kept (see
    /// [`crate::calibrate`]). Default 0.01. Not used with `min_score`.
    pub keep_budget: f64,
    /// A fixed keep threshold instead of the budget: a span is kept iff its score is at least
    /// this (0–1). Default: none (the budget decides). A fixed threshold does not transfer
    /// between systems: the same value keeps very different shares of different traffic.
    pub min_score: Option<f64>,
    /// Durations are capped here, in milliseconds.
    pub max_duration_ms: f64,
    /// Spans only learned before any keep decision.
    pub train_size: u64,
    /// Seed for tree construction.
    pub seed: u64,
}

impl SamplerConfig {
    /// Defaults: the forest River ships with (10 trees, height 8, window 250), the paper's
    /// `max_duration` of 50 s, a keep budget of 1 % and a training prefix of 1,000 spans.
    pub const DEFAULT: SamplerConfig = SamplerConfig {
        n_trees: 10,
        height: 8,
        window_size: 250,
        keep_budget: 0.01,
        min_score: None,
        max_duration_ms: 50_000.0,
        train_size: 1_000,
        seed: 42,
    };
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Bounds on the key table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KeysConfig {
    /// Distinct `service::operation` keys remembered; past this, spans share one overflow key
    /// (counted). Bounds memory: roughly 100 bytes plus the name per key.
    pub max_keys: u32,
}

impl KeysConfig {
    /// Default bound: 10,000 keys.
    pub const DEFAULT: KeysConfig = KeysConfig { max_keys: 10_000 };
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a fired rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Change the replica count.
    Horizontal,
    /// Change cpu/memory of the workload's pods.
    Vertical,
    /// Decide from the evidence: see [`crate::rules`].
    Auto,
}

impl ActionKind {
    /// The lowercase name used in YAML and in span events.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Horizontal => "horizontal",
            ActionKind::Vertical => "vertical",
            ActionKind::Auto => "auto",
        }
    }
}

/// The workload a rule scales.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `Deployment` or `StatefulSet`.
    pub kind: String,
    /// Namespace; default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Object name. `${service}` in it stands for the service of the spans the rule counts: the
    /// rule then keeps one window per service and each decision is for its service's workload.
    pub name: String,
}

fn default_namespace() -> String {
    "default".to_string()
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// What the daemon does when a pod cannot be resized in place (`vertical.fallback`): the
/// cluster has no `pods/resize` subresource (Kubernetes < 1.33, or the feature is off), or the
/// API server refuses this change in place (HTTP 422, e.g. it would change the pod's QoS class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VerticalFallback {
    /// Patch the workload's pod template with the new requests (the default): the workload
    /// rolls out, so its pods restart with the new size.
    #[default]
    Rollout,
    /// Never restart pods: report the refusal (a Warning Event, a metric, a log line) and leave
    /// the pod template alone.
    None,
}

impl VerticalFallback {
    /// Every value, in the order the documentation lists them.
    pub const ALL: [VerticalFallback; 2] = [VerticalFallback::Rollout, VerticalFallback::None];

    /// The lowercase name used in YAML, logs and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            VerticalFallback::Rollout => "rollout",
            VerticalFallback::None => "none",
        }
    }
}

/// Resource steps for vertical actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct VerticalConfig {
    /// Container to resize; default: the pod's first container.
    pub container: Option<String>,
    /// Multiply cpu requests/limits by this per step (default 1.5).
    pub factor: f64,
    /// Upper bound for cpu, in millicores (default 4000).
    pub max_cpu_millis: u64,
    /// Upper bound for memory, in MiB (default 8192).
    pub max_memory_mib: u64,
    /// When a pod cannot be resized in place (default [`VerticalFallback::Rollout`]).
    pub fallback: VerticalFallback,
}

/// A rule's action: what to scale, and the limits the daemon plans within.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// horizontal, vertical or auto.
    pub kind: ActionKind,
    /// The workload.
    pub target: Target,
    /// Fewest replicas (default 1).
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Replicas added per action (default 1).
    pub step: u32,
    /// Minimum time between two scale-ups, ms (default 60 s).
    pub cooldown_ms: f64,
    /// Quiet time (no decision) after which the daemon scales back down one step, ms (default 300 s).
    pub scale_down_after_ms: f64,
    /// Oldest decision the daemon acts on, ms: a decision whose window completed longer ago than
    /// this when it reaches the daemon is refused (counted as `stale`). Default
    /// [`default_max_decision_age_ms`] of the rule's window: `max(2 × window, 10 s)`.
    pub max_decision_age_ms: f64,
    /// Vertical settings.
    pub vertical: VerticalConfig,
}

/// The default `action.max_decision_age` is this many of the rule's windows: the decision's
/// evidence covers the window that ended at its timestamp, and while a breach lasts the rule
/// fires again at least once a window, so a decision more than one further window late has
/// been overtaken (or the breach is over).
pub const DECISION_AGE_WINDOWS: f64 = 2.0;

/// The default `action.max_decision_age` is never below this, ms: with a short window the
/// bound would otherwise be eaten by ordinary delivery (batching at each collector hop, one
/// exporter retry) and small clock differences between the collector and the daemon.
pub const MIN_DEFAULT_DECISION_AGE_MS: f64 = 10_000.0;

/// Default `action.max_decision_age` of a rule with window `window_ms`:
/// `max(DECISION_AGE_WINDOWS × window, MIN_DEFAULT_DECISION_AGE_MS)`.
///
/// ```
/// assert_eq!(scale_core::config::default_max_decision_age_ms(30_000.0), 60_000.0);
/// assert_eq!(scale_core::config::default_max_decision_age_ms(1_000.0), 10_000.0);
/// ```
pub fn default_max_decision_age_ms(window_ms: f64) -> f64 {
    (DECISION_AGE_WINDOWS * window_ms).max(MIN_DEFAULT_DECISION_AGE_MS)
}

/// Matching of a span's service and operation; `*` and `?` globs allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// Service name pattern (default `*`).
    pub service: String,
    /// Operation (span name) pattern (default `*`).
    pub operation: String,
}

/// A latency rule: `Count(spans matching with duration > T [and anomalous] [and in an incident],
/// W) ≥ N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique name; carried by decisions (`scale.rule`).
    pub name: String,
    /// Which spans the rule watches.
    pub matcher: Match,
    /// Breach if duration is above this, ms (`None`: any duration).
    pub duration_above_ms: Option<f64>,
    /// Breach only if the span is also anomalous (kept by the sampler).
    pub anomalous: bool,
    /// Breach only if the span's service is in an incident of its own: the recent spans of its
    /// own work (server and internal spans, not client spans of its calls), all operations
    /// together, are far slower than usual (see [`crate::features::Featurizer::own_work`]), not
    /// just this one, and not because of a service it calls, in an incident or delayed on the way (see the
    /// crate docs, "The cause, not its callers").
    pub incident: bool,
    /// N: breaches within the window that fire the rule.
    pub count: u32,
    /// W: the sliding window, ms.
    pub window_ms: f64,
    /// `for`: the rule fires only once the spans it matched (of its target) have breached for
    /// this long, ms (0: at once). Like a Prometheus alert's `for`, it asks for a condition that
    /// lasts, so it suits `incident: true` (a service's state, which every one of its spans
    /// shares) more than a per-span threshold. A break between breaches over half of
    /// `keyed.context_window`, or of the window, starts it over ([`crate::rules`]).
    pub for_ms: f64,
    /// What to do.
    pub action: Action,
}

/// Tuning of the `keyed` featurization (see [`crate::features`] and [`crate::latency`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KeyedConfig {
    /// Time constant of a key's latency memory, ms: a span learned this long ago counts `1/e`
    /// (but a key forgets at most one part in 256 per learned span). Default 10 minutes.
    pub memory_ms: f64,
    /// Spans a key must have learned before it is judged. Default 8.
    pub min_key_count: u32,
    /// Time constant of a key's and a service's context (the moving mean of its recent spans'
    /// positions), ms. Default 5 s.
    pub context_window_ms: f64,
    /// Which side of a key's latency is anomalous. Default `slower`.
    pub sides: Sides,
}

impl KeyedConfig {
    /// Defaults.
    pub const DEFAULT: KeyedConfig = KeyedConfig {
        memory_ms: 600_000.0,
        min_key_count: 8,
        context_window_ms: 5_000.0,
        sides: Sides::Slower,
    };
}

impl Default for KeyedConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The whole engine configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct EngineConfig {
    /// Featurization mode.
    pub mode: Mode,
    /// Sampler parameters.
    pub sampler: SamplerConfig,
    /// Key table bounds.
    pub keys: KeysConfig,
    /// Keyed-mode tuning.
    pub keyed: KeyedConfig,
    /// Latency rules.
    pub rules: Vec<Rule>,
}

/// A rules file: just `rules:` (shared by the collector and the daemon).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RulesFile {
    /// The rules.
    pub rules: Vec<Rule>,
}

// ---------------------------------------------------------------------------------------------
// Raw (spanned) forms.

type S<T> = Spanned<T>;

/// A duration, in milliseconds, read in the one grammar ([`parse_duration_ms`]): `250us`, `1m30s`;
/// a bare number other than 0 is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DurationMs(pub f64);

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(f64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(0.0) => Ok(DurationMs(0.0)),
            Either::N(n) => Err(serde::de::Error::custom(format!(
                "invalid duration {n}: give a unit, such as 500ms, 30s or 1m30s (a bare number is ambiguous)"
            ))),
            Either::S(s) => parse_duration_ms(&s)
                .map(DurationMs)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The one duration grammar of SCALE — every configuration file, rules file, command-line flag
/// and the Go processor's configuration: a sequence of decimal numbers, each with a unit (`ns`,
/// `us` or `µs`, `ms`, `s`, `m`, `h`), optionally signed: `250us`, `1.5s`, `1m30s`, `1h`. This
/// is Go's `time.ParseDuration` grammar, so the collector's own durations read the same. A bare
/// number is refused (it once meant milliseconds here and nanoseconds in Go), except `0`.
/// Returns milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<f64, String> {
    const EXAMPLES: &str = "a number with a unit, such as 250us, 500ms, 30s, 1m30s or 1h";
    let t = s.trim();
    let (sign, mut rest) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, &t[1..]),
        Some(b'+') => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(format!("invalid duration {s:?}: expected {EXAMPLES}"));
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(n);
        if !num.chars().any(|c| c.is_ascii_digit()) {
            return Err(format!("invalid duration {s:?}: expected {EXAMPLES}"));
        }
        let v: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected {EXAMPLES}"))?;
        let u = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(u);
        let mult = match unit {
            "ns" => 1e-6,
            "us" | "µs" | "μs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3_600e3,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: give a unit ({EXAMPLES}); a bare number is ambiguous"
                ));
            }
            u => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {u:?} (use ns, us, ms, s, m or h)"
                ));
            }
        };
        total += v * mult;
        rest = next;
    }
    Ok(sign * total)
}

/// A duration written in the grammar of [`parse_duration_ms`], as short as it reads: `30s`,
/// `1m30s`, `1h`, `250ms`, `1500us`.
pub fn format_duration(d: std::time::Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_string();
    }
    if !ns.is_multiple_of(1_000_000_000) {
        return match ns {
            n if n.is_multiple_of(1_000_000) => format!("{}ms", n / 1_000_000),
            n if n.is_multiple_of(1_000) => format!("{}us", n / 1_000),
            n => format!("{n}ns"),
        };
    }
    let secs = ns / 1_000_000_000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (v, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    out
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSampler {
    n_trees: Option<S<i64>>,
    height: Option<S<i64>>,
    window_size: Option<S<i64>>,
    keep_budget: Option<S<f64>>,
    min_score: Option<S<f64>>,
    max_duration: Option<S<DurationMs>>,
    train_size: Option<S<i64>>,
    seed: Option<S<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    max_keys: Option<S<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeyed {
    memory: Option<S<DurationMs>>,
    min_key_count: Option<S<i64>>,
    context_window: Option<S<DurationMs>>,
    sides: Option<S<Sides>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    service: Option<S<String>>,
    operation: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    duration_above: Option<S<DurationMs>>,
    anomalous: Option<S<bool>>,
    incident: Option<S<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVertical {
    container: Option<S<String>>,
    factor: Option<S<f64>>,
    max_cpu_millis: Option<S<i64>>,
    max_memory_mib: Option<S<i64>>,
    // A string, not the enum: a wrong value is then a validation problem with its key path,
    // reported with every other problem, instead of a parse error that stops at the first.
    fallback: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    kind: S<ActionKind>,
    target: S<Target>,
    min: Option<S<i64>>,
    max: S<i64>,
    step: Option<S<i64>>,
    cooldown: Option<S<DurationMs>>,
    scale_down_after: Option<S<DurationMs>>,
    max_decision_age: Option<S<DurationMs>>,
    vertical: Option<RawVertical>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: S<String>,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    #[serde(default)]
    when: RawWhen,
    count: S<i64>,
    window: S<DurationMs>,
    #[serde(rename = "for", default)]
    hold: Option<S<DurationMs>>,
    action: RawAction,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    mode: Option<S<Mode>>,
    #[serde(default)]
    sampler: RawSampler,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    keyed: RawKeyed,
    #[serde(default)]
    rules: Vec<S<RawRule>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRulesFile {
    #[serde(default)]
    rules: Vec<S<RawRule>>,
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push<T>(&mut self, path: &str, v: &S<T>, msg: impl Into<String>) {
        self.0.push(ConfigProblem {
            path: path.to_string(),
            line: v.referenced.line(),
            message: msg.into(),
            source: None,
        });
    }
    fn push_at(&mut self, path: &str, line: u64, msg: impl Into<String>) {
        self.0.push(ConfigProblem {
            path: path.to_string(),
            line,
            message: msg.into(),
            source: None,
        });
    }

    /// An integer in `[lo, hi]`.
    fn int(&mut self, path: &str, v: &Option<S<i64>>, lo: i64, hi: i64, default: i64) -> i64 {
        match v {
            None => default,
            Some(s) if s.value < lo || s.value > hi => {
                self.push(
                    path,
                    s,
                    format!("must be between {lo} and {hi}, got {}", s.value),
                );
                default
            }
            Some(s) => s.value,
        }
    }

    /// A finite float with `ok` true.
    fn float(
        &mut self,
        path: &str,
        v: &Option<S<f64>>,
        ok: impl Fn(f64) -> bool,
        what: &str,
        default: f64,
    ) -> f64 {
        match v {
            None => default,
            Some(s) if !s.value.is_finite() || !ok(s.value) => {
                self.push(path, s, format!("must be {what}, got {}", s.value));
                default
            }
            Some(s) => s.value,
        }
    }

    fn duration(&mut self, path: &str, v: &Option<S<DurationMs>>, default: f64) -> f64 {
        match v {
            None => default,
            Some(s) if !s.value.0.is_finite() || s.value.0 <= 0.0 => {
                self.push(
                    path,
                    s,
                    format!("must be a positive duration, got {}", s.value.0),
                );
                default
            }
            Some(s) => s.value.0,
        }
    }
}

fn parse_err(e: serde_saphyr::Error) -> ConfigError {
    let line = e.location().map(|l| l.line()).unwrap_or(0);
    ConfigError::new(vec![ConfigProblem {
        path: String::new(),
        line,
        message: e.to_string(),
        source: None,
    }])
}

fn validate_rules(p: &mut Problems, raw: &[S<RawRule>], prefix: &str) -> Vec<Rule> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names = std::collections::HashMap::new();
    for (i, sr) in raw.iter().enumerate() {
        let r = &sr.value;
        let at = |k: &str| format!("{prefix}[{i}].{k}");
        let name = r.name.value.trim().to_string();
        if name.is_empty() {
            p.push(&at("name"), &r.name, "must not be empty");
        } else if let Some(prev) = names.insert(name.clone(), i) {
            p.push(
                &at("name"),
                &r.name,
                format!("duplicate rule name {name:?} (also {prefix}[{prev}])"),
            );
        }
        let pat = |p: &mut Problems, k: &str, v: &Option<S<String>>| -> String {
            match v {
                None => "*".to_string(),
                Some(s) if s.value.is_empty() => {
                    p.push(&at(k), s, "must not be empty (use \"*\" to match anything)");
                    "*".to_string()
                }
                Some(s) => s.value.clone(),
            }
        };
        let service = pat(p, "match.service", &r.matcher.service);
        let operation = pat(p, "match.operation", &r.matcher.operation);
        let duration_above_ms = match &r.when.duration_above {
            None => None,
            Some(s) if !s.value.0.is_finite() || s.value.0 < 0.0 => {
                p.push(
                    &at("when.duration_above"),
                    s,
                    format!("must be a non-negative duration, got {}", s.value.0),
                );
                None
            }
            Some(s) => Some(s.value.0),
        };
        let anomalous = r.when.anomalous.as_ref().map(|s| s.value).unwrap_or(false);
        let incident = r.when.incident.as_ref().map(|s| s.value).unwrap_or(false);
        if duration_above_ms.is_none() && !anomalous && !incident {
            p.push_at(
                &at("when"),
                sr.referenced.line(),
                "needs duration_above, anomalous: true or incident: true (or several)",
            );
        }
        let count = if r.count.value < 1 || r.count.value > 1_000_000 {
            p.push(
                &at("count"),
                &r.count,
                format!("must be between 1 and 1000000, got {}", r.count.value),
            );
            1
        } else {
            r.count.value as u32
        };
        let window_ms = p.duration(&at("window"), &Some(r.window.clone()), 1.0);
        // `for: 0s` is `for` left out, as in Prometheus.
        let for_ms = match &r.hold {
            Some(h) if h.value.0 == 0.0 => 0.0,
            h => p.duration(&at("for"), h, 0.0),
        };
        let a = &r.action;
        let min = p.int(&at("action.min"), &a.min, 0, 100_000, 1) as u32;
        let max = p.int(
            &at("action.max"),
            &Some(a.max.clone()),
            0,
            100_000,
            min as i64,
        ) as u32;
        if max < min {
            p.push(
                &at("action.max"),
                &a.max,
                format!("must be at least action.min ({min}), got {max}"),
            );
        }
        let step = p.int(&at("action.step"), &a.step, 1, 100_000, 1) as u32;
        let cooldown_ms = p.duration(&at("action.cooldown"), &a.cooldown, 60_000.0);
        let scale_down_after_ms = p.duration(
            &at("action.scale_down_after"),
            &a.scale_down_after,
            300_000.0,
        );
        let max_decision_age_ms = p.duration(
            &at("action.max_decision_age"),
            &a.max_decision_age,
            default_max_decision_age_ms(window_ms),
        );
        let t = &a.target.value;
        if t.kind != "Deployment" && t.kind != "StatefulSet" {
            p.push(
                &at("action.target.kind"),
                &a.target,
                format!("must be Deployment or StatefulSet, got {:?}", t.kind),
            );
        }
        if t.name.is_empty() {
            p.push(&at("action.target.name"), &a.target, "must not be empty");
        }
        if t.name
            .replace(crate::rules::SERVICE_PLACEHOLDER, "")
            .contains('$')
        {
            p.push(
                &at("action.target.name"),
                &a.target,
                format!(
                    "{:?}: the only placeholder is {} (the service of the spans counted)",
                    t.name,
                    crate::rules::SERVICE_PLACEHOLDER
                ),
            );
        }
        if t.namespace.contains('$') || t.kind.contains('$') {
            p.push(
                &at("action.target"),
                &a.target,
                format!(
                    "{} may only be used in the target's name",
                    crate::rules::SERVICE_PLACEHOLDER
                ),
            );
        }
        let rv = a.vertical.as_ref();
        let dv = RawVertical::default();
        let rv = rv.unwrap_or(&dv);
        let vertical = VerticalConfig {
            container: rv.container.as_ref().map(|s| s.value.clone()),
            factor: p.float(
                &at("action.vertical.factor"),
                &rv.factor,
                |x| x > 1.0 && x <= 10.0,
                "greater than 1 and at most 10",
                1.5,
            ),
            max_cpu_millis: p.int(
                &at("action.vertical.max_cpu_millis"),
                &rv.max_cpu_millis,
                1,
                1_000_000,
                4_000,
            ) as u64,
            max_memory_mib: p.int(
                &at("action.vertical.max_memory_mib"),
                &rv.max_memory_mib,
                1,
                16_777_216,
                8_192,
            ) as u64,
            fallback: match &rv.fallback {
                None => VerticalFallback::default(),
                Some(f) => match VerticalFallback::ALL
                    .into_iter()
                    .find(|v| v.as_str() == f.value)
                {
                    Some(v) => v,
                    None => {
                        p.push(
                            &at("action.vertical.fallback"),
                            f,
                            format!(
                                "must be {}, got {:?}",
                                VerticalFallback::ALL
                                    .map(VerticalFallback::as_str)
                                    .join(" or "),
                                f.value
                            ),
                        );
                        VerticalFallback::default()
                    }
                },
            },
        };
        out.push(Rule {
            name,
            matcher: Match { service, operation },
            duration_above_ms,
            anomalous,
            incident,
            count,
            window_ms,
            for_ms,
            action: Action {
                kind: a.kind.value,
                target: t.clone(),
                min,
                max,
                step,
                cooldown_ms,
                scale_down_after_ms,
                max_decision_age_ms,
                vertical,
            },
        });
    }
    out
}

impl EngineConfig {
    /// Parse and validate YAML text. On failure the error lists every problem with its key path
    /// and line.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawEngine = if text.trim().is_empty() {
            RawEngine::default()
        } else {
            serde_saphyr::from_str(text).map_err(parse_err)?
        };
        let mut p = Problems(Vec::new());
        let s = &raw.sampler;
        let d = SamplerConfig::DEFAULT;
        let sampler = SamplerConfig {
            n_trees: p.int(
                "sampler.n_trees",
                &s.n_trees,
                limits::N_TREES.0,
                limits::N_TREES.1,
                d.n_trees as i64,
            ) as u32,
            height: p.int(
                "sampler.height",
                &s.height,
                limits::HEIGHT.0,
                limits::HEIGHT.1,
                d.height as i64,
            ) as u32,
            window_size: p.int(
                "sampler.window_size",
                &s.window_size,
                limits::WINDOW_SIZE.0,
                limits::WINDOW_SIZE.1,
                d.window_size as i64,
            ) as u32,
            keep_budget: p.float(
                "sampler.keep_budget",
                &s.keep_budget,
                |x| x > 0.0 && x < 1.0,
                "greater than 0 and less than 1",
                d.keep_budget,
            ),
            min_score: s.min_score.as_ref().map(|_| {
                p.float(
                    "sampler.min_score",
                    &s.min_score,
                    |x| (0.0..=1.0).contains(&x),
                    "between 0 and 1",
                    0.0,
                )
            }),
            max_duration_ms: p.duration("sampler.max_duration", &s.max_duration, d.max_duration_ms),
            train_size: p.int(
                "sampler.train_size",
                &s.train_size,
                limits::TRAIN_SIZE.0,
                limits::TRAIN_SIZE.1,
                d.train_size as i64,
            ) as u64,
            seed: s.seed.as_ref().map(|v| v.value).unwrap_or(d.seed),
        };
        if let (Some(b), Some(_)) = (&s.keep_budget, &s.min_score) {
            p.push(
                "sampler.keep_budget",
                b,
                "is given with sampler.min_score; use one (a fixed min_score replaces the budget)",
            );
        }
        if let (Some(h), Some(n)) = (&s.height, &s.n_trees) {
            let (h, n) = (
                h.value.clamp(limits::HEIGHT.0, limits::HEIGHT.1) as u32,
                n.value.clamp(limits::N_TREES.0, limits::N_TREES.1) as u32,
            );
            if let Some(mib) = limits::forest_too_large_mib(n, h) {
                p.push(
                    "sampler.height",
                    s.height.as_ref().unwrap(),
                    format!("with n_trees {n} needs {mib} MiB of trees; lower height or n_trees"),
                );
            }
        }
        let keys = KeysConfig {
            max_keys: p.int(
                "keys.max_keys",
                &raw.keys.max_keys,
                limits::MAX_KEYS.0,
                limits::MAX_KEYS.1,
                KeysConfig::DEFAULT.max_keys as i64,
            ) as u32,
        };
        let k = &raw.keyed;
        let kd = KeyedConfig::DEFAULT;
        let keyed = KeyedConfig {
            memory_ms: p.duration("keyed.memory", &k.memory, kd.memory_ms),
            min_key_count: p.int(
                "keyed.min_key_count",
                &k.min_key_count,
                limits::MIN_KEY_COUNT.0,
                limits::MIN_KEY_COUNT.1,
                kd.min_key_count as i64,
            ) as u32,
            context_window_ms: p.duration(
                "keyed.context_window",
                &k.context_window,
                kd.context_window_ms,
            ),
            sides: k.sides.as_ref().map_or(kd.sides, |v| v.value),
        };
        let rules = validate_rules(&mut p, &raw.rules, "rules");
        if !p.0.is_empty() {
            return Err(ConfigError::new(p.0));
        }
        Ok(EngineConfig {
            mode: raw.mode.map(|m| m.value).unwrap_or_default(),
            sampler,
            keys,
            keyed,
            rules,
        })
    }
}

impl EngineConfig {
    /// An engine configuration whose rules come from a separate rules file (shared with the
    /// daemon). Problems in either document are reported together; those of the rules file carry
    /// `source = "rules file"` and lines of that file. Rules may not be given in both.
    pub fn from_parts(engine_yaml: &str, rules_yaml: Option<&str>) -> Result<Self, ConfigError> {
        let Some(rules_yaml) = rules_yaml else {
            return Self::from_yaml(engine_yaml);
        };
        let engine = Self::from_yaml(engine_yaml);
        let rules = RulesFile::from_yaml(rules_yaml).map_err(|e| {
            let mut problems = e.problems;
            for p in &mut problems {
                p.source = Some("rules file".to_string());
            }
            problems
        });
        match (engine, rules) {
            (Ok(mut cfg), Ok(rules)) => {
                if !cfg.rules.is_empty() && !rules.rules.is_empty() {
                    return Err(ConfigError::new(vec![ConfigProblem {
                        path: "rules".into(),
                        line: 0,
                        message: "rules are given both inline and in a rules file; use one".into(),
                        source: None,
                    }]));
                }
                if cfg.rules.is_empty() {
                    cfg.rules = rules.rules;
                }
                Ok(cfg)
            }
            (Err(e), Ok(_)) => Err(e),
            (Ok(_), Err(p)) => Err(ConfigError::new(p)),
            (Err(e), Err(p)) => {
                let mut all = e.problems;
                all.extend(p);
                Err(ConfigError::new(all))
            }
        }
    }
}

impl RulesFile {
    /// Parse and validate a rules file (`rules:` only).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawRulesFile = if text.trim().is_empty() {
            RawRulesFile::default()
        } else {
            serde_saphyr::from_str(text).map_err(parse_err)?
        };
        let mut p = Problems(Vec::new());
        let rules = validate_rules(&mut p, &raw.rules, "rules");
        if !p.0.is_empty() {
            return Err(ConfigError::new(p.0));
        }
        Ok(RulesFile { rules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500.0);
        assert_eq!(parse_duration_ms("1.5s").unwrap(), 1500.0);
        assert_eq!(parse_duration_ms("2m").unwrap(), 120_000.0);
        assert_eq!(parse_duration_ms("250us").unwrap(), 0.25);
        assert_eq!(parse_duration_ms("1m30s").unwrap(), 90_000.0);
        assert_eq!(parse_duration_ms("1h0m0.5s").unwrap(), 3_600_500.0);
        assert_eq!(parse_duration_ms("-2s").unwrap(), -2000.0);
        assert_eq!(parse_duration_ms("0").unwrap(), 0.0);
        for bad in ["7", "5 parsecs", "ms", "", "1m30", "1.2.3s", "s5", "1d"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration_ms("7").unwrap_err().contains("bare number"));
    }

    #[test]
    fn durations_format_in_the_grammar() {
        for (ns, text) in [
            (0u64, "0s"),
            (30_000_000_000, "30s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h"),
            (250_000_000, "250ms"),
            (1_500_000, "1500us"),
            (7, "7ns"),
        ] {
            let d = std::time::Duration::from_nanos(ns);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration_ms(text).unwrap(), ns as f64 / 1e6);
        }
    }

    /// The grammar's cases, shared with the Go processor's tests (collector-go/config_test.go).
    #[test]
    fn durations_shared_with_go() {
        let cases = include_str!("../testdata/durations.txt");
        let mut n = 0;
        for line in cases.lines().filter(|l| !l.starts_with('#')) {
            let (input, want) = line.split_once('\t').expect("input<TAB>want");
            match (parse_duration_ms(input), want) {
                (Err(_), "error") => {}
                (Ok(ms), want) if want != "error" => {
                    let want: f64 = want.parse().unwrap();
                    assert!(
                        (ms - want).abs() <= 1e-9 * want.abs().max(1.0),
                        "{input:?}: {ms}"
                    );
                }
                (got, want) => panic!("{input:?}: got {got:?}, want {want}"),
            }
            n += 1;
        }
        assert!(n > 20);
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(
            EngineConfig::from_yaml("").unwrap(),
            EngineConfig::default()
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = EngineConfig::from_yaml("sampler:\n  n_tress: 3\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("n_tress"), "{s}");
        assert_eq!(e.problems()[0].line, 2, "{s}");
    }

    #[test]
    fn every_problem_at_once() {
        let yaml = "sampler:\n  n_trees: 0\n  min_score: .nan\n  window_size: -3\n  max_duration: 0s\nkeys:\n  max_keys: 0\n";
        let e = EngineConfig::from_yaml(yaml).unwrap_err();
        let paths: Vec<_> = e
            .problems()
            .iter()
            .map(|p| (p.path.as_str(), p.line))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("sampler.n_trees", 2),
                ("sampler.window_size", 4),
                ("sampler.min_score", 3),
                ("sampler.max_duration", 5),
                ("keys.max_keys", 7)
            ],
            "{e}"
        );
    }

    #[test]
    fn rule_problems() {
        let yaml = r#"
rules:
  - name: a
    when: {}
    count: 0
    window: -1s
    action: { kind: horizontal, target: { kind: Pod, name: x }, min: 3, max: 2 }
  - name: a
    when: { duration_above: 1s }
    count: 1
    window: 1s
    action: { kind: vertical, target: { kind: Deployment, name: x }, max: 2, vertical: { factor: 0.5 } }
"#;
        let e = RulesFile::from_yaml(yaml).unwrap_err();
        let s = e.to_string();
        for needle in [
            "rules[0].when",
            "rules[0].count",
            "rules[0].window",
            "rules[0].action.max",
            "rules[0].action.target.kind",
            "rules[1].name",
            "rules[1].action.vertical.factor",
        ] {
            assert!(s.contains(needle), "missing {needle} in\n{s}");
        }
        assert!(e.problems().iter().all(|p| p.line > 0), "{s}");
    }

    #[test]
    fn vertical_fallback_defaults_to_rollout_and_accepts_none() {
        let rule = |vertical: &str| {
            format!(
                "rules:\n- name: r\n  when: {{ duration_above: 1s }}\n  count: 1\n  window: 1s\n  action:\n    kind: vertical\n    target: {{ kind: Deployment, name: x }}\n    max: 2\n{vertical}"
            )
        };
        let fallback = |vertical: &str| {
            RulesFile::from_yaml(&rule(vertical)).unwrap().rules[0]
                .action
                .vertical
                .fallback
        };
        assert_eq!(fallback(""), VerticalFallback::Rollout);
        assert_eq!(
            fallback("    vertical: { fallback: rollout }\n"),
            VerticalFallback::Rollout
        );
        assert_eq!(
            fallback("    vertical: { fallback: none }\n"),
            VerticalFallback::None
        );
        // A wrong value names the key and its line, and is reported with the other problems.
        let e = RulesFile::from_yaml(&rule(
            "    vertical:\n      factor: 0.5\n      fallback: restart\n",
        ))
        .unwrap_err();
        let problems: Vec<_> = e
            .problems()
            .iter()
            .map(|p| (p.path.as_str(), p.line, p.message.as_str()))
            .collect();
        assert_eq!(
            problems,
            vec![
                (
                    "rules[0].action.vertical.factor",
                    11,
                    "must be greater than 1 and at most 10, got 0.5"
                ),
                (
                    "rules[0].action.vertical.fallback",
                    12,
                    "must be rollout or none, got \"restart\""
                ),
            ],
            "{e}"
        );
    }

    #[test]
    fn rules_from_a_separate_file() {
        let rules = "rules:\n- name: r\n  when: { duration_above: 1s }\n  count: 2\n  window: 1s\n  action: { kind: horizontal, target: { kind: Deployment, name: x }, max: 3 }\n";
        let cfg = EngineConfig::from_parts("sampler: { n_trees: 3 }", Some(rules)).unwrap();
        assert_eq!((cfg.sampler.n_trees, cfg.rules.len()), (3, 1));
        let e = EngineConfig::from_parts(
            "sampler: { n_trees: 0 }",
            Some(&rules.replace("count: 2", "count: 0")),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("line 2: sampler.n_trees") || s.contains("line 1: sampler.n_trees"),
            "{s}"
        );
        assert!(s.contains("rules file: line 4: rules[0].count"), "{s}");
        let both = rules.to_string();
        assert!(EngineConfig::from_parts(&both, Some(rules)).is_err());
    }

    #[test]
    fn max_decision_age_defaults_to_two_windows_and_names_its_key() {
        let rule = |extra: &str, window: &str| {
            format!(
                "rules:\n- name: r\n  when: {{ duration_above: 1s }}\n  count: 2\n  window: {window}\n  action: {{ kind: horizontal, target: {{ kind: Deployment, name: x }}, max: 3{extra} }}\n"
            )
        };
        let age = |y: &str| {
            RulesFile::from_yaml(y).unwrap().rules[0]
                .action
                .max_decision_age_ms
        };
        assert_eq!(age(&rule("", "30s")), 60_000.0, "2 × window");
        assert_eq!(age(&rule("", "1s")), MIN_DEFAULT_DECISION_AGE_MS, "floor");
        assert_eq!(age(&rule(", max_decision_age: 5m", "1s")), 300_000.0);
        assert_eq!(age(&rule(", max_decision_age: 2s", "30s")), 2_000.0);
        let e = RulesFile::from_yaml(&rule(", max_decision_age: 0s", "30s")).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 6: rules[0].action.max_decision_age: must be a positive duration"),
            "{e}"
        );
        let e = RulesFile::from_yaml(&rule(", max_decision_age: soon", "30s")).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }

    #[test]
    fn for_is_optional_and_names_its_key() {
        let rule = |extra: &str| {
            format!(
                "rules:\n- name: r\n  when: {{ incident: true }}\n  count: 2\n  window: 30s\n{extra}  action: {{ kind: horizontal, target: {{ kind: Deployment, name: x }}, max: 3 }}\n"
            )
        };
        let hold = |y: &str| RulesFile::from_yaml(y).unwrap().rules[0].for_ms;
        assert_eq!(hold(&rule("")), 0.0, "at once");
        assert_eq!(hold(&rule("  for: 0s\n")), 0.0, "at once");
        assert_eq!(hold(&rule("  for: 10s\n")), 10_000.0);
        let e = RulesFile::from_yaml(&rule("  for: -5s\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 6: rules[0].for: must be a positive duration"),
            "{e}"
        );
    }

    #[test]
    fn bad_enum_value_is_a_parse_error_with_line() {
        let e = EngineConfig::from_yaml("mode: fancy\n").unwrap_err();
        assert_eq!(e.problems()[0].line, 1, "{e}");
    }
}
