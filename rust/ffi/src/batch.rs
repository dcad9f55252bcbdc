//! `scale_span_batch`, `scale_span_names` and `scale_batch_out`: the arguments of the hot calls
//! (`scale_engine_process`, `scale_engine_process_names`, `scale_engine_process_chunk`), one
//! struct of input arrays and one of output arrays instead of a long list of positional
//! arguments. `engine::batch` turns them into slices (the only place that does).

use safer_ffi::prelude::*;

use crate::decision::scale_decision;
use crate::skip::scale_skip;

/// The spans of one batch (or of one chunk of a batch), as flat arrays: the input of
/// `scale_engine_process`, `scale_engine_process_names` and `scale_engine_process_chunk`.
///
/// Plain data owned by the caller, read during the call only (never kept). Every array has `n`
/// elements unless stated; `(NULL, 0)` is an empty array and NULL with `n > 0` is
/// `SCALE_STATUS_NULL_ARGUMENT`. Arrays must be aligned for their element type.
#[derive_ReprC]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct scale_span_batch {
    /// The caller's clock (ns since the Unix epoch) for the rules' sliding windows; every chunk
    /// of a batch passes the same.
    pub now_ns: u64,
    /// Number of spans: the length of every array here and of the per-span output arrays of
    /// `scale_batch_out`. At most `UINT32_MAX` (else `SCALE_STATUS_INVALID_LENGTH`).
    pub n: usize,
    /// Key ids from `scale_engine_intern` (or `SCALE_KEY_OVERFLOW`); an unknown id skips that
    /// span as `SCALE_SKIP_INVALID_KEY` (not an error). Not read by
    /// `scale_engine_process_names` (may be NULL there).
    pub key_ids: *const u32,
    /// Span start, ns since the Unix epoch; bad timings skip the span.
    pub start_ns: *const u64,
    /// Span end, ns since the Unix epoch.
    pub end_ns: *const u64,
    /// `16 * n` bytes: each span's trace id, evidence copied into decisions; may be NULL (zeros).
    pub trace_ids: *const u8,
    /// `8 * n` bytes: each span's span id, evidence copied into decisions; may be NULL (zeros).
    pub span_ids: *const u8,
}

/// Key names of a batch's spans, for `scale_engine_process_names` (instead of
/// `scale_span_batch.key_ids`): four arrays of `scale_span_batch.n` elements, read during the
/// call only.
///
/// `services[i]` points to `service_lens[i]` bytes of UTF-8 (no NUL needed), likewise
/// `operations[i]` / `operation_lens[i]`. A span whose name pointer is NULL (with a non-zero
/// length) or whose name is not UTF-8 is skipped as `SCALE_SKIP_INVALID_KEY`.
#[derive_ReprC]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct scale_span_names {
    /// Each span's service name.
    pub services: *const *const u8,
    /// The length in bytes of each service name.
    pub service_lens: *const usize,
    /// Each span's operation name.
    pub operations: *const *const u8,
    /// The length in bytes of each operation name.
    pub operation_lens: *const usize,
}

/// Where a batch's results go: caller-allocated arrays, and the number of decisions.
///
/// The hot calls read the pointers and `decisions_cap`, and write the arrays and
/// `decisions_len`, on `SCALE_STATUS_OK` and `SCALE_STATUS_DECISIONS_TRUNCATED` only (on any
/// other status nothing is written, `decisions_len` included). The per-span arrays have
/// `scale_span_batch.n` elements. No array may overlap another argument or this struct.
#[derive_ReprC]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct scale_batch_out {
    /// Anomaly score in [0, 1], higher is more anomalous; NaN if none (skipped, or the model is
    /// still warming up).
    pub scores: *mut f64,
    /// 1 to keep (forward) the span, 0 to drop it.
    pub keep: *mut u8,
    /// `SCALE_SKIP_NONE` (0) if the span was scored, else why not.
    pub skip: *mut scale_skip,
    /// `decisions_cap` elements for the decisions that fired (may be NULL if `decisions_cap` is
    /// 0).
    pub decisions: *mut scale_decision,
    /// Capacity of `decisions`.
    pub decisions_cap: usize,
    /// Written: how many decisions fired. More than `decisions_cap` means the first
    /// `decisions_cap` were written and the status is `SCALE_STATUS_DECISIONS_TRUNCATED`.
    pub decisions_len: usize,
    /// `scale_engine_process_chunk` only, with the keep budget counted in traces
    /// (`scale_engine_count_budget_in_traces`): `late_keep_cap` elements for the batch indices
    /// of spans (in any chunk, the last one included) that the engine marks only once it has
    /// seen the whole batch: the first spans of an incident that showed later in it. Their
    /// `keep` is 1 from then on (the last chunk's own `keep` already says so; earlier chunks'
    /// must be set by the caller). Read and written on the last chunk only, where
    /// `late_keep_cap` must be at least the batch's length (`first_index + n`; else
    /// `SCALE_STATUS_INVALID_LENGTH`). May be NULL with `late_keep_cap` 0 otherwise.
    pub late_keep: *mut u32,
    /// Capacity of `late_keep`.
    pub late_keep_cap: usize,
    /// Written on the last chunk: how many indices `late_keep` holds.
    pub late_keep_len: usize,
}
