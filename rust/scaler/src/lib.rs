//! The `scale` binary's library: everything behind the command line, public so integration
//! tests and benchmarks drive the same code.
//!
//! * [`eval`]: run the engine over recorded spans and report detection metrics;
//! * [`check`]: validate engine and rules configurations;
//! * [`serve`]: the daemon (OTLP intake, planner, orchestrators, leader election, metrics);
//! * [`train`]: learn spans from Jaeger or files into an engine snapshot (warm collectors).

pub mod check;
pub mod eval;
pub mod serve;
pub mod train;
