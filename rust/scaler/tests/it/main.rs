//! The daemon's and the CLI's integration tests, one test binary (linking the workspace's
//! dependencies once instead of once a file). Each module is one concern:
//!
//! * [`cli`]: the `scale` binary's `eval` and `check`, on generated and recorded spans;
//! * [`contract`]: the ocb-built collector → daemon contract, end to end;
//! * [`evidence`]: silence is not calm: the collector's evidence reports, a killed collector,
//!   and the daemon holding its replicas;
//! * [`helm`]: the Helm chart's renderings applied to a real API server;
//! * [`k8s`]: `scale serve` against a real kube-apiserver + etcd;
//! * [`serve`]: `scale serve` in-process: the OTLP endpoint's authentication, local-engine mode;
//! * [`train`]: `scale train` from a real Jaeger v2 into a ConfigMap;
//!
//! and [`harness`], what they share (the cluster, the daemon as a process, the collector, Jaeger).

mod harness;

mod cli;
mod contract;
mod evidence;
mod helm;
mod k8s;
mod serve;
mod train;
