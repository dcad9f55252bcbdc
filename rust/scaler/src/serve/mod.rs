//! `scale serve`, the daemon that turns decisions into scaling. Built up in steps: the pure
//! [`planner`] comes first; the OTLP intake and the Kubernetes orchestrator follow.

pub mod planner;
