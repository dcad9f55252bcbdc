//! KEDA's external scaler (`externalscaler.proto`, vendored in `proto/keda/`), served by
//! `scale serve --keda-listen`: a workload that a KEDA ScaledObject owns uses SCALE's rules as
//! its trigger, instead of the daemon scaling it (which it refuses for a workload another
//! controller owns).
//!
//! A ScaledObject's `external` trigger names a rule of the daemon's rules file in its metadata
//! ([`META_RULE`]; [`META_SERVICE`] for a rule whose target is named after the service) and
//! what to measure ([`META_METRIC`]). The answers come from the same evidence a scale-down
//! needs: the collectors' `scale.report` spans ([`super::evidence`]), merged over collectors.
//!
//! - **`IsActive`** (and **`StreamIsActive`**, which sends each change, checked every `tick`):
//!   true while the rule was firing — its breaches, summed over collectors, reached `count`
//!   within one `window` — at some point of the last `scale_down_after` (the rule's quiet
//!   period); false once reports cover a whole quiet period without that. So it turns true
//!   within one window (plus one report interval) of a fault and false a quiet period after it.
//! - **`GetMetricSpec`** / **`GetMetrics`**: `breaches` (the default), the rule's breaches in
//!   the last `window` with the rule's `count` as the target; or `p90`, the worst 90th
//!   percentile latency reported in the last window (ms) with the rule's `duration_above` as
//!   the target (rules without one are refused).
//!
//! An autoscaler acts on evidence: when reports are missing (no collector alive, the link
//! down, the daemon just started) or do not yet reach back a window (metrics) or a quiet
//! period (a "false" from `IsActive`), the answer is `UNAVAILABLE`, with the reason, never a
//! made-up number. KEDA then keeps the workload where it is (or uses the ScaledObject's
//! `fallback`). A rule whose target is not in the ScaledObject's namespace is refused
//! (`FAILED_PRECONDITION`), so one namespace's ScaledObject cannot be driven by, or read, the
//! evidence of another's workload.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scale_core::{Rule, Target};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::evidence::{EvidenceStore, Series};
use super::metrics::Metrics;

/// The generated protocol (server and client).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("externalscaler");
}

use pb::external_scaler_server::{ExternalScaler, ExternalScalerServer};

/// Trigger metadata: the rule (by name) whose evidence drives the trigger. Required.
pub const META_RULE: &str = "rule";
/// Trigger metadata: for a rule whose target is named after the service (`${service}`), the
/// service.
pub const META_SERVICE: &str = "service";
/// Trigger metadata: the metric, [`Metric::Breaches`] (default) or [`Metric::P90`].
pub const META_METRIC: &str = "metric";

/// What `GetMetrics` reports for a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// The rule's breaches in its last window, summed over collectors; target: `count`.
    Breaches,
    /// The worst p90 latency reported in the last window, ms; target: `duration_above`.
    P90,
}

impl Metric {
    /// Its name in trigger metadata and in the metric's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Breaches => "breaches",
            Metric::P90 => "p90",
        }
    }
}

/// A trigger resolved against the daemon's rules.
#[derive(Debug, Clone)]
struct Trigger {
    rule_index: usize,
    target: Target,
    metric: Metric,
    /// The metric's name: `scale-<rule>[-<service>]-<metric>`.
    name: String,
}

/// Why a trigger's answer is not available now (`UNAVAILABLE`).
fn unavailable(t: &Trigger, rule: &Rule, why: String) -> Status {
    Status::unavailable(format!(
        "rule {} for {}: {why}; missing input is no reason to act",
        rule.name, t.target
    ))
}

/// The external scaler: reads the evidence store the intake fills.
#[derive(Clone)]
pub struct KedaScaler {
    rules: Arc<Vec<Rule>>,
    store: Arc<EvidenceStore>,
    metrics: Arc<Metrics>,
    tick: Duration,
    shutdown: CancellationToken,
}

impl KedaScaler {
    /// A scaler over `store` for `rules` (the daemon's); `StreamIsActive` checks every `tick`
    /// and ends its streams at `shutdown`.
    pub fn new(
        rules: Arc<Vec<Rule>>,
        store: Arc<EvidenceStore>,
        metrics: Arc<Metrics>,
        tick: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            rules,
            store,
            metrics,
            tick,
            shutdown,
        }
    }

    /// The gRPC service.
    pub fn into_service(self) -> ExternalScalerServer<Self> {
        ExternalScalerServer::new(self)
    }

    fn resolve(&self, r: &pb::ScaledObjectRef) -> Result<Trigger, Status> {
        let meta = &r.scaler_metadata;
        let name = meta.get(META_RULE).ok_or_else(|| {
            Status::invalid_argument(format!(
                "the trigger's metadata has no {META_RULE:?}: name one of the daemon's rules"
            ))
        })?;
        let (rule_index, rule) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, x)| &x.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.rules.iter().map(|x| x.name.as_str()).collect();
                Status::not_found(format!(
                    "no rule named {name:?} in the daemon's rules (it has: {})",
                    known.join(", ")
                ))
            })?;
        let target = rule
            .resolve_target(meta.get(META_SERVICE).map(String::as_str))
            .map_err(|e| {
                Status::invalid_argument(format!("rule {name}: {e} (metadata {META_SERVICE:?})"))
            })?;
        if target.namespace != r.namespace {
            return Err(Status::failed_precondition(format!(
                "rule {name} scales {target}, which is not in the ScaledObject's namespace {:?}",
                r.namespace
            )));
        }
        let metric = match meta.get(META_METRIC).map(String::as_str) {
            None | Some("breaches") => Metric::Breaches,
            Some("p90") if rule.duration_above_ms.is_some() => Metric::P90,
            Some("p90") => {
                return Err(Status::invalid_argument(format!(
                    "rule {name} has no duration_above to be the p90 metric's target; use \
                     metric: breaches"
                )));
            }
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "metadata {META_METRIC:?}: {other:?} is not a metric (breaches or p90)"
                )));
            }
        };
        let service = meta
            .get(META_SERVICE)
            .filter(|_| rule.per_service())
            .map(|s| format!("-{s}"))
            .unwrap_or_default();
        let name = sanitize(&format!("scale-{name}{service}-{}", metric.as_str()));
        Ok(Trigger {
            rule_index,
            target,
            metric,
            name,
        })
    }

    fn rule(&self, t: &Trigger) -> &Rule {
        &self.rules[t.rule_index]
    }

    /// `IsActive` at `now`.
    fn is_active(&self, t: &Trigger, now: Instant) -> Result<bool, Status> {
        let rule = self.rule(t);
        let window = ms(rule.window_ms);
        let quiet = ms(rule.action.scale_down_after_ms);
        let s = self
            .store
            .series(&t.target, t.rule_index, quiet + window, now);
        self.check_alive(t, &s)?;
        if fired_within(&s, rule, window, quiet, now) {
            return Ok(true);
        }
        if s.covered >= quiet {
            return Ok(false);
        }
        Err(unavailable(
            t,
            rule,
            format!(
                "reports reach back {} s, not yet a quiet period ({} s) without the rule firing",
                s.covered.as_secs(),
                quiet.as_secs()
            ),
        ))
    }

    /// `GetMetrics` at `now`: the metric's value.
    fn value(&self, t: &Trigger, now: Instant) -> Result<f64, Status> {
        let rule = self.rule(t);
        let window = ms(rule.window_ms);
        let s = self.store.series(&t.target, t.rule_index, window, now);
        self.check_alive(t, &s)?;
        if s.covered < window {
            return Err(unavailable(
                t,
                rule,
                format!(
                    "reports reach back {} s, not yet a window ({} s)",
                    s.covered.as_secs(),
                    window.as_secs()
                ),
            ));
        }
        if s.points.iter().all(|p| p.matched == 0) {
            return Err(unavailable(
                t,
                rule,
                "the collectors report no spans for the rule in the last window".into(),
            ));
        }
        Ok(match t.metric {
            Metric::Breaches => s.points.iter().map(|p| p.breaches).sum::<u64>() as f64,
            Metric::P90 => s.points.iter().filter_map(|p| p.p90_ms).fold(0.0, f64::max),
        })
    }

    fn check_alive(&self, t: &Trigger, s: &Series) -> Result<(), Status> {
        let rule = self.rule(t);
        match s.since_last {
            None => Err(unavailable(
                t,
                rule,
                "no evidence report from any collector yet".into(),
            )),
            Some(d) if d > self.store.timeout() => Err(unavailable(
                t,
                rule,
                format!("no evidence report for {} s", d.as_secs()),
            )),
            Some(_) => Ok(()),
        }
    }

    fn count(&self, method: &'static str, r: &Result<impl Sized, Status>) {
        let code = match r {
            Ok(_) => "ok",
            Err(s) => match s.code() {
                tonic::Code::Unavailable => "unavailable",
                tonic::Code::NotFound => "not_found",
                tonic::Code::FailedPrecondition => "failed_precondition",
                _ => "invalid_argument",
            },
        };
        self.metrics.keda_request(method, code);
    }
}

/// Whether, at some report received in the last `quiet` before `now`, the rule's breaches in
/// the `window` up to it reached `count`.
fn fired_within(s: &Series, rule: &Rule, window: Duration, quiet: Duration, now: Instant) -> bool {
    let from = now.checked_sub(quiet);
    let p = &s.points;
    let (mut lo, mut sum) = (0, 0u64);
    for hi in 0..p.len() {
        sum += p[hi].breaches;
        while p[hi].at.saturating_duration_since(p[lo].at) >= window {
            sum -= p[lo].breaches;
            lo += 1;
        }
        if from.is_none_or(|f| p[hi].at > f) && sum >= u64::from(rule.count) {
            return true;
        }
    }
    false
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0) / 1e3)
}

/// A metric name KEDA and the HPA accept: lower case letters, digits and `-`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

type ActiveStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::IsActiveResponse, Status>> + Send>>;
type SpecStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::GetMetricSpecResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for KedaScaler {
    async fn is_active(
        &self,
        request: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<pb::IsActiveResponse>, Status> {
        let r = self
            .resolve(request.get_ref())
            .and_then(|t| self.is_active(&t, Instant::now()));
        self.count("IsActive", &r);
        Ok(Response::new(pb::IsActiveResponse { result: r? }))
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let t = self.resolve(request.get_ref());
        self.count("StreamIsActive", &t);
        let t = t?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let me = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(me.tick);
            let mut last = None;
            loop {
                tokio::select! {
                    _ = me.shutdown.cancelled() => break,
                    _ = tx.closed() => break,
                    _ = ticker.tick() => {}
                }
                match me.is_active(&t, Instant::now()) {
                    // Each change (the first answer included); no answer while the evidence
                    // is missing.
                    Ok(v) if last != Some(v) => {
                        last = Some(v);
                        if tx
                            .send(Ok(pb::IsActiveResponse { result: v }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(metric = %t.name, "StreamIsActive: {}", e.message()),
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_metric_spec(
        &self,
        request: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<pb::GetMetricSpecResponse>, Status> {
        let r = self.resolve(request.get_ref()).map(|t| {
            let rule = self.rule(&t);
            let target = match t.metric {
                Metric::Breaches => f64::from(rule.count),
                Metric::P90 => rule.duration_above_ms.unwrap_or_default(),
            };
            pb::GetMetricSpecResponse {
                metric_specs: vec![pb::MetricSpec {
                    metric_name: t.name,
                    target_size: target.ceil() as i64,
                    target_size_float: target,
                }],
            }
        });
        self.count("GetMetricSpec", &r);
        Ok(Response::new(r?))
    }

    type StreamMetricSpecStream = SpecStream;

    async fn stream_metric_spec(
        &self,
        _request: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        // Optional in the protocol: the spec only changes with the rules file, which needs a
        // restart; KEDA falls back to GetMetricSpec.
        Err(Status::unimplemented(
            "metric specs change only with the rules file; use GetMetricSpec",
        ))
    }

    async fn get_metrics(
        &self,
        request: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let req = request.get_ref();
        let r = req
            .scaled_object_ref
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("no scaledObjectRef"))
            .and_then(|so| self.resolve(so))
            .and_then(|t| {
                let v = self.value(&t, Instant::now())?;
                Ok(pb::GetMetricsResponse {
                    metric_values: vec![pb::MetricValue {
                        metric_name: t.name,
                        metric_value: v.round() as i64,
                        metric_value_float: v,
                    }],
                })
            });
        self.count("GetMetrics", &r);
        Ok(Response::new(r?))
    }
}

/// Serve the external scaler on `listener` until `shutdown` (TLS as the OTLP endpoint's).
pub async fn serve_keda(
    listener: tokio::net::TcpListener,
    scaler: KedaScaler,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(scaler.into_service())
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::evidence::Point;

    fn rule() -> Rule {
        scale_core::RulesFile::from_yaml(
            "rules:\n- name: r\n  when: { duration_above: 100ms }\n  count: 5\n  window: 30s\n  action: { kind: horizontal, target: { kind: Deployment, namespace: shop, name: a }, max: 4, scale_down_after: 2m }\n",
        )
        .unwrap()
        .rules
        .remove(0)
    }

    fn series(t0: Instant, points: &[(u64, u64)]) -> Series {
        Series {
            since_last: Some(Duration::ZERO),
            covered: Duration::from_secs(600),
            points: points
                .iter()
                .map(|&(s, b)| Point {
                    at: t0 + Duration::from_secs(s),
                    matched: 100,
                    breaches: b,
                    p90_ms: None,
                })
                .collect(),
        }
    }

    #[test]
    fn firing_needs_count_breaches_within_one_window_inside_the_quiet_period() {
        let r = rule();
        let (w, q) = (Duration::from_secs(30), Duration::from_secs(120));
        let t0 = Instant::now();
        // 2 + 2 + 1 breaches in reports 10 s apart: 5 within 30 s.
        let s = series(t0, &[(10, 2), (20, 2), (30, 1)]);
        assert!(fired_within(&s, &r, w, q, t0 + Duration::from_secs(30)));
        // The same 5, spread over 40 s: never 5 within one window.
        let s = series(t0, &[(10, 2), (30, 2), (50, 1)]);
        assert!(!fired_within(&s, &r, w, q, t0 + Duration::from_secs(50)));
        // Fired at 30 s: still active at 149 s, not at 151 s (quiet period 2 min).
        let s = series(t0, &[(10, 2), (20, 2), (30, 1), (140, 0)]);
        assert!(fired_within(&s, &r, w, q, t0 + Duration::from_secs(149)));
        assert!(!fired_within(&s, &r, w, q, t0 + Duration::from_secs(151)));
    }

    #[test]
    fn metric_names_are_what_the_hpa_accepts() {
        assert_eq!(
            sanitize("scale-Checkout_latency-cart.v2-breaches"),
            "scale-checkout-latency-cart-v2-breaches"
        );
    }
}
