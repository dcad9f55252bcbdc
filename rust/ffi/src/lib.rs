//! `scale-ffi`: the C ABI of the SCALE engine, built as `libscale.a` / `libscale.so` with the
//! header `include/scale.h` generated from this crate by safer-ffi. The Go collector component
//! (and the C smoke test, `tests/c/smoke.c`) reach [`scale_core`] only through it.
//!
//! # API conventions
//!
//! * **Ownership.** The only object is the opaque `scale_engine`: `scale_engine_new` /
//!   `scale_engine_restore*` create it, the caller owns it and frees it once with
//!   `scale_engine_free` (which accepts NULL). Everything else is caller-allocated plain data.
//! * **Pointers.** `const T *` is read-only, `T *` is written (or, for the handle, mutated).
//!   Inputs come before outputs; every buffer is followed by its `size_t` length (or shares the
//!   batch's `n`). `(NULL, 0)` is an empty buffer; NULL with a non-zero length is
//!   `SCALE_STATUS_NULL_ARGUMENT`. Arrays must be aligned for their element type and must not
//!   overlap each other.
//! * **Batches** (`scale_engine_process*`) take their arrays in two structs passed by pointer:
//!   `const scale_span_batch_t *` (the inputs and their `n`; for names, also
//!   `const scale_span_names_t *`) and `scale_batch_out_t *` (the output arrays and the
//!   decisions' capacity, read; `decisions_len`, written). One function turns them into
//!   slices, with the checks above.
//! * **Outputs are written only on success** (`SCALE_STATUS_OK`), with three documented
//!   exceptions: `SCALE_STATUS_DECISIONS_TRUNCATED` (per-span outputs complete, decisions
//!   truncated, the total in `out->decisions_len`), `SCALE_STATUS_BUFFER_TOO_SMALL` (the size
//!   needed in `*len`), and the error message of constructors and file functions.
//! * **Caller memory is never kept**: inputs are read (and copied if needed) during the call.
//! * **Errors** are `scale_status` codes (1000 and up, never renumbered; `scale_status_str`
//!   gives static text). Constructors and file functions also write a message into
//!   `(char *msg, size_t msg_cap, size_t *msg_len)`: UTF-8, no NUL, truncated on a character
//!   boundary. There is no thread-local "last error".
//! * **Panics** never cross the boundary: they become `SCALE_STATUS_PANIC` and poison the
//!   handle (later calls: `SCALE_STATUS_POISONED`). The library must be built with
//!   `panic = "unwind"` (the workspace profile does so).
//! * **Threads**: every function may be called from any thread; a handle is safe for
//!   concurrent calls except `scale_engine_free`. A batch given in chunks
//!   (`scale_engine_process_chunk`) is a sequence of calls that the caller must not interleave
//!   with another chunked batch on the same handle.
//!
//! # Locking
//!
//! One `parking_lot::Mutex` per handle: a handle is one engine (one model, one set of rule
//! windows), and concurrent calls on it take turns, each batch processed atomically. Calls on
//! different handles never wait on each other.
//!
//! **Sharding was measured and not adopted (yet).** `benches/abi.rs` (`locking_2_threads`) has
//! two threads each scoring batches of 1,024 spans of its own service (2 cores, shared machine,
//! x86-64; throughput in Mspans/s, higher is better):
//!
//! | setup | engine calls only | + equal caller work per batch |
//! | --- | ---: | ---: |
//! | one handle, one thread | 5.68 | 2.75 |
//! | one handle, two threads (what ships) | 4.80 | 3.17 |
//! | two handles, two threads (sharding's upper bound) | 9.15 | 5.40 |
//!
//! So sharding by service would measurably help (1.7–1.9× with two threads), but sharding the
//! handle into N independent `scale_core::Engine`s also changes what the engine computes:
//! per-shard models (each forest warms up and trains on a fraction of the traffic) and, worse,
//! per-shard rule windows: a rule whose `match` spans services on different shards would count
//! `Count(D > T, W) ≥ N` per shard and fire late or never, and conflation of decisions for one
//! target would split. For an autoscaler that is a silent correctness change, so the handle
//! keeps one lock. The speed-up can be had without it once scale-core separates scoring (per
//! key, shardable) from the rule step (cheap, global); until then a caller that needs parallel
//! scoring can create one handle per service group, with rules partitioned the same way, and
//! owns that semantic choice explicitly.
//!
//! The ABI's own cost (`abi_per_span`, same machine; ns per span): batch 1: 172 direct vs 215
//! through the C symbol (+25 %: a fixed ~43 ns per call for the boundary, lock and checks);
//! batch 64: 156.8 vs 164.9 (+5.2 %); batch 1,024: 161.2 vs 162.6 (+0.9 %). Call it per batch
//! or per chunk of tens of spans (`scale_engine_process_chunk`, as the Go collector does: 32
//! spans per call, so no cgo call outlasts the Go scheduler's 20 µs), not per span.
//!
//! # Example: one batch from Rust through the C functions
//!
//! ```
//! use std::ptr::{null, null_mut};
//! use scale::*;
//!
//! let yaml = b"sampler: { window_size: 50, train_size: 100 }";
//! let mut engine = null_mut();
//! unsafe {
//!     let st = scale_engine_new(yaml.as_ptr(), yaml.len(), &mut engine, null_mut(), 0, null_mut());
//!     assert_eq!(st, scale_status::Ok);
//!     let mut key = 0;
//!     let (svc, op) = (b"checkout", b"PlaceOrder");
//!     scale_engine_intern(engine, svc.as_ptr(), svc.len(), op.as_ptr(), op.len(), &mut key);
//!     let t0 = 1_700_000_000_000_000_000u64;
//!     let n = 200;
//!     let keys = vec![key; n];
//!     let start: Vec<u64> = (0..n as u64).map(|i| t0 + i * 1_000_000).collect();
//!     let end: Vec<u64> = start.iter().map(|s| s + 20_000_000).collect();
//!     let batch = scale_span_batch {
//!         now_ns: t0, n, key_ids: keys.as_ptr(), start_ns: start.as_ptr(), end_ns: end.as_ptr(),
//!         trace_ids: null(), span_ids: null(),
//!     };
//!     let (mut scores, mut keep, mut skip) = (vec![0.0; n], vec![0u8; n], vec![scale_skip::None; n]);
//!     let mut out = scale_batch_out {
//!         scores: scores.as_mut_ptr(), keep: keep.as_mut_ptr(), skip: skip.as_mut_ptr(),
//!         decisions: null_mut(), decisions_cap: 0, decisions_len: 0,
//!         late_keep: null_mut(), late_keep_cap: 0, late_keep_len: 0,
//!     };
//!     let st = scale_engine_process(engine, &batch, &mut out);
//!     assert_eq!(st, scale_status::Ok);
//!     assert!(scores[n - 1] >= 0.0, "warm after 50 spans");
//!     scale_engine_free(engine);
//! }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_camel_case_types)]
// Exports take raw pointers by design; their safety contract is in each doc comment.
#![allow(clippy::missing_safety_doc, clippy::too_many_arguments)]

mod batch;
mod decision;
mod engine;
mod ffi;
mod panic;
mod report;
mod skip;
mod stats;
mod status;
mod version;

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "headers"))]
pub mod header;

pub use batch::{scale_batch_out, scale_span_batch, scale_span_names};
pub use decision::{scale_action, scale_decision};
pub use engine::*;
pub use report::scale_rule_report;
pub use skip::scale_skip;
pub use stats::scale_stats;
pub use status::{scale_status, scale_status_str};
pub use version::{SCALE_VERSION_MAJOR, SCALE_VERSION_MINOR, SCALE_VERSION_PATCH, scale_version};
