//! `scale_engine`: the opaque engine handle and every `scale_engine_*` function.

use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, MutexGuard};
use safer_ffi::c_char;
use safer_ffi::prelude::*;
use scale_core::{
    BatchOutput, Decision, Engine, EngineConfig, Error, SpanKey, SpanRef, Timing, Verdict,
};

use crate::batch::{scale_batch_out, scale_span_batch, scale_span_names};
use crate::decision::scale_decision;
use crate::ffi::{self, FfiResult, MsgOut};
use crate::panic;
use crate::report::scale_rule_report;
use crate::skip::scale_skip;
use crate::stats::scale_stats;
use crate::status::scale_status;

/// The key id every span past the key table's bound (`keys.max_keys`) shares. Returned by
/// `scale_engine_intern` when the table is full; a valid id to pass to `scale_engine_process`.
#[ffi_export]
pub const SCALE_KEY_OVERFLOW: u32 = scale_core::OVERFLOW;

/// A key id no engine ever hands out: spans given it are skipped as `SCALE_SKIP_INVALID_KEY`
/// (callers use it for names that are not UTF-8). `keys.max_keys` is at most 10,000,000, so
/// it never collides with a real id.
#[ffi_export]
pub const SCALE_KEY_INVALID: u32 = u32::MAX - 1;
const INVALID_KEY: u32 = SCALE_KEY_INVALID;

/// A SCALE engine: featurizer, Half-Space-Trees model, key table and latency-rule windows.
///
/// Ownership: created by `scale_engine_new`, `scale_engine_new_with_rules` or one of the
/// `scale_engine_restore*` functions; the caller owns it and must call `scale_engine_free` once.
///
/// Thread safety: every function except `scale_engine_free` may be called from any thread,
/// concurrently, on the same handle: calls are serialised by one lock per handle (calls on
/// different handles never wait on each other). `scale_engine_free` must not run concurrently
/// with any other call on the handle.
///
/// Poisoning: if a call panics (a bug), it returns `SCALE_STATUS_PANIC` and every later call on
/// the handle returns `SCALE_STATUS_POISONED`; only `scale_engine_free` still works.
///
/// Methods: `scale_engine_new`, `scale_engine_new_with_rules`, `scale_engine_restore`,
/// `scale_engine_restore_with_rules`, `scale_engine_restore_from_file`,
/// `scale_engine_restore_from_file_with_rules`, `scale_engine_free`, `scale_engine_intern`,
/// `scale_engine_process`, `scale_engine_process_names`, `scale_engine_process_chunk` (batches in
/// `scale_span_batch` / `scale_batch_out` structs), `scale_engine_rule_count`,
/// `scale_engine_rule_name`, `scale_engine_rule_reports`, `scale_engine_stats`,
/// `scale_engine_count_budget_in_traces`, `scale_engine_snapshot_size`, `scale_engine_snapshot`, `scale_engine_snapshot_to_file`.
#[derive_ReprC]
#[repr(opaque)]
pub struct scale_engine {
    pub(crate) shared: Shared,
}

/// Everything behind the handle.
pub(crate) struct Shared {
    state: Mutex<State>,
    poisoned: AtomicBool,
    /// Test hook: the next locked call panics (see `tests.rs`). Not compiled in the library.
    #[cfg(test)]
    pub(crate) panic_next: AtomicBool,
}

/// The engine and its reusable scratch space (no allocation per batch once warm).
struct State {
    engine: Engine,
    out: BatchOutput,
    /// Allocation reused across batches; always empty between calls.
    spans: Vec<SpanRef<'static>>,
    /// The batch `scale_engine_process_chunk` has in progress, if any.
    chunked: Chunked,
}

/// A batch given in chunks (`scale_engine_process_chunk`): its raw decisions accumulate here,
/// batch-relative, until its last chunk conflates and writes them.
#[derive(Default)]
struct Chunked {
    /// A batch is in progress (its first chunk was processed, its last not yet).
    open: bool,
    /// The batch's clock (every chunk must pass the same).
    now_ns: u64,
    /// Batch index of the next chunk's first span.
    next_index: usize,
    /// Decisions fired so far, unconflated (the allocation is reused across batches).
    decisions: Vec<Decision>,
    /// The last chunk's late marks (`scale_batch_out.late_keep`; the allocation is reused).
    late_keep: Vec<u32>,
}

/// A locked handle; poisons the handle if dropped during a panic (before the lock is released,
/// so no other thread can see the broken state).
pub(crate) struct Locked<'a> {
    poison_on_panic: PoisonOnPanic<'a>,
    guard: MutexGuard<'a, State>,
}

struct PoisonOnPanic<'a>(&'a AtomicBool);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

impl Shared {
    fn new(engine: Engine) -> Self {
        Shared {
            state: Mutex::new(State {
                engine,
                out: BatchOutput::default(),
                spans: Vec::new(),
                chunked: Chunked::default(),
            }),
            poisoned: AtomicBool::new(false),
            #[cfg(test)]
            panic_next: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Lock the engine; fails if the handle was poisoned while this thread waited.
    fn lock(&self) -> FfiResult<Locked<'_>> {
        let guard = self.state.lock();
        if self.is_poisoned() {
            return Err(scale_status::Poisoned);
        }
        let locked = Locked {
            poison_on_panic: PoisonOnPanic(&self.poisoned),
            guard,
        };
        #[cfg(test)]
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("scale-ffi test hook: forced panic");
        }
        Ok(locked)
    }
}

impl Locked<'_> {
    fn state(&mut self) -> &mut State {
        let _ = &self.poison_on_panic;
        &mut self.guard
    }
}

/// The boundary of every export on a handle: NULL and poison checks, then `f` under
/// `catch_unwind`; a panic poisons the handle and returns `SCALE_STATUS_PANIC`.
///
/// # Safety
/// `engine` must be NULL or a live handle from this library.
unsafe fn on_engine(
    engine: *const scale_engine,
    f: impl FnOnce(&Shared) -> FfiResult<scale_status>,
) -> scale_status {
    panic::catch(|| {
        if engine.is_null() {
            return scale_status::NullArgument;
        }
        if !engine.is_aligned() {
            return scale_status::MisalignedPointer;
        }
        // SAFETY: non-NULL, aligned, and live by the caller's contract.
        let e = unsafe { &*engine };
        if e.shared.is_poisoned() {
            return scale_status::Poisoned;
        }
        match catch_unwind(AssertUnwindSafe(|| f(&e.shared))) {
            Ok(r) => panic::status(r),
            Err(_) => {
                e.shared.poisoned.store(true, Ordering::SeqCst);
                scale_status::Panic
            }
        }
    })
}

/// A failure with text for the caller's message buffer.
struct Failure(scale_status, String);

impl From<scale_status> for Failure {
    fn from(s: scale_status) -> Self {
        Failure(s, s.as_cstr().to_string_lossy().into_owned())
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match e {
            Error::Config(_) => scale_status::InvalidConfig,
            Error::Snapshot(_) => scale_status::InvalidSnapshot,
            Error::SnapshotMismatch(_) => scale_status::SnapshotMismatch,
            _ => scale_status::InvalidConfig,
        };
        Failure(status, e.to_string())
    }
}

/// The boundary of exports that report a message: validates the message output first, runs
/// `f` under `catch_unwind`, and writes the message (empty on success).
///
/// # Safety
/// As `ffi::MsgOut::new`.
unsafe fn with_msg(
    msg: *mut c_char,
    msg_cap: usize,
    msg_len: *mut usize,
    f: impl FnOnce() -> Result<(), Failure>,
) -> scale_status {
    panic::catch(|| {
        // SAFETY: forwarded.
        let mut m = match unsafe { MsgOut::new(msg, msg_cap, msg_len) } {
            Ok(m) => m,
            Err(s) => return s,
        };
        let r = catch_unwind(AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(Failure::from(scale_status::Panic)));
        match r {
            Ok(()) => {
                m.write("");
                scale_status::Ok
            }
            Err(Failure(s, text)) => {
                m.write(&text);
                s
            }
        }
    })
}

/// Text input for the message-reporting functions.
///
/// # Safety
/// As `ffi::slice`.
unsafe fn text<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: forwarded.
    let bytes = unsafe { ffi::slice(ptr, len) }
        .map_err(|s| Failure(s, format!("{what}: {}", s.as_cstr().to_string_lossy())))?;
    std::str::from_utf8(bytes).map_err(|e| {
        Failure(
            scale_status::InvalidUtf8,
            format!("{what} is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })
}

/// A filesystem path from `(ptr, len)` bytes: any bytes but NUL on Unix, UTF-8 elsewhere.
///
/// # Safety
/// As `ffi::slice`.
unsafe fn path<'a>(ptr: *const u8, len: usize) -> Result<&'a std::path::Path, Failure> {
    // SAFETY: forwarded.
    let bytes = unsafe { ffi::slice(ptr, len) }.map_err(Failure::from)?;
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(Failure(
            scale_status::Io,
            "path is empty or contains a NUL byte".into(),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::path::Path::new(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes)
            .map(std::path::Path::new)
            .map_err(|_| Failure(scale_status::InvalidUtf8, "path is not valid UTF-8".into()))
    }
}

/// The configuration from its text and, if given, a separate rules file's text (problems of
/// both reported together, those of the rules text prefixed `rules file:`).
///
/// # Safety
/// As `ffi::slice`, for both texts.
unsafe fn config(
    yaml: *const u8,
    yaml_len: usize,
    rules: Option<(*const u8, usize)>,
) -> Result<EngineConfig, Failure> {
    // SAFETY: forwarded.
    let engine_text = unsafe { text(yaml, yaml_len, "configuration") }?;
    let rules_text = match rules {
        // SAFETY: forwarded.
        Some((ptr, len)) => Some(unsafe { text(ptr, len, "rules") }?),
        None => None,
    };
    EngineConfig::from_parts(engine_text, rules_text).map_err(|e| Failure::from(Error::Config(e)))
}

/// The boundary of every constructor: validates the message output and `out`, parses the
/// configuration (and the rules file's text, if given), builds the engine with `build` and
/// writes the new handle to `*out`.
///
/// # Safety
/// As `ffi::MsgOut::new`, `ffi::out_ref` and `config`.
unsafe fn construct(
    yaml: *const u8,
    yaml_len: usize,
    rules: Option<(*const u8, usize)>,
    out: *mut *mut scale_engine,
    msg: (*mut c_char, usize, *mut usize),
    build: impl FnOnce(EngineConfig) -> Result<Engine, Failure>,
) -> scale_status {
    let (msg, msg_cap, msg_len) = msg;
    // SAFETY: forwarded; every pointer goes through `ffi`.
    unsafe {
        with_msg(msg, msg_cap, msg_len, || {
            let out =
                ffi::out_ref(out).map_err(|s| Failure(s, "out is NULL or misaligned".into()))?;
            let engine = build(config(yaml, yaml_len, rules)?)?;
            out.write(Box::into_raw(Box::new(scale_engine {
                shared: Shared::new(engine),
            })));
            Ok(())
        })
    }
}

/// A snapshot given in memory, restored with `cfg`.
///
/// # Safety
/// As `ffi::slice`.
unsafe fn restore_bytes(cfg: EngineConfig, ptr: *const u8, len: usize) -> Result<Engine, Failure> {
    // SAFETY: forwarded.
    let snap = unsafe { ffi::slice(ptr, len) }
        .map_err(|s| Failure(s, "snapshot is NULL or too long".into()))?;
    Ok(Engine::restore(cfg, snap)?)
}

/// A snapshot read from the file at `path[0..path_len]`, restored with `cfg`.
///
/// # Safety
/// As `ffi::slice`.
unsafe fn restore_file(
    cfg: EngineConfig,
    path: *const u8,
    path_len: usize,
) -> Result<Engine, Failure> {
    // SAFETY: forwarded.
    let p = unsafe { self::path(path, path_len) }?;
    let bytes = std::fs::read(p)
        .map_err(|e| Failure(scale_status::Io, format!("reading {}: {e}", p.display())))?;
    Ok(Engine::restore(cfg, &bytes)?)
}

/// Create an engine from configuration YAML.
///
/// `yaml[0..yaml_len]` is UTF-8 YAML text (no NUL needed; `(NULL, 0)` is the empty
/// configuration, i.e. every default). It is read during the call only.
///
/// On success returns `SCALE_STATUS_OK`, writes the new handle to `*out` (the caller owns it
/// and must call `scale_engine_free`) and sets `*msg_len` to 0. On failure `*out` is not
/// written, and a description (for `SCALE_STATUS_INVALID_CONFIG`, every problem with its key
/// path and line) is written to `msg[0..msg_cap]` as UTF-8 without a NUL, truncated on a
/// character boundary, with the bytes written in `*msg_len`. `msg` may be NULL if `msg_cap` is
/// 0; `msg_len` may be NULL.
///
/// Thread safety: safe to call from any thread.
#[ffi_export]
pub unsafe fn scale_engine_new(
    yaml: *const u8,
    yaml_len: usize,
    out: *mut *mut scale_engine,
    msg: *mut c_char,
    msg_cap: usize,
    msg_len: *mut usize,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        construct(yaml, yaml_len, None, out, (msg, msg_cap, msg_len), |cfg| {
            Ok(Engine::new(cfg))
        })
    }
}

/// Like `scale_engine_new`, with the rules taken from a separate rules file's text
/// (`rules_yaml[0..rules_len]`, UTF-8, a document with only `rules:`), the file shared with the
/// daemon. Problems in either text are reported together; those of the rules text are prefixed
/// `rules file:` and cite its own lines. Rules given in both texts are an error.
///
/// Both buffers are read during the call only. Outputs and messages as `scale_engine_new`: the
/// caller owns `*out` and must call `scale_engine_free`.
///
/// Thread safety: safe to call from any thread.
#[ffi_export]
pub unsafe fn scale_engine_new_with_rules(
    yaml: *const u8,
    yaml_len: usize,
    rules_yaml: *const u8,
    rules_len: usize,
    out: *mut *mut scale_engine,
    msg: *mut c_char,
    msg_cap: usize,
    msg_len: *mut usize,
) -> scale_status {
    let rules = Some((rules_yaml, rules_len));
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        construct(yaml, yaml_len, rules, out, (msg, msg_cap, msg_len), |cfg| {
            Ok(Engine::new(cfg))
        })
    }
}

/// Rebuild an engine from configuration YAML and a snapshot from `scale_engine_snapshot`.
///
/// The snapshot's model parameters and mode must match the configuration's
/// (`SCALE_STATUS_SNAPSHOT_MISMATCH` otherwise); rules may differ (changed rules start with
/// empty windows). Both buffers are read during the call only. Outputs and messages as
/// `scale_engine_new`: the caller owns `*out` and must call `scale_engine_free`.
///
/// Thread safety: safe to call from any thread.
#[ffi_export]
pub unsafe fn scale_engine_restore(
    yaml: *const u8,
    yaml_len: usize,
    snapshot: *const u8,
    snapshot_len: usize,
    out: *mut *mut scale_engine,
    msg: *mut c_char,
    msg_cap: usize,
    msg_len: *mut usize,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        construct(yaml, yaml_len, None, out, (msg, msg_cap, msg_len), |cfg| {
            restore_bytes(cfg, snapshot, snapshot_len)
        })
    }
}

/// Like `scale_engine_restore`, with the rules taken from a separate rules file's text, as
/// `scale_engine_new_with_rules` takes them (`rules_yaml[0..rules_len]`: UTF-8, a document with
/// only `rules:`; its problems prefixed `rules file:`; rules in both texts are an error). The
/// caller never merges the two texts.
///
/// All three buffers are read during the call only. Outputs and messages as
/// `scale_engine_new`: the caller owns `*out` and must call `scale_engine_free`.
///
/// Thread safety: safe to call from any thread.
#[ffi_export]
pub unsafe fn scale_engine_restore_with_rules(
    yaml: *const u8,
    yaml_len: usize,
    rules_yaml: *const u8,
    rules_len: usize,
    snapshot: *const u8,
    snapshot_len: usize,
    out: *mut *mut scale_engine,
    msg: *mut c_char,
    msg_cap: usize,
    msg_len: *mut usize,
) -> scale_status {
    let rules = Some((rules_yaml, rules_len));
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        construct(yaml, yaml_len, rules, out, (msg, msg_cap, msg_len), |cfg| {
            restore_bytes(cfg, snapshot, snapshot_len)
        })
    }
}

/// Like `scale_engine_restore`, reading the snapshot from the file at `path[0..path_len]`
/// (bytes, no NUL needed; any bytes but NUL on Unix).
///
/// I/O errors return `SCALE_STATUS_IO` with the OS error in the message.
/// Thread safety: safe to call from any thread.
#[ffi_export]
pub unsafe fn scale_engine_restore_from_file(
    yaml: *const u8,
    yaml_len: usize,
    path: *const u8,
    path_len: usize,
    out: *mut *mut scale_engine,
    msg: *mut c_char,
    msg_cap: usize,
    msg_len: *mut usize,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        construct(yaml, yaml_len, None, out, (msg, msg_cap, msg_len), |cfg| {
            restore_file(cfg, path, path_len)
        })
    }
}

/// Like `scale_engine_restore_from_file`, with the rules taken from a separate rules file's
/// text as in `scale_engine_restore_with_rules`.
///
/// I/O errors return `SCALE_STATUS_IO` with the OS error in the message.
/// Thread safety: safe to call from any thread.
#[ffi_export]
pub unsafe fn scale_engine_restore_from_file_with_rules(
    yaml: *const u8,
    yaml_len: usize,
    rules_yaml: *const u8,
    rules_len: usize,
    path: *const u8,
    path_len: usize,
    out: *mut *mut scale_engine,
    msg: *mut c_char,
    msg_cap: usize,
    msg_len: *mut usize,
) -> scale_status {
    let rules = Some((rules_yaml, rules_len));
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        construct(yaml, yaml_len, rules, out, (msg, msg_cap, msg_len), |cfg| {
            restore_file(cfg, path, path_len)
        })
    }
}

/// Free an engine. NULL is accepted and ignored.
///
/// Takes ownership of `engine`: it must come from this library, must not be used afterwards,
/// must not be freed twice, and no other call may be running on it. Works on poisoned handles.
#[ffi_export]
pub unsafe fn scale_engine_free(engine: *mut scale_engine) {
    panic::catch_or((), || {
        if !engine.is_null() {
            // SAFETY: the caller passes ownership of a handle made by `construct`.
            drop(unsafe { Box::from_raw(engine) });
        }
    })
}

/// The key id of `service::operation`, for `scale_engine_process`.
///
/// Names are UTF-8 (no NUL needed; `(NULL, 0)` is the empty name), read during the call and
/// copied if new. Ids are dense from 0, stable for the engine's life and kept by snapshots, so
/// callers may cache them. When the key table is full (`keys.max_keys`) the result is
/// `SCALE_KEY_OVERFLOW` (status OK). `*key_out` is written only on success.
///
/// Thread safety: safe to call concurrently with any call but `scale_engine_free`.
#[ffi_export]
pub unsafe fn scale_engine_intern(
    engine: *mut scale_engine,
    service: *const u8,
    service_len: usize,
    operation: *const u8,
    operation_len: usize,
    key_out: *mut u32,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let service = ffi::str(service, service_len)?;
            let operation = ffi::str(operation, operation_len)?;
            let out = ffi::out_ref(key_out)?;
            let id = e.lock()?.state().engine.intern(service, operation);
            out.write(id);
            Ok(scale_status::Ok)
        })
    }
}

/// How a batch names its spans' keys.
enum Keys<'a> {
    Ids(&'a [u32]),
    Names {
        services: &'a [*const u8],
        service_lens: &'a [usize],
        operations: &'a [*const u8],
        operation_lens: &'a [usize],
    },
}

/// A validated batch: inputs and the caller's outputs.
struct Batch<'a> {
    now_ns: u64,
    keys: Keys<'a>,
    start_ns: &'a [u64],
    end_ns: &'a [u64],
    trace_ids: Option<&'a [[u8; 16]]>,
    span_ids: Option<&'a [[u8; 8]]>,
    scores: &'a mut [MaybeUninit<f64>],
    keep: &'a mut [MaybeUninit<u8>],
    skip: &'a mut [MaybeUninit<scale_skip>],
    decisions: &'a mut [MaybeUninit<scale_decision>],
    decisions_len: &'a mut MaybeUninit<usize>,
    late_keep: &'a mut [MaybeUninit<u32>],
    late_keep_len: &'a mut MaybeUninit<usize>,
}

/// Reuse `v`'s allocation for borrows of another lifetime (the in-place `collect` of an empty
/// vector of a same-layout type keeps the buffer).
fn recycle<'b>(mut v: Vec<SpanRef<'_>>) -> Vec<SpanRef<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| -> SpanRef<'b> { unreachable!("the vector is empty") })
        .collect()
}

/// A name pair at index `i` of a names batch; `None` if a pointer is NULL or a name is not
/// UTF-8 (the span is then skipped as `InvalidKey`).
///
/// # Safety
/// The arrays' pointers must be valid as documented on `scale_engine_process_names`.
unsafe fn name_pair<'a>(k: &Keys<'a>, i: usize) -> Option<(&'a str, &'a str)> {
    let Keys::Names {
        services,
        service_lens,
        operations,
        operation_lens,
    } = k
    else {
        return None;
    };
    // SAFETY: forwarded.
    let s = unsafe { ffi::str(services[i], service_lens[i]) }.ok()?;
    // SAFETY: forwarded.
    let o = unsafe { ffi::str(operations[i], operation_lens[i]) }.ok()?;
    Some((s, o))
}

impl<'a> Batch<'a> {
    /// The batch's spans, in `buf`'s allocation (recycled from `State::spans`).
    fn span_refs(&self, buf: Vec<SpanRef<'static>>) -> Vec<SpanRef<'a>> {
        let n = self.start_ns.len();
        let mut spans = recycle(buf);
        spans.reserve(n);
        for i in 0..n {
            let key = match &self.keys {
                Keys::Ids(ids) => SpanKey::Id(ids[i]),
                // SAFETY: the names arrays were validated; each name is checked here.
                names => match unsafe { name_pair(names, i) } {
                    Some((service, operation)) => SpanKey::Names { service, operation },
                    None => SpanKey::Id(INVALID_KEY),
                },
            };
            spans.push(SpanRef {
                key,
                timing: Timing::StartEnd {
                    start_ns: self.start_ns[i],
                    end_ns: self.end_ns[i],
                },
                trace_id: self.trace_ids.map_or([0; 16], |t| t[i]),
                span_id: self.span_ids.map_or([0; 8], |t| t[i]),
            });
        }
        spans
    }

    /// Write span `i`'s per-span outputs.
    fn write_verdict(&mut self, i: usize, v: &Verdict) {
        self.scores[i].write(v.score.unwrap_or(f64::NAN));
        self.keep[i].write(u8::from(v.keep));
        self.skip[i].write(scale_skip::from(v.skipped));
    }

    /// Write the decisions (truncated to the caller's capacity) and their total.
    fn write_decisions(self, decisions: &[Decision]) -> scale_status {
        let total = decisions.len();
        for (dst, d) in self.decisions.iter_mut().zip(decisions) {
            dst.write(scale_decision::from(d));
        }
        self.decisions_len.write(total);
        if total > self.decisions.len() {
            scale_status::DecisionsTruncated
        } else {
            scale_status::Ok
        }
    }

    /// The whole batch in one engine call (`scale_engine_process*`).
    fn run(mut self, st: &mut State) -> scale_status {
        let spans = self.span_refs(std::mem::take(&mut st.spans));
        st.engine.process_batch(&spans, self.now_ns, &mut st.out);
        st.spans = recycle(spans);
        for (i, v) in st.out.verdicts.iter().enumerate() {
            self.write_verdict(i, v);
        }
        self.write_decisions(&st.out.decisions)
    }

    /// One chunk of a batch (`scale_engine_process_chunk`): the spans at batch indices
    /// `first_index..first_index + n`, exactly as `Engine::process_batch` processes them (it is
    /// `Engine::process_span` per span, then `Engine::finish_batch` over the batch's decisions);
    /// the decisions wait in `st.chunked` until the last chunk.
    fn run_chunk(
        mut self,
        st: &mut State,
        first_index: usize,
        last: bool,
    ) -> FfiResult<scale_status> {
        let n = self.start_ns.len();
        if last && st.engine.counts_budget_in_traces() && self.late_keep.len() < first_index + n {
            return Err(scale_status::InvalidLength);
        }
        let c = &mut st.chunked;
        if first_index == 0 {
            // A new batch; one left unfinished by its caller is abandoned with its decisions.
            c.open = true;
            c.now_ns = self.now_ns;
            c.next_index = 0;
            c.decisions.clear();
        } else if !c.open || c.next_index != first_index || c.now_ns != self.now_ns {
            return Err(scale_status::ChunkOutOfSequence);
        }
        let spans = self.span_refs(std::mem::take(&mut st.spans));
        for (i, span) in spans.iter().enumerate() {
            // `check_len` bounds first_index + n by u32::MAX.
            let index = (first_index + i) as u32;
            let v = st
                .engine
                .process_span(span, index, self.now_ns, &mut st.chunked.decisions);
            self.write_verdict(i, &v);
        }
        st.spans = recycle(spans);
        let c = &mut st.chunked;
        c.next_index = first_index + n;
        if !last {
            self.decisions_len.write(0);
            return Ok(scale_status::Ok);
        }
        c.open = false;
        let late = &mut c.late_keep;
        late.clear();
        st.engine.late_marks(late);
        for (dst, &index) in self.late_keep.iter_mut().zip(late.iter()) {
            dst.write(index);
            if let Some(i) = (index as usize).checked_sub(first_index) {
                self.keep[i].write(1);
            }
        }
        self.late_keep_len.write(late.len());
        st.engine.finish_batch(&mut c.decisions);
        Ok(self.write_decisions(&c.decisions))
    }
}

/// Check a batch's indices: `first_index + n` spans (a whole batch has `first_index` 0) must fit
/// `u32`, since decisions carry a `u32` span index.
fn check_len(first_index: usize, n: usize) -> FfiResult<()> {
    first_index
        .checked_add(n)
        .and_then(|end| u32::try_from(end).ok())
        .map(|_| ())
        .ok_or(scale_status::InvalidLength)
}

/// Where a batch's keys come from.
enum KeySource {
    /// `scale_span_batch.key_ids`.
    Ids,
    /// A `scale_span_names` struct (`scale_engine_process_names`).
    Names(*const scale_span_names),
}

/// The one place the hot calls' structs become slices: `input` and `out` (NULL, alignment),
/// the batch's length (`first_index + n` within `u32`), the key arrays, then every other array,
/// all checked before anything is written.
///
/// # Safety
/// `input`, `out` and (for names) the names struct must be NULL or valid for the call, with
/// arrays as documented on `scale_span_batch`, `scale_span_names` and `scale_batch_out`.
unsafe fn batch_args<'a>(
    input: *const scale_span_batch,
    keys: KeySource,
    first_index: usize,
    out: *mut scale_batch_out,
) -> FfiResult<Batch<'a>> {
    // SAFETY: every pointer is checked by `ffi`; validity for `n` elements is the contract.
    unsafe {
        let b = *ffi::in_ref(input)?;
        let o = *ffi::in_ref(out.cast_const())?;
        let n = b.n;
        check_len(first_index, n)?;
        let keys = match keys {
            KeySource::Ids => Keys::Ids(ffi::slice(b.key_ids, n)?),
            KeySource::Names(names) => {
                let m = *ffi::in_ref(names)?;
                Keys::Names {
                    services: ffi::slice(m.services, n)?,
                    service_lens: ffi::slice(m.service_lens, n)?,
                    operations: ffi::slice(m.operations, n)?,
                    operation_lens: ffi::slice(m.operation_lens, n)?,
                }
            }
        };
        Ok(Batch {
            now_ns: b.now_ns,
            keys,
            start_ns: ffi::slice(b.start_ns, n)?,
            end_ns: ffi::slice(b.end_ns, n)?,
            trace_ids: ffi::opt_slice(b.trace_ids.cast::<[u8; 16]>(), n)?,
            span_ids: ffi::opt_slice(b.span_ids.cast::<[u8; 8]>(), n)?,
            scores: ffi::out_slice(o.scores, n)?,
            keep: ffi::out_slice(o.keep, n)?,
            skip: ffi::out_slice(o.skip, n)?,
            decisions: ffi::out_slice(o.decisions, o.decisions_cap)?,
            // `out` was checked above: non-NULL and aligned.
            decisions_len: &mut *std::ptr::addr_of_mut!((*out).decisions_len)
                .cast::<MaybeUninit<usize>>(),
            late_keep: ffi::out_slice(o.late_keep, o.late_keep_cap)?,
            late_keep_len: &mut *std::ptr::addr_of_mut!((*out).late_keep_len)
                .cast::<MaybeUninit<usize>>(),
        })
    }
}

/// Score a batch of spans given by key id: the hot path, one call per batch (or one per chunk
/// of it: `scale_engine_process_chunk`).
///
/// `batch` holds the inputs (`batch->n` spans; `key_ids`, `start_ns` and `end_ns` required,
/// `trace_ids` and `span_ids` optional: see `scale_span_batch`), read during the call only and
/// never kept; `n` 0 is an empty batch (its arrays may be NULL). `out` says where the results
/// go (`scale_batch_out`): per-span `scores`, `keep` and `skip` (`n` elements each), the
/// decisions that fired in `decisions[0..decisions_cap]`, and how many fired in
/// `out->decisions_len`; all written on `SCALE_STATUS_OK` and
/// `SCALE_STATUS_DECISIONS_TRUNCATED` only. If more than `decisions_cap` fired, the first
/// `decisions_cap` are written, `decisions_len` is the total, and the status is
/// `SCALE_STATUS_DECISIONS_TRUNCATED`: the per-span outputs are still complete and the engine's
/// state has advanced (do not resubmit the batch); the extra decisions are lost.
///
/// `batch` and `out` must not be NULL (`SCALE_STATUS_NULL_ARGUMENT`). No output may overlap
/// another argument. `n` above `UINT32_MAX` is `SCALE_STATUS_INVALID_LENGTH`. Any other error
/// (NULL, length, alignment, poisoned) leaves the engine and every output untouched.
///
/// Cost: O(n · n_trees · height); no allocation once the engine's scratch buffers have grown
/// to the largest batch. Thread safety: safe to call concurrently with any call but
/// `scale_engine_free`; concurrent calls on one handle are serialised (each batch is processed
/// atomically, in the order the lock is acquired).
#[ffi_export]
pub unsafe fn scale_engine_process(
    engine: *mut scale_engine,
    batch: *const scale_span_batch,
    out: *mut scale_batch_out,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let b = batch_args(batch, KeySource::Ids, 0, out)?;
            Ok(b.run(e.lock()?.state()))
        })
    }
}

/// Like `scale_engine_process`, naming each span's key by its service and operation names
/// (`names`, arrays of `batch->n` elements: see `scale_span_names`) instead of an id (interned
/// on the fly; cheaper to cache ids with `scale_engine_intern`). `batch->key_ids` is not read.
///
/// A span whose name pointer is NULL (with a non-zero length) or whose name is not UTF-8 is
/// skipped as `SCALE_SKIP_INVALID_KEY`. Everything else, including outputs, status and thread
/// safety, is as `scale_engine_process`.
#[ffi_export]
pub unsafe fn scale_engine_process_names(
    engine: *mut scale_engine,
    batch: *const scale_span_batch,
    names: *const scale_span_names,
    out: *mut scale_batch_out,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let b = batch_args(batch, KeySource::Names(names), 0, out)?;
            Ok(b.run(e.lock()?.state()))
        })
    }
}

/// Score one chunk of a batch given by key id: `scale_engine_process` split into several calls
/// (each shorter, e.g. so a Go caller's cgo call does not outlast the scheduler's ~20 µs
/// patience), with every output as if the batch had been one call.
///
/// The batch's spans are given in order, in chunks: `chunk` holds the chunk's spans (as
/// `scale_engine_process`'s `batch`; `chunk->n` spans, the per-span outputs in `out` are the
/// chunk's), and its first span has index `first_index` in the batch. `first_index` 0 begins a
/// batch; every later chunk must continue it: `first_index` equal to the spans given so far
/// and the same `now_ns`, else `SCALE_STATUS_CHUNK_OUT_OF_SEQUENCE` (nothing processed, the
/// batch in progress kept). `last` non-zero marks the batch's last chunk (a batch of one chunk
/// has `first_index` 0 and `last` 1; an empty last chunk is allowed).
///
/// Per-span outputs (`out->scores`, `out->keep`, `out->skip`) are written for every chunk,
/// equal to what `scale_engine_process` writes for those spans of the whole batch, except that
/// with the keep budget counted in traces a span the engine marks only at the batch's end (the
/// start of an incident that showed later in the batch) is listed in the last chunk's
/// `out->late_keep` instead (see `scale_batch_out`): set `keep` of those. Decisions
/// are kept inside the handle until the last chunk: then the whole batch's decisions are
/// conflated by target (one `conflated` count over all chunks) and written to
/// `out->decisions` with their batch-relative `span_index`, with `out->decisions_len` and
/// `SCALE_STATUS_DECISIONS_TRUNCATED` as in `scale_engine_process`. For other chunks
/// `out->decisions` is not written (it may be NULL with `decisions_cap` 0) and
/// `out->decisions_len` is 0. The engine's state advances with every chunk (nothing is undone
/// if the batch is never finished).
///
/// Sequences: a handle has at most one chunked batch in progress. Starting a batch
/// (`first_index` 0) abandons one that was not finished; its decisions are dropped. Calls of
/// other functions (including `scale_engine_process`) may run between two chunks; they do not
/// disturb the batch in progress. Two chunked batches must not interleave on one handle:
/// callers that send batches from several threads serialise each batch's chunk sequence (for
/// example with a lock held from its first chunk to its last).
///
/// A batch is limited to `UINT32_MAX` spans: `first_index + n` beyond it is
/// `SCALE_STATUS_INVALID_LENGTH`. Other errors as `scale_engine_process`: they leave the engine,
/// the batch in progress and every output untouched.
///
/// Cost: as `scale_engine_process` for the chunk's spans, plus the batch's conflation on the
/// last chunk. Thread safety: safe to call concurrently with any call but `scale_engine_free`,
/// within the sequencing rules above.
#[ffi_export]
pub unsafe fn scale_engine_process_chunk(
    engine: *mut scale_engine,
    chunk: *const scale_span_batch,
    first_index: usize,
    last: u8,
    out: *mut scale_batch_out,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let b = batch_args(chunk, KeySource::Ids, first_index, out)?;
            b.run_chunk(e.lock()?.state(), first_index, last != 0)
        })
    }
}

/// The number of rules in the engine's configuration, in `*count_out`.
///
/// Thread safety: safe to call concurrently with any call but `scale_engine_free`.
#[ffi_export]
pub unsafe fn scale_engine_rule_count(
    engine: *const scale_engine,
    count_out: *mut usize,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let out = ffi::out_ref(count_out)?;
            out.write(e.lock()?.state().engine.rules().rules().len());
            Ok(scale_status::Ok)
        })
    }
}

/// The name of rule `index` (as in `scale_decision.rule_index`), UTF-8 without a NUL, copied
/// into `buf[0..cap]` with its length in `*len`.
///
/// If `cap` is too small, returns `SCALE_STATUS_BUFFER_TOO_SMALL`, writes nothing to `buf` and
/// sets `*len` to the size needed. An index past the rules is
/// `SCALE_STATUS_INDEX_OUT_OF_RANGE`. `buf` may be NULL if `cap` is 0.
/// Thread safety: safe to call concurrently with any call but `scale_engine_free`.
#[ffi_export]
pub unsafe fn scale_engine_rule_name(
    engine: *const scale_engine,
    index: usize,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let buf = ffi::out_slice(buf, cap)?;
            let len = ffi::out_ref(len)?;
            let mut l = e.lock()?;
            let rules = l.state().engine.rules().rules();
            let name = rules
                .get(index)
                .ok_or(scale_status::IndexOutOfRange)?
                .name
                .as_bytes();
            len.write(name.len());
            if name.len() > buf.len() {
                return Ok(scale_status::BufferTooSmall);
            }
            for (d, &b) in buf.iter_mut().zip(name) {
                d.write(c_char(b));
            }
            Ok(scale_status::Ok)
        })
    }
}

/// Every rule window's evidence since the last call (what it matched, its breaches, their
/// latency), and a new reporting interval from `now_ns` (the engine's clock, as the batches').
///
/// One report per rule with a fixed target and one per service seen for a rule named after the
/// service (`${service}`), written to `reports_out[0..reports_cap]`, their count in
/// `*reports_len`; the services' names (UTF-8, no NUL) are written one after the other to
/// `names_out[0..names_cap]`, their total length in `*names_len`, each report naming its slice.
///
/// If either buffer is too small, returns `SCALE_STATUS_BUFFER_TOO_SMALL` with the sizes needed
/// in `*reports_len` and `*names_len`, writes nothing else and starts no new interval (call
/// again with larger buffers: nothing is lost). `reports_out` / `names_out` may be NULL if
/// their capacity is 0.
///
/// Cost: O(windows · 128); no allocation per span. Thread safety: safe to call concurrently
/// with any call but `scale_engine_free`; it takes its turn between batches.
#[ffi_export]
pub unsafe fn scale_engine_rule_reports(
    engine: *mut scale_engine,
    now_ns: u64,
    reports_out: *mut scale_rule_report,
    reports_cap: usize,
    names_out: *mut u8,
    names_cap: usize,
    reports_len: *mut usize,
    names_len: *mut usize,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let reports_len = ffi::out_ref(reports_len)?;
            let names_len = ffi::out_ref(names_len)?;
            let out = ffi::out_slice(reports_out, reports_cap)?;
            let names = ffi::out_slice(names_out, names_cap)?;
            let mut l = e.lock()?;
            let engine = &mut l.state().engine;
            // Sizes first, from a look that changes nothing: the buffers must hold them all.
            let (n, bytes) = engine.rule_report_sizes();
            if n > out.len() || bytes > names.len() || bytes > u32::MAX as usize {
                reports_len.write(n);
                names_len.write(bytes);
                return Ok(scale_status::BufferTooSmall);
            }
            let reports = engine.rule_reports(now_ns);
            let mut at = 0usize;
            for (slot, r) in out.iter_mut().zip(&reports) {
                slot.write(scale_rule_report::new(r, at as u32));
                if let Some(s) = &r.service {
                    for (d, &b) in names[at..at + s.len()].iter_mut().zip(s.as_bytes()) {
                        d.write(b);
                    }
                    at += s.len();
                }
            }
            reports_len.write(reports.len());
            names_len.write(at);
            Ok(scale_status::Ok)
        })
    }
}

/// Count the engine's `keep_budget` in traces (`on` non-zero) or in spans (0, the default), for
/// a caller that marks spans and leaves the keep decision to a sampler that keeps whole traces
/// (the processor's `drop: false`): the engine measures spans per trace from the batches' trace
/// ids and keeps `keep_budget / (spans per trace)` of spans. Not saved in a snapshot: call it
/// again after `scale_engine_restore*`.
///
/// Thread safety: safe to call concurrently with any call but `scale_engine_free`.
#[ffi_export]
pub unsafe fn scale_engine_count_budget_in_traces(
    engine: *const scale_engine,
    on: u8,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            e.lock()?.state().engine.count_budget_in_traces(on != 0);
            Ok(scale_status::Ok)
        })
    }
}

/// The engine's counters, copied into `*out` (caller-owned).
///
/// Thread safety: safe to call concurrently with any call but `scale_engine_free`; the counters
/// are a consistent view between two batches.
#[ffi_export]
pub unsafe fn scale_engine_stats(
    engine: *const scale_engine,
    out: *mut scale_stats,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let out = ffi::out_ref(out)?;
            let s = e.lock()?.state().engine.stats();
            out.write(scale_stats::from(&s));
            Ok(scale_status::Ok)
        })
    }
}

/// The size in bytes of the engine's snapshot now, in `*size_out`.
///
/// Cost: serialises the whole engine (as `scale_engine_snapshot`). Batches processed between
/// this call and `scale_engine_snapshot` may change the size: size the buffer with a margin,
/// or retry on `SCALE_STATUS_BUFFER_TOO_SMALL`.
/// Thread safety: safe to call concurrently with any call but `scale_engine_free`.
#[ffi_export]
pub unsafe fn scale_engine_snapshot_size(
    engine: *const scale_engine,
    size_out: *mut usize,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let out = ffi::out_ref(size_out)?;
            let n = e.lock()?.state().engine.snapshot().len();
            out.write(n);
            Ok(scale_status::Ok)
        })
    }
}

/// Serialise the whole engine state (model, keys, baselines, rule windows, counters) into
/// `buf[0..cap]`, with its length in `*len`; `scale_engine_restore` reads it back.
///
/// If `cap` is too small, returns `SCALE_STATUS_BUFFER_TOO_SMALL`, writes nothing to `buf` and
/// sets `*len` to the size needed. The format is versioned; a newer library refuses snapshots
/// it cannot read. Cost: proportional to the model and key table; holds the engine's lock
/// meanwhile (concurrent batches wait). Thread safety: safe to call concurrently with any call
/// but `scale_engine_free`.
#[ffi_export]
pub unsafe fn scale_engine_snapshot(
    engine: *const scale_engine,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let buf = ffi::out_slice(buf, cap)?;
            let len = ffi::out_ref(len)?;
            let bytes = e.lock()?.state().engine.snapshot();
            len.write(bytes.len());
            if bytes.len() > buf.len() {
                return Ok(scale_status::BufferTooSmall);
            }
            for (d, &b) in buf.iter_mut().zip(&bytes) {
                d.write(b);
            }
            Ok(scale_status::Ok)
        })
    }
}

/// Write the engine's snapshot to the file at `path[0..path_len]` (bytes, no NUL needed; any
/// bytes but NUL on Unix), atomically: a temporary file in the same directory is written,
/// synced and renamed over `path`, so readers see the old file or the new one, never a part.
///
/// Errors: `SCALE_STATUS_IO` with the OS error in `msg` (as `scale_engine_new`). The engine's
/// lock is held only while serialising, not during I/O.
/// Thread safety: safe to call concurrently with any call but `scale_engine_free`; concurrent
/// writes to the same path leave one complete snapshot.
#[ffi_export]
pub unsafe fn scale_engine_snapshot_to_file(
    engine: *const scale_engine,
    path: *const u8,
    path_len: usize,
    msg: *mut c_char,
    msg_cap: usize,
    msg_len: *mut usize,
) -> scale_status {
    // SAFETY: pointer validity is the caller's contract; every pointer goes through `ffi`.
    unsafe {
        on_engine(engine, |e| {
            let mut m = MsgOut::new(msg, msg_cap, msg_len)?;
            let r = self::path(path, path_len).and_then(|p| {
                let bytes = e.lock().map_err(Failure::from)?.state().engine.snapshot();
                write_atomically(p, &bytes).map_err(|err| {
                    Failure(scale_status::Io, format!("writing {}: {err}", p.display()))
                })
            });
            match r {
                Ok(()) => {
                    m.write("");
                    Ok(scale_status::Ok)
                }
                Err(Failure(s, text)) => {
                    m.write(&text);
                    Ok(s)
                }
            }
        })
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::AtomicU64;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut name = path
        .file_name()
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
        })?
        .to_os_string();
    name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(name);
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(key: SpanKey<'_>) -> SpanRef<'_> {
        SpanRef {
            key,
            timing: Timing::DurationMs(1.0),
            trace_id: [0; 16],
            span_id: [0; 8],
        }
    }

    #[test]
    fn recycle_keeps_the_allocation() {
        let mut v: Vec<SpanRef<'static>> = Vec::with_capacity(1024);
        v.push(span(SpanKey::Id(0)));
        let p = v.as_ptr();
        let name = String::from("borrowed");
        let mut w = recycle(v);
        assert!(w.is_empty() && w.capacity() >= 1024);
        w.push(span(SpanKey::Names {
            service: &name,
            operation: &name,
        }));
        assert_eq!(w.as_ptr(), p, "same buffer: no allocation per batch");
        let back: Vec<SpanRef<'static>> = recycle(w);
        assert_eq!((back.as_ptr(), back.len()), (p, 0));
    }
}
