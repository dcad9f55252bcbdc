//! The engine: featurize → score + learn → keep → rules → decisions, one batch at a time.

use serde::{Deserialize, Serialize};

use crate::calibrate::Calibrator;
use crate::config::{EngineConfig, Mode};
use crate::error::{Error, Result};
use crate::features::{self, Featurizer, N_FEATURES, RARE_TAIL, SkipReason};
use crate::hst::{Hst, HstParams};
use crate::keys::{KeyId, KeyTable, OVERFLOW, ServiceId};
use crate::rules::{Decision, Observation, RuleSet, Slot};

/// How a span names its key.
#[derive(Debug, Clone, Copy)]
pub enum SpanKey<'a> {
    /// An id from [`Engine::intern`].
    Id(KeyId),
    /// Names, interned on the fly.
    Names {
        /// `service.name` of the span's resource.
        service: &'a str,
        /// The span's name.
        operation: &'a str,
    },
}

/// How a span gives its duration.
#[derive(Debug, Clone, Copy)]
pub enum Timing {
    /// Start and end, ns since the Unix epoch (validated).
    StartEnd {
        /// Start.
        start_ns: u64,
        /// End.
        end_ns: u64,
    },
    /// A duration already in ms (recorded CSV streams).
    DurationMs(f64),
}

/// One span as the engine sees it. Borrowed: nothing is kept after the call.
#[derive(Debug, Clone, Copy)]
pub struct SpanRef<'a> {
    /// Key.
    pub key: SpanKey<'a>,
    /// Duration.
    pub timing: Timing,
    /// Trace id (evidence for decisions).
    pub trace_id: [u8; 16],
    /// Span id (evidence for decisions).
    pub span_id: [u8; 8],
}

/// The engine's verdict on one span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Anomaly score in `[0, 1]`; `None` before the model is warm or if skipped.
    pub score: Option<f64>,
    /// Keep (forward) the span.
    pub keep: bool,
    /// Why the span was not scored.
    pub skipped: Option<SkipReason>,
    /// The engine took the span as ordinary and learned it (a span it held back as part of an
    /// anomaly or an incident is not learned; see [`Engine`]).
    pub learned: bool,
    /// `keyed`, with rules: the span's service was in an incident of its own (what
    /// `when: { incident: true }` rules count; [`crate::rules::Observation::incident`]). For
    /// evaluation tools.
    pub incident: bool,
}

/// Why the last span scored as it did (see [`Engine::last_explain`]); for evaluation tools.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Explain {
    /// The features the forest saw.
    pub features: [f64; N_FEATURES],
    /// `keyed`: the span's tail probability under its key's model.
    pub tail: f64,
    /// `keyed`: the key's context, in standard deviations of its ordinary variation.
    pub context_z: f64,
    /// `keyed`: the key's context: its recent spans' mean position minus 0.5.
    pub shift: f64,
    /// `keyed`: the key is in an incident.
    pub incident: bool,
    /// `keyed`: the key's model is trusted.
    pub established: bool,
}

/// Outputs of [`Engine::process_batch`]; reuse one across batches to avoid allocating.
#[derive(Debug, Default, Clone)]
pub struct BatchOutput {
    /// One verdict per input span, in order.
    pub verdicts: Vec<Verdict>,
    /// Decisions that fired in this batch, conflated by target.
    pub decisions: Vec<Decision>,
}

/// Counters since the engine was created (or restored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Spans given to the engine.
    pub spans_seen: u64,
    /// Spans that got a score.
    pub spans_scored: u64,
    /// Spans kept.
    pub spans_kept: u64,
    /// Spans skipped, by [`SkipReason`] discriminant.
    pub spans_skipped: [u64; 6],
    /// Distinct keys held.
    pub keys: u64,
    /// Spans that fell into the overflow key.
    pub keys_overflow: u64,
    /// Decisions emitted (after conflation).
    pub decisions: u64,
}

/// The engine. Not internally synchronised: wrap it in a lock (the C ABI does) to share it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Engine {
    cfg: EngineConfig,
    keys: KeyTable,
    /// The rule windows each key's spans go to (computed once per key).
    key_rules: Vec<Vec<Slot>>,
    featurizer: Featurizer,
    hst: Hst,
    rules: RuleSet,
    /// Spans learned so far (training counts against `train_size`).
    learned: u64,
    stats: Stats,
    /// Feature names, once known.
    feature_names: Option<[String; 2]>,
    /// Spans held back as part of an incident (keyed mode), for learning one in
    /// [`INCIDENT_LEARN_EVERY`].
    held: u64,
    /// Moving share of rare spans (a tail probability below the keep budget) among the scored
    /// spans of established keys, over about `1 / RARE_SHARE_WEIGHT` spans.
    rare_share: f64,
    /// The keep threshold, calibrated to `keep_budget` (unused with a fixed `min_score`).
    calibrator: Calibrator,
    #[serde(skip)]
    last: ExplainSlot,
    /// The budget counted in traces ([`Engine::count_budget_in_traces`]): not saved, the
    /// caller sets it again after a restore.
    #[serde(skip)]
    per_trace: TraceBudget,
    /// Calls between services, from operation names; rebuilt from the keys on restore.
    #[serde(skip)]
    calls: Calls,
}

/// Which services call which, from the keys' names, and when each service was last in an
/// incident: so that a service that is slow only because a service it calls is slow, or its
/// calls into one are delayed on the way, is not taken as the incident's cause
/// ([`Observation::incident`], what `when: { incident: true }` rules count).
///
/// RPC instrumentations (gRPC's, OpenTelemetry's RPC conventions) name a call's client span and
/// its server span alike (`package.Service/Method`, give or take a leading `/` or a prefix:
/// [`call_name`]), so a call that several services have is a call between them; the one whose
/// spans of it are shortest serves it (a client span holds the server span and the network both
/// ways) and the others call it. Services whose calls are named otherwise (an HTTP client span
/// named `GET`) show no calls, and are judged as before.
#[derive(Debug, Clone, Default)]
struct Calls {
    /// Call name ([`call_name`]) → its group: the keys of that call.
    by_call: std::collections::HashMap<Box<str>, u32>,
    groups: Vec<Vec<KeyId>>,
    /// By group: its server, once settled ([`Calls::settle`]).
    servers: Vec<Option<KeyId>>,
    /// By service id: its keys that are calls, with their groups.
    of_service: Vec<Vec<(KeyId, u32)>>,
    /// By service id: engine time until which it counts as in an incident (its last span in
    /// one, plus `context_window`).
    incident_until_ns: Vec<u64>,
}

impl PartialEq for Calls {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The call an operation name stands for, as RPC instrumentations name it: `Service/Method` of
/// `package.Service/Method`, gRPC's full method name `/package.Service/Method`, or a name with
/// a prefix of the instrumentation's (`grpc.package.Service/Method`); `None` for a name that
/// is not one call (with white space, like `GET /api/cart`, or more than one `/`).
fn call_name(operation: &str) -> Option<&str> {
    let name = operation.strip_prefix('/').unwrap_or(operation);
    if name.chars().any(char::is_whitespace) {
        return None;
    }
    let (service, method) = name.split_once('/')?;
    if method.is_empty() || method.contains('/') {
        return None;
    }
    let start = service.rfind('.').map_or(0, |i| i + 1);
    (start < service.len()).then(|| &name[start..])
}

impl Calls {
    /// Record key `id` of `service`, operation `operation`.
    fn add(&mut self, id: KeyId, service: ServiceId, operation: &str) {
        let Some(call) = call_name(operation) else {
            return;
        };
        let next = self.groups.len() as u32;
        let g = *self.by_call.entry(call.into()).or_insert(next);
        if g == next {
            self.groups.push(Vec::new());
            self.servers.push(None);
        }
        self.groups[g as usize].push(id);
        // A new side of the call: its server is judged again.
        self.servers[g as usize] = None;
        let s = service as usize;
        if s >= self.of_service.len() {
            self.of_service.resize_with(s + 1, Vec::new);
        }
        self.of_service[s].push((id, g));
    }

    /// Rebuild from a key table (after a restore).
    fn of(keys: &KeyTable) -> Self {
        let mut c = Self::default();
        for id in 0..keys.len() as KeyId {
            if let (Some((_, o)), Some(s)) = (keys.names(id), keys.service_of(id)) {
                c.add(id, s, o);
            }
        }
        c
    }

    /// Heap bytes, roughly.
    fn memory_bytes(&self) -> usize {
        self.by_call.keys().map(|k| k.len() + 32).sum::<usize>()
            + self
                .groups
                .iter()
                .map(|g| g.capacity() * 4 + 24)
                .sum::<usize>()
            + self
                .of_service
                .iter()
                .map(|v| v.capacity() * 8 + 24)
                .sum::<usize>()
            + self.incident_until_ns.capacity() * 8
            + self.servers.capacity() * 8
    }

    /// `service` is in an incident at `at_ns`, for `window_ns` more.
    fn note_incident(&mut self, service: ServiceId, at_ns: u64, window_ns: u64) {
        let s = service as usize;
        if s >= self.incident_until_ns.len() {
            self.incident_until_ns.resize(s + 1, 0);
        }
        self.incident_until_ns[s] = at_ns.saturating_add(window_ns);
    }

    /// The server's key of call group `g`: the one with the shortest spans (every client span
    /// holds it); the others are its callers. Settled once every side of the call is
    /// established ([`Calls::settle`]); until then, by what they learned so far.
    fn server_of(&self, featurizer: &Featurizer, g: u32) -> Option<KeyId> {
        self.servers[g as usize].or_else(|| Self::shortest(featurizer, &self.groups[g as usize]))
    }

    /// The key of `group` with the shortest learned spans.
    fn shortest(featurizer: &Featurizer, group: &[KeyId]) -> Option<KeyId> {
        group
            .iter()
            .filter_map(|&k| featurizer.mean_ld(k).map(|m| (m, k)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| k)
    }

    /// Whether `key` of `service` is its side of a call it makes (a client span).
    fn is_client(&self, featurizer: &Featurizer, service: ServiceId, key: KeyId) -> bool {
        self.of_service.get(service as usize).is_some_and(|calls| {
            calls.iter().any(|&(k, g)| {
                k == key
                    && self
                        .server_of(featurizer, g)
                        .is_some_and(|server| server != key)
            })
        })
    }

    /// Settle the server of the calls `key` (of `service`) takes part in, once every side of
    /// one is established: from then on it does not change (until a new side appears). A long
    /// incident in the callee makes its callers' client spans mostly the callee's time, and
    /// what the sides learn of it (one span in [`INCIDENT_LEARN_EVERY`]) would otherwise bring
    /// their means so close that the callee could pass for the caller.
    fn settle(&mut self, featurizer: &Featurizer, service: ServiceId, key: KeyId) {
        let Some(calls) = self.of_service.get(service as usize) else {
            return;
        };
        for &(k, g) in calls {
            let g = g as usize;
            if k != key || self.servers[g].is_some() {
                continue;
            }
            let group = &self.groups[g];
            if group.len() > 1 && group.iter().all(|&k| featurizer.is_established(k)) {
                self.servers[g] = Self::shortest(featurizer, group);
            }
        }
    }

    /// Whether `service`'s slowness at `at_ns` is explained by a service it calls: the callee
    /// is in an incident, or at least its side of the call is; or the calls into it are delayed
    /// on the way (its network), which shows on the callers' side only (their client spans) and
    /// so is told from the caller's own slowness by the company it keeps: the same call is slow
    /// from another caller too, or, of this service's calls, only those into that callee are.
    /// A CPU-starved caller is slow in every call it makes, and the other callers of its
    /// callees are not.
    ///
    /// Either explanation must also account for the time: what the callee's side (or another
    /// caller's client span) added must be at least [`EXPLAINED_SHARE`] of what this service's
    /// client span of the call added, in absolute time ([`Featurizer::recent_excess_us`]).
    /// A starved caller whose calls take 100 ms more while its callees, on the same node, take
    /// 3 ms more is slow of its own, whatever the callees' incidents say.
    fn callee_in_incident(
        &self,
        keys: &KeyTable,
        featurizer: &Featurizer,
        service: ServiceId,
        at_ns: u64,
    ) -> bool {
        let Some(calls) = self.of_service.get(service as usize) else {
            return false;
        };
        let callee = |g: u32| {
            self.server_of(featurizer, g)
                .and_then(|k| Some((k, keys.service_of(k)?)))
                .filter(|&(_, t)| t != service)
        };
        calls.iter().any(|&(own, g)| {
            let Some((server, t)) = callee(g).filter(|&(k, _)| k != own) else {
                return false;
            };
            // A call that is not slower than usual explains nothing.
            let owed = featurizer.recent_excess_us(own) * EXPLAINED_SHARE;
            let accounts = |k: KeyId| owed > 0.0 && featurizer.recent_excess_us(k) >= owed;
            // A busy caller can show an incident before its callee as a whole does.
            if (self
                .incident_until_ns
                .get(t as usize)
                .is_some_and(|&u| u > at_ns)
                || featurizer.key_in_incident(server))
                && accounts(server)
            {
                return true;
            }
            if !featurizer.key_in_incident(own) {
                return false;
            }
            let from_another_caller = self.groups[g as usize].iter().any(|&k| {
                k != own
                    && k != server
                    && keys.service_of(k).is_some_and(|c| c != service && c != t)
                    && featurizer.key_in_incident(k)
                    && accounts(k)
            });
            if from_another_caller {
                return true;
            }
            // Its calls into other callees: some, and none slow.
            let mut others = calls
                .iter()
                .filter(|&&(k, g2)| g2 != g && k != own && callee(g2).is_some_and(|(_, c)| c != t))
                .peekable();
            others.peek().is_some() && others.all(|&(k, _)| !featurizer.key_in_incident(k))
        })
    }
}

/// The share of a caller's added time (its client span's, over what it usually is) that the
/// callee's side must account for to explain the caller's slowness ([`Calls::callee_in_incident`]):
/// half, so that the explanation is the larger part of the delay.
pub const EXPLAINED_SHARE: f64 = 0.5;

/// Spans in a measurement of spans per trace ([`Engine::count_budget_in_traces`]): long enough
/// that a trace cut by its edges counts little, short enough to follow a change of traffic.
pub const TRACE_BUDGET_WINDOW: u32 = 16_384;

/// Counting the keep budget in traces: the spans per trace of recent traffic, measured over
/// windows of [`TRACE_BUDGET_WINDOW`] spans (distinct trace ids among them). Not state of the
/// model, so it takes no part in equality.
#[derive(Debug, Clone, Default)]
struct TraceBudget {
    on: bool,
    seen: std::collections::HashSet<u64>,
    spans: u32,
    /// Spans per trace, smoothed over windows; `None` until a window was measured.
    spans_per_trace: Option<f64>,
    /// The onset of an incident, by key id and by service id.
    key_onsets: Vec<Onset>,
    service_onsets: Vec<Onset>,
    /// Spans of the current batch that a key or service in an incident by the batch's end would
    /// have marked: (index in the batch, key, tail probability). Cleared when a batch starts (index 0).
    pending: Vec<(u32, KeyId, f64)>,
    /// The current batch's number (counts batches, wrapping).
    batch: u32,
}

/// The onset of an incident on one key (or service), counted in traces: a CUSUM of its rare
/// spans (a tail probability under [`RARE_TAIL`]), which ordinary traffic has at [`RARE_TAIL`]
/// and a fault at [`ONSET_RARE_SHARE`] or more. Each rare span adds `ln(ONSET_RARE_SHARE /
/// RARE_TAIL)`, each other one takes `ln((1 − RARE_TAIL) / (1 − ONSET_RARE_SHARE))` away, and
/// the sum (never below 0) over `ln(1 / ONSET_FALSE_ALARM)` is an onset: three rare spans in
/// a row, or a run in which they keep coming. Unlike an incident ([`features::Look::incident`]),
/// which averages a key's spans over `context_window` and so takes a share of them (hundreds of
/// spans on a busy key), this needs a few spans whatever the rate; it only decides which spans
/// are marked, never what is learned.
#[derive(Debug, Clone, Copy, Default)]
struct Onset {
    cusum: f32,
    /// The key (service) was in an incident at its last span.
    incident: bool,
    /// The trace of its last span (low 8 bytes of the id).
    trace: u64,
    /// In batch `batch` (its number, [`TraceBudget::batch`]), the last index at which the key
    /// (service) marked spans, and the tail probability under which it marked them then: the
    /// spans of the batch before that index are marked late ([`Engine::late_marks`]) even if
    /// the onset was over by the batch's end (a model that learns a fault's first spans soon
    /// finds them less rare).
    batch: u32,
    marked_until: u32,
    marked_below: f32,
}

/// The share of a key's spans that are rare under a fault, for the onset of an incident
/// ([`Engine::count_budget_in_traces`]).
pub const ONSET_RARE_SHARE: f64 = 0.5;
/// The chance per span of an onset of an incident in ordinary traffic, at most (Wald's bound on
/// a CUSUM's false alarms; [`Engine::count_budget_in_traces`]).
pub const ONSET_FALSE_ALARM: f64 = 1e-5;

impl Onset {
    /// The log-likelihood ratio of a rare span, `ln(ONSET_RARE_SHARE / RARE_TAIL)`...
    const RISE: f32 = 3.912_023;
    /// ...of another span, `ln((1 − RARE_TAIL) / (1 − ONSET_RARE_SHARE))`...
    const FALL: f32 = 0.683_097;
    /// ...and the onset's level, `ln(1 / ONSET_FALSE_ALARM)` (checked by a test).
    const LEVEL: f32 = 11.512_925;

    /// Add a span of `trace`, batch `batch` at `index`; whether the span is marked (its tail
    /// probability `tail`).
    fn observe(&mut self, trace: u64, tail: f64, incident: bool, batch: u32, index: u32) -> bool {
        self.note(trace, tail < RARE_TAIL, incident);
        let below = self.marks_below();
        if below > 0.0 {
            if self.batch != batch {
                self.batch = batch;
                self.marked_below = 0.0;
            }
            self.marked_until = index;
            self.marked_below = self.marked_below.max(below as f32);
        }
        tail < below
    }

    fn note(&mut self, trace: u64, rare: bool, incident: bool) {
        self.incident = incident;
        // The spans of one trace are one observation: a slow request is often slow in each of
        // its calls to an operation, for one reason, and is not evidence many times over.
        if trace == self.trace && trace != 0 {
            return;
        }
        self.trace = trace;
        self.cusum = if rare {
            self.cusum + Self::RISE
        } else {
            (self.cusum - Self::FALL).max(0.0)
        }
        // Bounded, so that the end of a fault shows within a few spans.
        .min(2.0 * Self::LEVEL);
    }

    /// The tail probability under which a span is marked now: slower than most of its key's
    /// spans ([`features::SERVICE_INCIDENT_TAIL`]) in an incident, rare at an onset, none (0)
    /// otherwise.
    fn marks_below(&self) -> f64 {
        if self.incident {
            features::SERVICE_INCIDENT_TAIL
        } else if self.cusum >= Self::LEVEL {
            RARE_TAIL
        } else {
            0.0
        }
    }

    /// Whether a span of batch `batch` at `index`, with tail probability `tail`, not marked when
    /// it came, is marked at the batch's end.
    fn marks_late(&self, batch: u32, index: u32, tail: f64) -> bool {
        self.batch == batch && self.marked_until > index && tail < f64::from(self.marked_below)
    }
}

fn onset_slot(v: &mut Vec<Onset>, i: u32) -> &mut Onset {
    let i = i as usize;
    if i >= v.len() {
        v.resize(i + 1, Onset::default());
    }
    &mut v[i]
}

impl PartialEq for TraceBudget {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// [`Explain`] of the last span: not state, so it takes no part in equality.
#[derive(Debug, Clone, Default)]
struct ExplainSlot(Explain);

impl PartialEq for ExplainSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// In `keyed` mode, one span in this many of a key in an incident is learned anyway, so that a
/// lasting change of latency is absorbed about this many times slower than ordinary traffic.
/// Latency rules (`duration_above`) keep counting meanwhile.
pub const INCIDENT_LEARN_EVERY: u64 = 8;
/// Weight of each scored span in the moving share of rare spans.
pub const RARE_SHARE_WEIGHT: f64 = 1.0 / 4096.0;
/// Rare spans are in excess above this many times their share in ordinary traffic.
pub const RARE_EXCESS: f64 = 1.5;

const SNAPSHOT_MAGIC: &[u8; 8] = b"SCALESNP";
/// Snapshot format version. Bump on any change to the serialized state (4: a rule's action
/// carries `max_decision_age`; 5: contexts carry their spans' log-durations, rules their `for`
/// and its run; 6: each service's own work has a context).
pub const SNAPSHOT_VERSION: u32 = 6;

impl Engine {
    /// A fresh engine. In `keyed` mode the trees are built now; in `paper` mode on the first
    /// span, as River does.
    pub fn new(cfg: EngineConfig) -> Self {
        let s = cfg.sampler;
        let params = HstParams {
            n_trees: s.n_trees,
            height: s.height,
            window_size: s.window_size,
            seed: s.seed,
        };
        let mut hst = Hst::new(params, N_FEATURES);
        let mut feature_names = None;
        if cfg.mode == Mode::Keyed {
            hst.set_leaf_learning(true);
            hst.build(&[(0.0, 1.0); N_FEATURES]);
            feature_names = Some(["deviation".to_string(), "log_duration".to_string()]);
        }
        Self {
            keys: KeyTable::new(cfg.keys.max_keys),
            key_rules: Vec::new(),
            featurizer: Featurizer::new(&cfg),
            hst,
            rules: RuleSet::new(cfg.rules.clone(), cfg.keyed.context_window_ms),
            learned: 0,
            stats: Stats::default(),
            feature_names,
            held: 0,
            rare_share: RARE_TAIL,
            calibrator: Calibrator::new(cfg.sampler.keep_budget),
            last: ExplainSlot::default(),
            per_trace: TraceBudget::default(),
            calls: Calls::default(),
            cfg,
        }
    }

    /// Parse, validate and build.
    pub fn from_yaml(text: &str) -> Result<Self> {
        Ok(Self::new(EngineConfig::from_yaml(text)?))
    }

    /// A `paper`-mode engine over trees built elsewhere (River), for parity checks. `features`
    /// names the forest's features in order (`"duration"` and one key `service::operation`);
    /// `trees` gives, per tree, its internal nodes in heap order as (feature index, threshold).
    pub fn with_paper_trees(
        cfg: EngineConfig,
        features: &[String],
        trees: &[Vec<(u32, f64)>],
    ) -> Result<Self> {
        if cfg.mode != Mode::Paper || features.len() != 2 {
            return Err(Error::Trees(
                "paper mode with two features (duration and one key) required".into(),
            ));
        }
        let mut e = Self::new(cfg);
        let s = e.cfg.sampler;
        let params = HstParams {
            n_trees: s.n_trees,
            height: s.height,
            window_size: s.window_size,
            seed: s.seed,
        };
        e.hst = Hst::from_trees(params, N_FEATURES, trees).map_err(Error::Trees)?;
        let key_name = features
            .iter()
            .find(|f| *f != "duration")
            .ok_or_else(|| Error::Trees("no key feature".into()))?;
        let (service, operation) = key_name.split_once("::").ok_or_else(|| {
            Error::Trees(format!(
                "key feature {key_name:?} is not service::operation"
            ))
        })?;
        let id = e.intern(service, operation);
        let names = e.featurizer.init_paper(id, &e.keys);
        if names.as_slice() != features {
            return Err(Error::Trees(format!(
                "feature order {features:?} is not River's sorted order {names:?}"
            )));
        }
        e.feature_names = Some(names);
        Ok(e)
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The key table.
    pub fn keys(&self) -> &KeyTable {
        &self.keys
    }

    /// The rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// How many reports [`Engine::rule_reports`] would return now, and the total length of
    /// their services' names (changes nothing).
    pub fn rule_report_sizes(&self) -> (usize, usize) {
        self.rules.report_sizes()
    }

    /// What every rule's windows saw since the last call (see [`RuleSet::reports`]), at `now_ns`
    /// on the engine's clock; starts a new reporting interval.
    pub fn rule_reports(&mut self, now_ns: u64) -> Vec<crate::RuleReport> {
        self.rules.reports(now_ns)
    }

    /// Names of the forest's features, once known.
    pub fn feature_names(&self) -> Option<&[String; 2]> {
        self.feature_names.as_ref()
    }

    /// Whether scores are available (a reference window exists).
    pub fn is_warm(&self) -> bool {
        self.hst.is_warm()
    }

    /// The score at or above which a span is kept now: `min_score` if set, else the threshold
    /// calibrated to `keep_budget` (`None` until enough spans were scored).
    pub fn keep_threshold(&self) -> Option<f64> {
        self.cfg.sampler.min_score.or(self.calibrator.threshold())
    }

    /// Count `keep_budget` in traces instead of spans (`on`), for a caller that only marks spans
    /// and leaves the keep decision to a sampler downstream that keeps a whole trace when any of
    /// its spans is marked (the processor's `drop: false` before `tail_sampling`). A trace of
    /// `n` spans would otherwise have about `n` chances to be kept: the engine measures spans
    /// per trace from the spans' trace ids ([`TRACE_BUDGET_WINDOW`]) and calibrates its
    /// threshold to `keep_budget / (spans per trace)` of spans, so about `keep_budget` of
    /// ordinary traces have a marked span (fewer where the slow spans of a trace come together,
    /// as they usually do). Spans without a trace id (all zeros) are not counted. The keep flag
    /// is what anomaly rules (`when: { anomalous: true }`) count, so they become as much
    /// stricter. A span of a key in an incident (or of a service in one, as the engine holds
    /// such spans back from learning) that is slower than most of its key's spans is marked
    /// whatever its score, so every trace through an incident is kept whole. So is a rare span
    /// of a key (or service) at the onset of an incident (a CUSUM of its rare spans, counted
    /// once per trace, over `ln(1 / ONSET_FALSE_ALARM)`: three rare spans in a row, or a run in
    /// which they keep coming; see [`ONSET_RARE_SHARE`]), which shows within a few spans where
    /// an incident takes a share of a busy key's `context_window`; and the
    /// spans of the same batch that came before the onset ([`Engine::late_marks`]), since a
    /// fault's first spans alone look like the slowest ordinary ones. None of this changes what
    /// is learned. Off by default; not saved in a snapshot (call it again after a restore).
    pub fn count_budget_in_traces(&mut self, on: bool) {
        self.per_trace = TraceBudget {
            on,
            ..TraceBudget::default()
        };
        self.calibrator.set_budget(self.cfg.sampler.keep_budget);
    }

    /// Whether the keep budget is counted in traces ([`Engine::count_budget_in_traces`]).
    pub fn counts_budget_in_traces(&self) -> bool {
        self.per_trace.on
    }

    /// The spans per trace the budget is divided by ([`Engine::count_budget_in_traces`]), once
    /// measured.
    pub fn spans_per_trace(&self) -> Option<f64> {
        self.per_trace.spans_per_trace
    }

    fn measure_trace(&mut self, trace_id: &[u8; 16]) {
        let t = &mut self.per_trace;
        if *trace_id == [0; 16] {
            return;
        }
        // Trace ids are random: their low 8 bytes identify a trace among a window's.
        t.seen.insert(u64::from_le_bytes(
            trace_id[8..].try_into().expect("8 bytes"),
        ));
        t.spans += 1;
        if t.spans < TRACE_BUDGET_WINDOW {
            return;
        }
        let ratio = f64::from(t.spans) / t.seen.len() as f64;
        let spt = t.spans_per_trace.map_or(ratio, |p| p + (ratio - p) * 0.25);
        t.spans_per_trace = Some(spt);
        t.seen.clear();
        t.spans = 0;
        self.calibrator
            .set_budget(self.cfg.sampler.keep_budget / spt.max(1.0));
    }

    /// Why the last span given to [`Engine::process_span`] scored as it did.
    pub fn last_explain(&self) -> &Explain {
        &self.last.0
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.keys = self.keys.len() as u64;
        s.keys_overflow = self.keys.overflowed();
        s
    }

    /// Approximate heap bytes held (trees, keys, baselines, windows).
    pub fn memory_bytes(&self) -> usize {
        self.hst.memory_bytes()
            + self.keys.memory_bytes()
            + self.featurizer.memory_bytes()
            + self.rules.memory_bytes()
            + self.calls.memory_bytes()
            + self
                .key_rules
                .iter()
                .map(|v| v.capacity() * 2 + 24)
                .sum::<usize>()
    }

    /// The id of `service::operation` (added if there is room, else [`OVERFLOW`]). Ids are stable
    /// for the engine's life and survive snapshots, so callers may cache them.
    pub fn intern(&mut self, service: &str, operation: &str) -> KeyId {
        let (id, added) = self.keys.intern(service, operation);
        if added {
            debug_assert_eq!(id as usize, self.key_rules.len());
            self.key_rules.push(self.rules.slots(service, operation));
            if let Some(s) = self.keys.service_of(id) {
                self.calls.add(id, s, operation);
            }
        }
        id
    }

    /// Process one span at time `now_ns`; decisions are appended to `decisions`.
    pub fn process_span(
        &mut self,
        span: &SpanRef<'_>,
        index: u32,
        now_ns: u64,
        decisions: &mut Vec<Decision>,
    ) -> Verdict {
        self.stats.spans_seen += 1;
        let d = match span.timing {
            Timing::StartEnd { start_ns, end_ns } => features::duration_ms(start_ns, end_ns),
            Timing::DurationMs(d) => features::check_duration_ms(d),
        };
        let (key, names) = match span.key {
            SpanKey::Id(id) if id == OVERFLOW || (id as usize) < self.keys.len() => (id, None),
            SpanKey::Id(_) => return self.skip(SkipReason::InvalidKey),
            SpanKey::Names { service, operation } => {
                (self.intern(service, operation), Some((service, operation)))
            }
        };
        let d = match d {
            Ok(d) => d,
            Err(r) => return self.skip(r),
        };
        // The model's clock (time decays of a key's latency memory and of the contexts): the
        // span's own end, never later than the caller's clock; the caller's clock for spans
        // without times. So a model learned from a trace store (`scale train`) and one learned
        // live mean the same, whatever the delay and batching between a span's end and its
        // arrival. Rule windows count on the caller's clock.
        let at_ns = match span.timing {
            Timing::StartEnd { end_ns, .. } => end_ns.min(now_ns),
            Timing::DurationMs(_) => now_ns,
        };
        if !self.featurizer.is_ready() {
            self.feature_names = Some(self.featurizer.init_paper(key, &self.keys));
            self.hst.build(&[(0.0, 1.0); N_FEATURES]);
        }
        let mut x = [0.0; N_FEATURES];
        let service = self.keys.service_of(key);
        let look = self.featurizer.features(key, service, d, at_ns, &mut x);
        self.learned += 1;
        let trained = self.learned > self.cfg.sampler.train_size;
        // `learn`: whether this span is taken as ordinary: learned by the forest and its key's
        // model, and its score counted by the keep threshold's calibration.
        self.last.0 = Explain {
            features: x,
            tail: look.tail,
            context_z: look.context_z,
            shift: look.shift,
            incident: look.incident,
            established: look.established,
        };
        if self.per_trace.on {
            self.measure_trace(&span.trace_id);
        }
        let threshold = self.keep_threshold();
        let keyed = self.cfg.mode == Mode::Keyed;
        // A span of a key in an incident, or a slow span (SERVICE_INCIDENT_TAIL) of a service in
        // an incident, is evidence of the incident, not of the key's ordinary latency.
        let incident = keyed
            && (look.incident
                || (look.service_incident && look.tail < features::SERVICE_INCIDENT_TAIL));
        // Rare spans (a tail probability under their key's model below RARE_TAIL) make up
        // RARE_TAIL of ordinary traffic on any system; many more of them across the engine is an
        // incident too, spread over keys.
        let rare = keyed && trained && look.established && look.tail < RARE_TAIL;
        let excess = self.rare_share > RARE_EXCESS * RARE_TAIL;
        let mut anomalous = false;
        let mut learn = true;
        let held = &mut self.held;
        let score = self.hst.score_then_learn_if(&x, |score| {
            anomalous = trained && matches!((score, threshold), (Some(s), Some(t)) if s >= t);
            // What is learned is what the engine takes as ordinary. River (paper mode) learns
            // every span; training learns everything; a key still warming up learns every span
            // (a new service must become known). Otherwise (keyed), a span of a key in an
            // incident, or a rare span while rare spans are in excess, is not learned, so that a
            // fault does not become the normal it is judged against; one in INCIDENT_LEARN_EVERY
            // is, so that a lasting change is absorbed, slowly. Everything else is learned, the
            // slowest ordinary spans included: a model that did not learn its own tail would
            // find the tail rarer every time it saw it.
            learn = if !keyed || !trained || !look.established || !(incident || (rare && excess)) {
                true
            } else {
                *held += 1;
                held.is_multiple_of(INCIDENT_LEARN_EVERY)
            };
            learn
        });
        // Counted in traces, a slow span of a key (or service) in an incident is marked whatever
        // its score: the sampler downstream then keeps every trace through the incident whole,
        // while the threshold, thinner by spans per trace, would keep only the rarest of them.
        //
        // So is one of a key (or service) at the onset of an incident ([`Onset`]), which shows
        // within a few spans, before the context shows an incident; and one that came earlier in
        // the same batch than such an onset ([`Engine::late_marks`]).
        if self.per_trace.on {
            let t = &mut self.per_trace;
            if index == 0 {
                t.pending.clear();
                t.batch = t.batch.wrapping_add(1);
            }
            if trained && score.is_some() && look.established {
                let tail = look.tail;
                let marked = if key == OVERFLOW {
                    incident && tail < features::SERVICE_INCIDENT_TAIL
                } else {
                    let trace = u64::from_le_bytes(span.trace_id[8..].try_into().expect("8 bytes"));
                    let batch = t.batch;
                    let k = onset_slot(&mut t.key_onsets, key);
                    let mut marked = k.observe(trace, tail, look.incident, batch, index);
                    if let Some(s) = service {
                        let s = onset_slot(&mut t.service_onsets, s);
                        marked |= s.observe(trace, tail, look.service_incident, batch, index);
                    }
                    marked
                };
                if marked {
                    anomalous = true;
                } else if !anomalous && key != OVERFLOW && tail < features::SERVICE_INCIDENT_TAIL {
                    t.pending.push((index, key, tail));
                }
            }
        }
        if learn {
            self.featurizer.learn(key, look.ld, at_ns);
        }
        if let Some(s) = score {
            // The threshold is calibrated on ordinary spans. A span of a key in an incident
            // counts 1 / INCIDENT_LEARN_EVERY: an incident keeps most of its spans beyond the
            // budget, but a slowdown that keeps coming back does not escape it altogether. While
            // rare spans are in excess, each counts only as much as chance gives them (RARE_TAIL
            // of the traffic), so an incident spread over many keys does not raise the threshold
            // its own spans are judged by either.
            let mut w = if rare && excess {
                (RARE_TAIL / self.rare_share) as f32
            } else {
                1.0
            };
            if incident {
                w /= INCIDENT_LEARN_EVERY as f32;
            }
            self.calibrator.add(s, w);
        }
        if keyed && trained && look.established {
            self.rare_share +=
                (f64::from(u8::from(look.tail < RARE_TAIL)) - self.rare_share) * RARE_SHARE_WEIGHT;
        }
        if score.is_some() {
            self.stats.spans_scored += 1;
        }
        if anomalous {
            self.stats.spans_kept += 1;
        }
        // The span's service in an incident of its own: not only waiting on a service it calls
        // that is in one.
        let mut own_incident = false;
        if !self.rules.rules().is_empty() {
            let window_ns = self.cfg.keyed.context_window_ms as u64 * 1_000_000;
            // Judged on the service's own work (not the calls it makes): see `own_work`.
            if keyed && let Some(s) = service {
                self.calls.settle(&self.featurizer, s, key);
                let own = look.established && !self.calls.is_client(&self.featurizer, s, key);
                let in_incident = self.featurizer.own_work(key, s, look.ld, at_ns, own);
                if in_incident {
                    self.calls.note_incident(s, at_ns, window_ns);
                    own_incident =
                        !self
                            .calls
                            .callee_in_incident(&self.keys, &self.featurizer, s, at_ns);
                }
            }
            let obs = Observation {
                duration_ms: d,
                score,
                anomalous,
                incident: own_incident,
                trace_id: span.trace_id,
                span_id: span.span_id,
                span_index: index,
                key,
            };
            if key == OVERFLOW {
                // Overflow spans have no cached rule list: match by name when we have names.
                // (A per-service rule gets a window for the service here too: services are at
                // most as many as names seen, which the overflow key does not bound, so such a
                // span only counts towards services that already have a window.)
                let slots = match names {
                    Some((s, o)) if self.rules.has_window_for(s) => self.rules.slots(s, o),
                    Some((s, o)) => self.rules.fixed_slots(s, o),
                    None => self.rules.fixed_slots("", ""),
                };
                for slot in slots {
                    decisions.extend(self.rules.observe(slot, &obs, now_ns));
                }
            } else {
                let list = std::mem::take(&mut self.key_rules[key as usize]);
                for &slot in &list {
                    decisions.extend(self.rules.observe(slot, &obs, now_ns));
                }
                self.key_rules[key as usize] = list;
            }
        }
        Verdict {
            score,
            keep: anomalous,
            skipped: None,
            learned: learn,
            incident: own_incident,
        }
    }

    fn skip(&mut self, r: SkipReason) -> Verdict {
        self.stats.spans_skipped[r as usize] += 1;
        Verdict {
            score: None,
            keep: false,
            skipped: Some(r),
            learned: false,
            incident: false,
        }
    }

    /// Process a batch at time `now_ns` (the caller's clock). `out` is cleared first;
    /// it holds one verdict per span and the batch's decisions, conflated by target.
    pub fn process_batch(&mut self, spans: &[SpanRef<'_>], now_ns: u64, out: &mut BatchOutput) {
        out.verdicts.clear();
        out.decisions.clear();
        out.verdicts.reserve(spans.len());
        for (i, s) in spans.iter().enumerate() {
            let v = self.process_span(s, i as u32, now_ns, &mut out.decisions);
            out.verdicts.push(v);
        }
        if self.per_trace.on {
            let mut late = Vec::new();
            self.late_marks(&mut late);
            for i in late {
                out.verdicts[i as usize].keep = true;
            }
        }
        self.finish_batch(&mut out.decisions);
    }

    /// Counted in traces ([`Engine::count_budget_in_traces`]), the spans of the batch just
    /// processed (by their index in it) that were not marked but are marked now: slow spans of
    /// a key or service whose incident began later in the same batch. The batch is judged as a
    /// whole, so a fault's first spans are kept with the ones that showed it. Rule windows
    /// counted them as they came (not anomalous). [`Engine::process_batch`] applies them to its
    /// verdicts; callers that give a batch span by span call this after its last span.
    pub fn late_marks(&mut self, out: &mut Vec<u32>) {
        let t = &mut self.per_trace;
        let batch = t.batch;
        let late = |v: &Vec<Onset>, i: u32, index, tail| {
            v.get(i as usize)
                .is_some_and(|o| o.marks_late(batch, index, tail))
        };
        let before = out.len();
        for &(index, key, tail) in &t.pending {
            if late(&t.key_onsets, key, index, tail)
                || self
                    .keys
                    .service_of(key)
                    .is_some_and(|s| late(&t.service_onsets, s, index, tail))
            {
                out.push(index);
            }
        }
        t.pending.clear();
        self.stats.spans_kept += (out.len() - before) as u64;
    }

    /// End a batch given span by span ([`Engine::process_span`], with batch-relative indices):
    /// conflate its decisions by target and count them. [`Engine::process_batch`] is
    /// `process_span` for each span, then this; callers that split a batch into several calls
    /// (the C ABI's `scale_engine_process_chunk`) call it once, after the last span.
    pub fn finish_batch(&mut self, decisions: &mut Vec<Decision>) {
        self.rules.conflate(decisions);
        self.stats.decisions += decisions.len() as u64;
    }

    /// Serialize the whole state (model, keys, baselines, windows, counters) in a versioned
    /// binary format.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.hst.memory_bytes() / 2 + 1024);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        postcard::to_extend(self, out).expect("engine state serializes")
    }

    /// Rebuild an engine from [`Engine::snapshot`] bytes. The snapshot's model parameters and
    /// mode must equal `cfg`'s; its rules' windows are kept for rules of the same name and
    /// window, and `cfg`'s other settings (thresholds, rules) take effect.
    pub fn restore(cfg: EngineConfig, bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 12 || &bytes[..8] != SNAPSHOT_MAGIC {
            return Err(Error::Snapshot("not a SCALE snapshot (bad magic)".into()));
        }
        let v = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if v != SNAPSHOT_VERSION {
            return Err(Error::Snapshot(format!(
                "version {v} is not supported (this build reads {SNAPSHOT_VERSION})"
            )));
        }
        let mut e: Engine =
            postcard::from_bytes(&bytes[12..]).map_err(|err| Error::Snapshot(err.to_string()))?;
        let (a, b) = (&e.cfg, &cfg);
        // The settings a snapshot's state is built on; each that differs is named.
        let mut differ = Vec::new();
        let mut check = |name: &str, snap: String, conf: String| {
            if snap != conf {
                differ.push(format!("{name} {snap} (the configuration has {conf})"));
            }
        };
        check("mode", a.mode.as_str().into(), b.mode.as_str().into());
        let (sa, sb) = (&a.sampler, &b.sampler);
        check(
            "sampler.n_trees",
            sa.n_trees.to_string(),
            sb.n_trees.to_string(),
        );
        check(
            "sampler.height",
            sa.height.to_string(),
            sb.height.to_string(),
        );
        check(
            "sampler.window_size",
            sa.window_size.to_string(),
            sb.window_size.to_string(),
        );
        check(
            "sampler.max_duration",
            crate::config::format_duration(std::time::Duration::from_secs_f64(
                sa.max_duration_ms / 1e3,
            )),
            crate::config::format_duration(std::time::Duration::from_secs_f64(
                sb.max_duration_ms / 1e3,
            )),
        );
        check(
            "keys.max_keys",
            e.keys.max_keys().to_string(),
            cfg.keys.max_keys.to_string(),
        );
        if !differ.is_empty() {
            return Err(Error::SnapshotMismatch(format!(
                "the snapshot has {}",
                differ.join(", ")
            )));
        }
        if a.rules != b.rules {
            // Rules changed: start their windows afresh and recompute key → rule matches.
            e.rules = RuleSet::new(cfg.rules.clone(), cfg.keyed.context_window_ms);
            e.key_rules = (0..e.keys.len() as u32)
                .map(|id| {
                    let (s, o) = e.keys.names(id).expect("known id");
                    e.rules.slots(s, o)
                })
                .collect();
        }
        e.calibrator.set_budget(cfg.sampler.keep_budget);
        e.rules.set_context_window(cfg.keyed.context_window_ms);
        e.calls = Calls::of(&e.keys);
        e.cfg = cfg;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(service: &'static str, op: &'static str, d: f64) -> SpanRef<'static> {
        SpanRef {
            key: SpanKey::Names {
                service,
                operation: op,
            },
            timing: Timing::DurationMs(d),
            trace_id: [7; 16],
            span_id: [9; 8],
        }
    }

    #[test]
    fn skips_bad_spans_and_counts_them() {
        let mut e = Engine::new(EngineConfig::default());
        let mut out = BatchOutput::default();
        let bad = [
            SpanRef {
                timing: Timing::StartEnd {
                    start_ns: 0,
                    end_ns: 5,
                },
                ..span("a", "b", 0.0)
            },
            SpanRef {
                timing: Timing::StartEnd {
                    start_ns: 2_000_000_000_000_000_000,
                    end_ns: 1_999_999_999_999_999_999,
                },
                ..span("a", "b", 0.0)
            },
            span("a", "b", f64::NAN),
            span("a", "b", -3.0),
            SpanRef {
                key: SpanKey::Id(12345),
                ..span("a", "b", 1.0)
            },
        ];
        e.process_batch(&bad, 0, &mut out);
        assert!(
            out.verdicts
                .iter()
                .all(|v| v.skipped.is_some() && !v.keep && v.score.is_none())
        );
        let s = e.stats();
        assert_eq!(s.spans_seen, 5);
        assert_eq!(s.spans_skipped[SkipReason::ZeroTimestamp as usize], 1);
        assert_eq!(s.spans_skipped[SkipReason::EndBeforeStart as usize], 1);
        assert_eq!(s.spans_skipped[SkipReason::InvalidDuration as usize], 2);
        assert_eq!(s.spans_skipped[SkipReason::InvalidKey as usize], 1);
    }

    #[test]
    fn keeps_slow_spans_after_training() {
        let cfg =
            EngineConfig::from_yaml("sampler: { train_size: 2000, window_size: 250 }").unwrap();
        let mut e = Engine::new(cfg);
        let mut out = BatchOutput::default();
        let mut spans = Vec::new();
        for i in 0..3000 {
            let d = if i % 2 == 0 {
                5.0 + (i % 7) as f64 * 0.1
            } else {
                500.0 + (i % 5) as f64
            };
            spans.push(span("svc", if i % 2 == 0 { "fast" } else { "slow" }, d));
        }
        e.process_batch(&spans, 0, &mut out);
        assert!(
            out.verdicts[..2000].iter().all(|v| !v.keep),
            "training keeps nothing"
        );
        let kept = out.verdicts[2000..].iter().filter(|v| v.keep).count();
        assert!(kept < 30, "normal traffic mostly dropped: kept {kept}");
        e.process_batch(
            &[span("svc", "fast", 80.0), span("svc", "slow", 500.0)],
            0,
            &mut out,
        );
        assert!(
            out.verdicts[0].keep,
            "16x slower than its key: {:?}",
            out.verdicts[0]
        );
        assert!(
            !out.verdicts[1].keep,
            "normal for its key: {:?}",
            out.verdicts[1]
        );
    }

    #[test]
    fn snapshot_restore_round_trip() {
        let cfg = EngineConfig::from_yaml("sampler: { train_size: 10, window_size: 50 }").unwrap();
        let mut a = Engine::new(cfg.clone());
        let mut out = BatchOutput::default();
        let spans: Vec<_> = (0..500)
            .map(|i| {
                span(
                    "s",
                    if i % 3 == 0 { "x" } else { "y" },
                    1.0 + (i % 11) as f64,
                )
            })
            .collect();
        a.process_batch(&spans, 0, &mut out);
        let snap = a.snapshot();
        let mut b = Engine::restore(cfg.clone(), &snap).unwrap();
        assert_eq!(a, b);
        let mut o2 = BatchOutput::default();
        a.process_batch(&spans, 0, &mut out);
        b.process_batch(&spans, 0, &mut o2);
        assert_eq!(out.verdicts, o2.verdicts);
        // Corrupt or mismatched snapshots are refused with an error.
        assert!(Engine::restore(cfg.clone(), b"garbage").is_err());
        assert!(Engine::restore(cfg.clone(), &snap[..snap.len() / 2]).is_err());
        let other = EngineConfig::from_yaml(
            "sampler: { train_size: 10, window_size: 60, height: 5 }\nkeys: { max_keys: 7 }",
        )
        .unwrap();
        // Each difference is named, with both values; settings that may change do not count.
        match Engine::restore(other, &snap) {
            Err(Error::SnapshotMismatch(m)) => assert_eq!(
                m,
                "the snapshot has sampler.height 8 (the configuration has 5), \
                 sampler.window_size 50 (the configuration has 60), keys.max_keys 10000 (the \
                 configuration has 7)"
            ),
            r => panic!("{:?}", r.map(|_| ())),
        }
        let mut bad = snap.clone();
        bad[8] = 99;
        assert!(Engine::restore(cfg, &bad).is_err());
    }

    /// Issue 14: counted in traces, the budget keeps about `keep_budget` of traces (a trace
    /// with any span kept), not `keep_budget` of spans; counted in spans, a trace of ten spans
    /// has ten chances. Ten operations per trace, each with its own log-normal latency.
    #[test]
    fn the_budget_counted_in_traces_keeps_about_the_budget_of_traces() {
        const OPS: [&str; 10] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let run = |per_trace: bool| {
            let mut e = Engine::new(EngineConfig::default());
            e.count_budget_in_traces(per_trace);
            let mut rng = crate::rng::SplitMix64::new(7);
            let mut out = BatchOutput::default();
            let (mut traces, mut kept_traces, mut spans, mut kept_spans) = (0, 0, 0, 0);
            for t in 0..30_000u64 {
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&(t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
                let batch: Vec<_> = OPS
                    .iter()
                    .enumerate()
                    .map(|(k, op)| {
                        // Box–Muller: log-normal around 2^k ms, sigma 0.3.
                        let (u, v) = (rng.next_f64().max(1e-12), rng.next_f64());
                        let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                        SpanRef {
                            key: SpanKey::Names {
                                service: "svc",
                                operation: op,
                            },
                            timing: Timing::DurationMs(f64::from(1u32 << k) * (0.3 * z).exp()),
                            trace_id: id,
                            span_id: [9; 8],
                        }
                    })
                    .collect();
                e.process_batch(&batch, t * 1_000_000, &mut out);
                if t >= 15_000 {
                    traces += 1;
                    let k = out.verdicts.iter().filter(|v| v.keep).count();
                    kept_spans += k;
                    spans += out.verdicts.len();
                    kept_traces += usize::from(k > 0);
                }
            }
            (
                kept_traces as f64 / traces as f64,
                kept_spans as f64 / spans as f64,
                e.spans_per_trace(),
            )
        };
        let (traces, spans, spt) = run(true);
        // A trace cut by a window's edge counts in both: a little under 10.
        assert!(spt.is_some_and(|s| (s - 10.0).abs() < 0.02), "{spt:?}");
        assert!(traces > 0.005 && traces <= 0.015, "traces kept {traces}");
        assert!(spans <= 0.0015, "spans kept {spans}");
        let (traces, spans, spt) = run(false);
        assert_eq!(spt, None);
        assert!(traces > 0.05, "counted in spans, traces kept {traces}");
        assert!(spans > 0.005 && spans <= 0.015, "spans kept {spans}");
    }

    #[test]
    fn call_names_are_the_rpc_conventions() {
        for (op, call) in [
            (
                "hipstershop.CartService/GetCart",
                Some("CartService/GetCart"),
            ),
            (
                "/hipstershop.CartService/GetCart",
                Some("CartService/GetCart"),
            ),
            (
                "grpc.hipstershop.CartService/GetCart",
                Some("CartService/GetCart"),
            ),
            ("CartService/GetCart", Some("CartService/GetCart")),
            ("GET /api/cart", None),
            ("/api/cart/items", None),
            ("sql.rows", None),
            ("pkg./Get", None),
            ("pkg.Svc/", None),
        ] {
            assert_eq!(call_name(op), call, "{op}");
        }
    }

    /// An engine with one rule per service counting spans of a service in an incident of its
    /// own (20 in 10 s).
    fn own_incident_engine() -> Engine {
        Engine::from_yaml(
            r#"
sampler: { train_size: 2000, window_size: 100 }
rules:
  - name: own-incident
    match: { service: "*" }
    when: { incident: true }
    count: 20
    window: 10s
    action: { kind: horizontal, target: { kind: Deployment, name: "${service}" }, max: 5 }
"#,
        )
        .unwrap()
    }

    /// Issue 11: a service that is slow because a service it calls is slow, or because its
    /// calls into one are delayed on the way (the callee's network), is not in an incident of
    /// its own (rules named after the service decide for the callee only, or for none); one
    /// that is slow itself is, whether or not its calls are slower too.
    #[test]
    fn a_caller_of_a_service_in_an_incident_is_not_in_one_of_its_own() {
        let mut e = own_incident_engine();
        let mut rng = crate::rng::SplitMix64::new(3);
        let mut t = 0u64;
        // Services whose spans the verdicts put in an incident of their own, since last cleared.
        let incident_in = std::cell::RefCell::new(std::collections::BTreeSet::new());
        /// How one request is slowed: back's own work, front's own work (its route alone, or
        /// everything it does, calls included, as under CPU starvation), the way into back.
        #[derive(Clone, Copy)]
        struct Slow {
            back: f64,
            front: f64,
            front_cpu: f64,
            network_ms: f64,
        }
        const ORDINARY: Slow = Slow {
            back: 1.0,
            front: 1.0,
            front_cpu: 1.0,
            network_ms: 0.0,
        };
        // One request: front's own route, its calls to back and to other (client spans), their
        // server spans.
        let mut request = |e: &mut Engine, s: Slow| {
            let mut jitter = || 1.0 + 0.2 * rng.next_f64();
            let back = 10.0 * s.back * jitter();
            let to_back = (back + 2.0 * jitter() + s.network_ms) * s.front_cpu;
            let other = 8.0 * jitter();
            let to_other = (other + 2.0 * jitter()) * s.front_cpu;
            let route = (to_back + to_other + 5.0 * jitter()) * s.front * s.front_cpu;
            let mut decisions = Vec::new();
            for (svc, op, d) in [
                ("back", "/pkg.Back/Get", back),
                ("front", "pkg.Back/Get", to_back),
                ("other", "/pkg.Other/Get", other),
                ("front", "pkg.Other/Get", to_other),
                ("front", "GET /", route),
            ] {
                t += 2_000_000;
                let n = decisions.len();
                let v = e.process_span(&span(svc, op, d), 0, t, &mut decisions);
                // The verdict says what the rule counted (`scale eval --scores` writes it).
                assert!(
                    decisions.len() == n || v.incident,
                    "{svc}: a decision, not counted"
                );
                if v.incident {
                    incident_in.borrow_mut().insert(svc);
                }
            }
            decisions
                .iter()
                .map(|d| d.service.clone().unwrap())
                .collect::<Vec<_>>()
        };
        for _ in 0..5_000 {
            assert!(request(&mut e, ORDINARY).is_empty());
        }
        // 3,000 slowed requests: only `who` are decided for (each of them; no one if empty);
        // then 20,000 ordinary ones.
        let mut phase = |e: &mut Engine, s: Slow, who: &[&str]| {
            incident_in.borrow_mut().clear();
            let decided: Vec<_> = (0..3_000).flat_map(|_| request(e, s)).collect();
            let counted: Vec<_> = incident_in.borrow().iter().copied().collect();
            assert_eq!(counted, who, "{who:?}");
            for w in who {
                assert!(decided.iter().any(|s| s == w), "{w}: {decided:?}");
            }
            assert!(
                decided.iter().all(|s| who.contains(&s.as_str())),
                "{who:?}: {decided:?}"
            );
            for _ in 0..20_000 {
                request(e, ORDINARY);
            }
        };
        let back_slow = Slow {
            back: 10.0,
            ..ORDINARY
        };
        // Back is slow: front's spans are slower too, but only back is decided for.
        phase(&mut e, back_slow, &["back"]);
        // Front is slow itself (its own work; then everything it does): decided for.
        phase(
            &mut e,
            Slow {
                front: 10.0,
                ..ORDINARY
            },
            &["front"],
        );
        phase(
            &mut e,
            Slow {
                front_cpu: 3.0,
                ..ORDINARY
            },
            &["front"],
        );
        // Both starved (on one node): back's work takes half as long again, front's everything
        // three times as long. Back's incident does not explain front's: its calls into back
        // take some 40 ms more, of which back's side is 5 ms. Both are decided for.
        phase(
            &mut e,
            Slow {
                back: 1.5,
                front_cpu: 3.0,
                ..ORDINARY
            },
            &["back", "front"],
        );
        // The calls into back are delayed on the way: front's route and its calls into back are
        // slower, back and front's other calls are not. Scaling front would not help: no one.
        phase(
            &mut e,
            Slow {
                network_ms: 100.0,
                ..ORDINARY
            },
            &[],
        );
        // A snapshot restores the calls (they are not saved but rebuilt from the keys).
        let mut r = Engine::restore(e.config().clone(), &e.snapshot()).unwrap();
        phase(&mut r, back_slow, &["back"]);
    }

    /// Issue 11: a service is judged on its own work (its server and internal spans), not on
    /// the calls it makes. A service that makes many calls per request and is slow in what it
    /// does itself, its calls not slower, is in an incident: among all its spans, most of them
    /// its ordinary client spans, it would not be (frontend under `cpu_consumed` in nezha-ob).
    #[test]
    fn a_service_is_judged_on_its_own_work_not_its_calls() {
        let mut e = own_incident_engine();
        let mut rng = crate::rng::SplitMix64::new(5);
        let mut t = 0u64;
        // One request: web's route makes ten calls into api (client spans and api's server
        // spans); web's own work (the route beyond its calls) takes `own` times as long.
        let mut request = |e: &mut Engine, own: f64| {
            let mut jitter = || 1.0 + 0.2 * rng.next_f64();
            let mut decisions = Vec::new();
            let mut calls = 0.0;
            for _ in 0..10 {
                let api = 4.0 * jitter();
                let to_api = api + jitter();
                calls += to_api;
                for (svc, op, d) in [("api", "/pkg.Api/Get", api), ("web", "pkg.Api/Get", to_api)] {
                    t += 1_000_000;
                    e.process_span(&span(svc, op, d), 0, t, &mut decisions);
                }
            }
            t += 1_000_000;
            let route = calls + 20.0 * own * jitter();
            e.process_span(&span("web", "GET /", route), 0, t, &mut decisions);
            decisions
                .iter()
                .map(|d| d.service.clone().unwrap())
                .collect::<Vec<_>>()
        };
        for _ in 0..3_000 {
            assert!(request(&mut e, 1.0).is_empty());
        }
        let decided: Vec<_> = (0..1_000).flat_map(|_| request(&mut e, 2.0)).collect();
        assert!(decided.iter().any(|s| s == "web"), "{decided:?}");
        assert!(decided.iter().all(|s| s == "web"), "{decided:?}");
    }

    #[test]
    fn onset_constants_are_their_formulas() {
        let close = |c: f32, f: f64| (f64::from(c) - f).abs() < 1e-5;
        assert!(close(Onset::RISE, (ONSET_RARE_SHARE / RARE_TAIL).ln()));
        assert!(close(
            Onset::FALL,
            ((1.0 - RARE_TAIL) / (1.0 - ONSET_RARE_SHARE)).ln()
        ));
        assert!(close(Onset::LEVEL, (1.0 / ONSET_FALSE_ALARM).ln()));
        // Three rare spans in a row are an onset; two are not.
        const { assert!(3.0 * Onset::RISE >= Onset::LEVEL && 2.0 * Onset::RISE < Onset::LEVEL) };
    }

    /// Issue 14: counted in traces, the first spans of a fault, which alone score like the
    /// slowest ordinary spans, are marked once a few more show its onset in the same batch; a
    /// trace through the fault is then kept from the fault's first span on.
    #[test]
    fn the_onset_of_a_fault_is_marked_from_its_first_span_in_the_batch() {
        const OPS: [&str; 10] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let mut e = Engine::new(EngineConfig::default());
        e.count_budget_in_traces(true);
        let mut rng = crate::rng::SplitMix64::new(11);
        // Trace `t`: ten operations, log-normal around 2^k ms; with `slow` above 1, operation
        // "c" takes `slow` times its median.
        let mut trace = |t: u64, slow: f64| -> Vec<SpanRef<'static>> {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&(t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            OPS.iter()
                .enumerate()
                .map(|(k, op)| {
                    let (u, v) = (rng.next_f64().max(1e-12), rng.next_f64());
                    let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                    let d = f64::from(1u32 << k) * (0.3 * z).exp();
                    SpanRef {
                        key: SpanKey::Names {
                            service: "svc",
                            operation: op,
                        },
                        timing: Timing::DurationMs(if *op == "c" && slow > 1.0 {
                            4.0 * slow
                        } else {
                            d
                        }),
                        trace_id: id,
                        span_id: [9; 8],
                    }
                })
                .collect()
        };
        let mut out = BatchOutput::default();
        let mut t = 0;
        for _ in 0..200 {
            // Batches of 100 traces of ordinary traffic.
            let batch: Vec<_> = (0..100)
                .flat_map(|_| {
                    t += 1;
                    trace(t, 1.0)
                })
                .collect();
            e.process_batch(&batch, t * 1_000_000, &mut out);
        }
        // A batch in which "c" takes 2.2 times its median (2.6 σ of its log-normal: rare, under
        // RARE_TAIL, but not among the slowest ordinary spans of all keys) from its fifth trace
        // on, given span by span.
        let batch: Vec<_> = (0..20)
            .flat_map(|i| {
                t += 1;
                trace(t, if i >= 4 { 2.2 } else { 1.0 })
            })
            .collect();
        let mut decisions = Vec::new();
        let verdicts: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, s)| e.process_span(s, i as u32, t * 1_000_000, &mut decisions))
            .collect();
        let mut late = Vec::new();
        e.late_marks(&mut late);
        e.finish_batch(&mut decisions);
        let first = 4 * OPS.len() + 2; // the first slow span
        assert!(
            !verdicts[first].keep,
            "the first slow span alone is not marked"
        );
        assert!(
            late.contains(&(first as u32)),
            "but it is at the batch's end: {late:?}"
        );
        for (i, v) in verdicts.iter().enumerate() {
            let slow = i >= 4 * OPS.len() && i % OPS.len() == 2;
            let marked = v.keep || late.contains(&(i as u32));
            assert_eq!(
                marked,
                slow,
                "span {i} ({}), late {late:?}",
                OPS[i % OPS.len()]
            );
        }
        // The next batch goes on with the fault: marked as the spans come.
        let batch: Vec<_> = (0..5)
            .flat_map(|_| {
                t += 1;
                trace(t, 2.2)
            })
            .collect();
        e.process_batch(&batch, t * 1_000_000, &mut out);
        for (i, v) in out.verdicts.iter().enumerate() {
            assert_eq!(v.keep, i % OPS.len() == 2, "span {i}");
        }
    }

    /// Feed `n` spans of `key` with durations around `base` ms; the explanations of each span.
    fn feed(e: &mut Engine, key: SpanKey<'_>, base: f64, n: usize) -> Vec<Explain> {
        let mut out = Vec::new();
        (0..n)
            .map(|i| {
                let s = SpanRef {
                    key,
                    timing: Timing::DurationMs(base * (1.0 + (i % 13) as f64 * 0.05)),
                    trace_id: [7; 16],
                    span_id: [9; 8],
                };
                let v = e.process_span(&s, i as u32, i as u64 * 1_000_000, &mut out);
                assert_eq!(v.skipped, None);
                *e.last_explain()
            })
            .collect()
    }

    /// Issue 12: the overflow key is one more key. With `max_keys: 2000000`, an engine that has
    /// seen 10 keys and then spans of the overflow key (as the C ABI and the collector give them,
    /// `SpanKey::Id(OVERFLOW)`) holds per-key state for 11 keys, not for `max_keys + 1`; and the
    /// overflow key's spans are judged against its own baseline once it has `min_key_count`
    /// spans, which survives a snapshot.
    #[test]
    fn overflow_key_baseline_is_learned_read_and_bounded() {
        let cfg = EngineConfig::from_yaml("keys: { max_keys: 2000000 }").unwrap();
        let min = cfg.keyed.min_key_count as usize;
        let mut e = Engine::new(cfg.clone());
        let names: Vec<String> = (0..10).map(|k| format!("op-{k}")).collect();
        for (k, op) in names.iter().enumerate() {
            let key = SpanKey::Names {
                service: "svc",
                operation: op,
            };
            feed(&mut e, key, 1.0 + k as f64, 50);
        }
        let (mem_keys, snap_keys) = (e.memory_bytes(), e.snapshot().len());

        let looks = feed(&mut e, SpanKey::Id(OVERFLOW), 40.0, 2000);
        for (i, x) in looks.iter().enumerate() {
            let present = x.features.iter().all(|f| f.is_finite());
            assert_eq!(
                (x.established, present),
                (i >= min, i >= min),
                "overflow span {i}: {x:?}"
            );
        }
        // Judged against its own baseline: a span 100 times slower than the overflow key's
        // usual is maximally surprising, one at its usual duration is not.
        feed(&mut e, SpanKey::Id(OVERFLOW), 4000.0, 1);
        assert_eq!(e.last_explain().features[0], 1.0);
        feed(&mut e, SpanKey::Id(OVERFLOW), 40.0, 1);
        assert_eq!(e.last_explain().features[0], 0.0);

        let (mem, snap) = (e.memory_bytes(), e.snapshot());
        eprintln!(
            "max_keys 2000000: 10 keys: {mem_keys} B in memory, snapshot {snap_keys} B; \
             + 2002 overflow spans: {mem} B, snapshot {} B",
            snap.len()
        );
        assert!(mem < 1 << 20, "memory {mem} B");
        assert!(snap.len() < 1 << 20, "snapshot {} B", snap.len());
        // The overflow key costs one key's state, whatever max_keys is.
        let one_key = std::mem::size_of::<crate::latency::KeyModel>();
        assert!(mem <= mem_keys + 2 * one_key, "{mem_keys} B -> {mem} B");
        assert!(
            snap.len() <= snap_keys + one_key,
            "{snap_keys} B -> {} B",
            snap.len()
        );

        // The overflow key's baseline is part of the snapshot.
        let mut r = Engine::restore(cfg, &snap).unwrap();
        assert_eq!(r, e);
        let after = feed(&mut r, SpanKey::Id(OVERFLOW), 4000.0, 1);
        assert_eq!(after, feed(&mut e, SpanKey::Id(OVERFLOW), 4000.0, 1));
        assert!(after[0].established && after[0].features[0] > 0.0);
    }

    /// Names past `max_keys` share the overflow key's baseline: counted, learned and judged.
    #[test]
    fn names_past_max_keys_share_the_overflow_baseline() {
        let cfg = EngineConfig::from_yaml("keys: { max_keys: 10 }").unwrap();
        let min = cfg.keyed.min_key_count as usize;
        let mut e = Engine::new(cfg);
        let names: Vec<String> = (0..1010).map(|k| format!("op-{k}")).collect();
        let mut out = Vec::new();
        let mut looks = Vec::new();
        for (k, op) in names.iter().enumerate() {
            let s = SpanRef {
                key: SpanKey::Names {
                    service: "svc",
                    operation: op,
                },
                timing: Timing::DurationMs(20.0 + (k % 7) as f64),
                trace_id: [7; 16],
                span_id: [9; 8],
            };
            e.process_span(&s, 0, k as u64 * 1_000_000, &mut out);
            looks.push(*e.last_explain());
        }
        let st = e.stats();
        assert_eq!((st.keys, st.keys_overflow), (10, 1000));
        // Each of the first 10 names is its own key, seen once: not established.
        assert!(looks[..10].iter().all(|x| !x.established));
        // The 1000 others are one key: established after min_key_count of them.
        for (i, x) in looks[10..].iter().enumerate() {
            let present = x.features.iter().all(|f| f.is_finite());
            assert_eq!((x.established, present), (i >= min, i >= min), "{i}: {x:?}");
        }
    }

    #[test]
    fn rule_fires_on_every_span_not_only_kept() {
        let cfg = EngineConfig::from_yaml(
            "sampler: { train_size: 1000000 }\nrules:\n- name: slow\n  match: { service: s, operation: \"o*\" }\n  when: { duration_above: 100ms }\n  count: 3\n  window: 10s\n  action: { kind: horizontal, target: { kind: Deployment, name: s }, max: 3 }\n",
        )
        .unwrap();
        let mut e = Engine::new(cfg);
        let mut out = BatchOutput::default();
        e.process_batch(
            &[
                span("s", "op", 200.0),
                span("s", "op", 200.0),
                span("t", "op", 200.0),
                span("s", "op", 300.0),
            ],
            1,
            &mut out,
        );
        assert!(out.verdicts.iter().all(|v| !v.keep), "still training");
        assert_eq!(out.decisions.len(), 1);
        let d = &out.decisions[0];
        assert_eq!(
            (d.rule.as_str(), d.span_index, d.observed_ms, d.trace_id),
            ("slow", 3, 300.0, [7; 16])
        );
        assert_eq!(e.stats().decisions, 1);
    }
}
