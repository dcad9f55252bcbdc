//! Tests that call the exported C functions: misuse (NULLs, lengths, UTF-8), errors with
//! messages, the panic boundary and poisoning, snapshots, truncation and concurrency.
//!
//! They live inside the crate so they can reach the `#[cfg(test)]` panic hook on a handle;
//! nothing here is compiled into the library.

use std::ptr::{null, null_mut};
use std::sync::atomic::Ordering;

use crate::*;

const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// A handle freed on drop.
struct H(*mut scale_engine);

impl Drop for H {
    fn drop(&mut self) {
        // SAFETY: a live handle from `new`.
        unsafe { scale_engine_free(self.0) };
    }
}

// SAFETY: the handle is documented as safe for concurrent calls (other than free, which only
// `Drop` does, once, with exclusive access).
unsafe impl Send for H {}
// SAFETY: as above.
unsafe impl Sync for H {}

impl H {
    fn shared(&self) -> &engine::Shared {
        // SAFETY: live handle.
        unsafe { &(*self.0).shared }
    }
}

fn try_new(yaml: &[u8]) -> (scale_status, *mut scale_engine, String) {
    let mut out = null_mut();
    let mut msg = vec![0u8; 4096];
    let mut len = usize::MAX;
    // SAFETY: valid buffers.
    let st = unsafe {
        scale_engine_new(
            yaml.as_ptr(),
            yaml.len(),
            &mut out,
            msg.as_mut_ptr().cast(),
            msg.len(),
            &mut len,
        )
    };
    msg.truncate(len);
    (st, out, String::from_utf8(msg).unwrap())
}

fn new(yaml: &str) -> H {
    let (st, e, msg) = try_new(yaml.as_bytes());
    assert_eq!(st, scale_status::Ok, "{msg}");
    assert!(msg.is_empty());
    H(e)
}

fn intern(e: &H, s: &str, o: &str) -> u32 {
    let mut k = 0;
    // SAFETY: valid buffers.
    let st = unsafe { scale_engine_intern(e.0, s.as_ptr(), s.len(), o.as_ptr(), o.len(), &mut k) };
    assert_eq!(st, scale_status::Ok);
    k
}

/// One batch's outputs.
#[derive(Debug, Clone, PartialEq)]
struct Out {
    status: scale_status,
    scores: Vec<f64>,
    keep: Vec<u8>,
    skip: Vec<scale_skip>,
    decisions: Vec<scale_decision>,
    n_decisions: usize,
}

impl Out {
    /// Scores compared bit for bit (NaN == NaN).
    fn score_bits(&self) -> Vec<u64> {
        self.scores.iter().map(|s| s.to_bits()).collect()
    }
}

/// Spans `(key, duration_ms)`, starting at `T0 + i ms`.
fn spans(v: &[(u32, f64)]) -> (Vec<u32>, Vec<u64>, Vec<u64>) {
    let keys = v.iter().map(|s| s.0).collect();
    let start: Vec<u64> = (0..v.len() as u64).map(|i| T0 + i * MS).collect();
    let end = start
        .iter()
        .zip(v)
        .map(|(s, x)| s + (x.1 * 1e6) as u64)
        .collect();
    (keys, start, end)
}

/// A batch's inputs by key id, without evidence ids.
fn input(
    now: u64,
    n: usize,
    keys: *const u32,
    start: *const u64,
    end: *const u64,
) -> scale_span_batch {
    scale_span_batch {
        now_ns: now,
        n,
        key_ids: keys,
        start_ns: start,
        end_ns: end,
        trace_ids: null(),
        span_ids: null(),
    }
}

/// A batch's outputs; `decisions_len` starts at `usize::MAX` (to see whether it is written).
fn output(
    scores: *mut f64,
    keep: *mut u8,
    skip: *mut scale_skip,
    decisions: *mut scale_decision,
    cap: usize,
) -> scale_batch_out {
    scale_batch_out {
        scores,
        keep,
        skip,
        decisions,
        decisions_cap: cap,
        decisions_len: usize::MAX,
        late_keep: null_mut(),
        late_keep_cap: 0,
        late_keep_len: usize::MAX,
    }
}

/// `Out`'s arrays as the output struct: per-span arrays from index `lo`, room for `cap`
/// decisions (`o.decisions` has at least that capacity; NULL if `cap` is 0).
fn out_args(o: &mut Out, lo: usize, cap: usize) -> scale_batch_out {
    assert!(o.decisions.capacity() >= cap);
    let dec = if cap == 0 {
        null_mut()
    } else {
        o.decisions.as_mut_ptr()
    };
    output(
        o.scores[lo..].as_mut_ptr(),
        o.keep[lo..].as_mut_ptr(),
        o.skip[lo..].as_mut_ptr(),
        dec,
        cap,
    )
}

/// `o.decisions` holds what the call wrote with room for `cap` (on OK and DECISIONS_TRUNCATED).
fn set_decisions(o: &mut Out, cap: usize) {
    if matches!(
        o.status,
        scale_status::Ok | scale_status::DecisionsTruncated
    ) {
        // SAFETY: the call wrote min(cap, total) decisions.
        unsafe { o.decisions.set_len(cap.min(o.n_decisions)) };
    }
}

fn process_cap(e: &H, now: u64, v: &[(u32, f64)], cap: usize) -> Out {
    let s = spans_with_ids(v);
    let n = v.len();
    let mut o = Out {
        status: scale_status::Ok,
        scores: vec![-1.0; n],
        keep: vec![9; n],
        skip: vec![scale_skip::None; n],
        decisions: Vec::with_capacity(cap),
        n_decisions: usize::MAX,
    };
    let mut out = out_args(&mut o, 0, cap);
    // SAFETY: every array has `n` (or `cap`) elements.
    o.status = unsafe { scale_engine_process(e.0, &s.input(now, 0, n), &mut out) };
    o.n_decisions = out.decisions_len;
    set_decisions(&mut o, cap);
    o
}

fn process(e: &H, now: u64, v: &[(u32, f64)]) -> Out {
    process_cap(e, now, v, 64)
}

fn stats(e: &H) -> scale_stats {
    let mut s = scale_stats::default();
    // SAFETY: valid pointers.
    assert_eq!(unsafe { scale_engine_stats(e.0, &mut s) }, scale_status::Ok);
    s
}

/// Snapshot through the size call, retrying as documented when batches grew it meanwhile.
fn snapshot(e: &H) -> Vec<u8> {
    let mut size = 0;
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { scale_engine_snapshot_size(e.0, &mut size) },
        scale_status::Ok
    );
    loop {
        let mut buf = vec![0u8; size];
        let mut len = 0;
        // SAFETY: valid pointers.
        match unsafe { scale_engine_snapshot(e.0, buf.as_mut_ptr(), buf.len(), &mut len) } {
            scale_status::Ok => {
                buf.truncate(len);
                return buf;
            }
            scale_status::BufferTooSmall => size = len,
            st => panic!("{st:?}"),
        }
    }
}

/// Decisions compared bit for bit (NaN fields equal).
fn dbits(d: &[scale_decision]) -> String {
    format!("{d:?}")
}

fn restore(yaml: &str, snap: &[u8]) -> (scale_status, *mut scale_engine, String) {
    let mut out = null_mut();
    let mut msg = vec![0u8; 1024];
    let mut len = 0;
    // SAFETY: valid buffers.
    let st = unsafe {
        scale_engine_restore(
            yaml.as_ptr(),
            yaml.len(),
            snap.as_ptr(),
            snap.len(),
            &mut out,
            msg.as_mut_ptr().cast(),
            msg.len(),
            &mut len,
        )
    };
    msg.truncate(len);
    (st, out, String::from_utf8(msg).unwrap())
}

/// A zeroed `scale_rule_report` for output arrays.
fn blank_report() -> scale_rule_report {
    scale_rule_report {
        rule_index: 0,
        count: 0,
        in_window: 0,
        service_offset: 0,
        service_len: 0,
        since_ns: 0,
        until_ns: 0,
        matched: 0,
        breaches: 0,
        window_ms: 0.0,
        threshold_ms: 0.0,
        p50_ms: 0.0,
        p90_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
    }
}

const SMALL: &str = "sampler: { window_size: 20, train_size: 50 }";

/// Every export on a handle, with valid other arguments; returns each status.
fn every_call(e: *mut scale_engine) -> Vec<(&'static str, scale_status)> {
    (0..N_CALLS).map(|i| one_call(e, i)).collect()
}

const N_CALLS: usize = 12;

/// Export number `i` of [`every_call`].
fn one_call(e: *mut scale_engine, i: usize) -> (&'static str, scale_status) {
    let (k, mut key, mut count, mut size, mut len) = (b"k", 0u32, 0usize, 0usize, 0usize);
    let mut s = scale_stats::default();
    let mut buf = [0u8; 64];
    let mut name = [safer_ffi::c_char(0); 64];
    let (keys, start, end) = ([0u32], [T0], [T0 + MS]);
    let (mut sc, mut kp, mut sk) = ([0.0], [0u8], [scale_skip::None]);
    let batch = input(T0, 1, keys.as_ptr(), start.as_ptr(), end.as_ptr());
    let mut out = output(
        sc.as_mut_ptr(),
        kp.as_mut_ptr(),
        sk.as_mut_ptr(),
        null_mut(),
        0,
    );
    let svc = [k.as_ptr()];
    let lens = [1usize];
    let names = scale_span_names {
        services: svc.as_ptr(),
        service_lens: lens.as_ptr(),
        operations: svc.as_ptr(),
        operation_lens: lens.as_ptr(),
    };
    let path = std::env::temp_dir().join(format!("scale-ffi-every-call-{}", std::process::id()));
    let path = path.to_str().unwrap();
    // SAFETY: valid buffers throughout; `e` may be NULL or poisoned on purpose.
    unsafe {
        match i {
            0 => (
                "intern",
                scale_engine_intern(e, k.as_ptr(), 1, k.as_ptr(), 1, &mut key),
            ),
            1 => ("process", scale_engine_process(e, &batch, &mut out)),
            2 => (
                "process_names",
                scale_engine_process_names(e, &batch, &names, &mut out),
            ),
            3 => ("rule_count", scale_engine_rule_count(e, &mut count)),
            4 => (
                "rule_name",
                scale_engine_rule_name(e, 0, name.as_mut_ptr(), name.len(), &mut len),
            ),
            5 => ("stats", scale_engine_stats(e, &mut s)),
            6 => ("snapshot_size", scale_engine_snapshot_size(e, &mut size)),
            7 => (
                "snapshot",
                scale_engine_snapshot(e, buf.as_mut_ptr(), buf.len(), &mut len),
            ),
            8 => (
                "snapshot_to_file",
                scale_engine_snapshot_to_file(
                    e,
                    path.as_ptr(),
                    path.len(),
                    null_mut(),
                    0,
                    null_mut(),
                ),
            ),
            9 => (
                "process_chunk",
                scale_engine_process_chunk(e, &batch, 0, 1, &mut out),
            ),
            10 => {
                let mut reports = [blank_report(); 4];
                let mut nl = 0usize;
                (
                    "rule_reports",
                    scale_engine_rule_reports(
                        e,
                        T0,
                        reports.as_mut_ptr(),
                        reports.len(),
                        buf.as_mut_ptr(),
                        buf.len(),
                        &mut len,
                        &mut nl,
                    ),
                )
            }
            11 => (
                "count_budget_in_traces",
                scale_engine_count_budget_in_traces(e, 1),
            ),
            _ => unreachable!(),
        }
    }
}

#[test]
fn free_null_is_a_no_op() {
    // SAFETY: NULL is documented as accepted.
    unsafe { scale_engine_free(null_mut()) };
}

#[test]
fn null_handle_everywhere() {
    for (f, st) in every_call(null_mut()) {
        assert_eq!(st, scale_status::NullArgument, "{f}");
    }
}

/// One change to an argument struct.
type Edit<T> = fn(&mut T);

#[test]
fn null_arguments_are_refused_before_any_work() {
    let e = new(SMALL);
    let k = intern(&e, "s", "o");
    let n = 4;
    let (keys, start, end) = spans(&[(k, 5.0); 4]);
    let (mut sc, mut kp, mut sk) = (vec![-1.0; n], vec![9u8; n], vec![scale_skip::None; n]);
    let batch = input(T0, n, keys.as_ptr(), start.as_ptr(), end.as_ptr());
    let mut out = output(
        sc.as_mut_ptr(),
        kp.as_mut_ptr(),
        sk.as_mut_ptr(),
        null_mut(),
        0,
    );
    out.decisions_len = 77;
    let names = scale_span_names {
        services: null(),
        service_lens: null(),
        operations: null(),
        operation_lens: null(),
    };
    let inputs: [(&str, Edit<scale_span_batch>); 3] = [
        ("key_ids", |b| b.key_ids = null()),
        ("start_ns", |b| b.start_ns = null()),
        ("end_ns", |b| b.end_ns = null()),
    ];
    let outputs: [(&str, Edit<scale_batch_out>); 4] = [
        ("scores", |o| o.scores = null_mut()),
        ("keep", |o| o.keep = null_mut()),
        ("skip", |o| o.skip = null_mut()),
        // NULL decisions with a non-zero capacity.
        ("decisions", |o| o.decisions_cap = 3),
    ];
    // SAFETY: valid buffers, one NULL at a time.
    unsafe {
        for (what, f) in inputs {
            let mut b = batch;
            f(&mut b);
            assert_eq!(
                scale_engine_process(e.0, &b, &mut out),
                scale_status::NullArgument,
                "{what}"
            );
        }
        for (what, f) in outputs {
            let mut o = out;
            f(&mut o);
            assert_eq!(
                scale_engine_process(e.0, &batch, &mut o),
                scale_status::NullArgument,
                "{what}"
            );
            assert_eq!(o.decisions_len, 77, "{what}: not written");
        }
        // The structs themselves.
        assert_eq!(
            scale_engine_process(e.0, null(), &mut out),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_process(e.0, &batch, null_mut()),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_process_names(e.0, &batch, null(), &mut out),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_process_names(e.0, &batch, &names, &mut out),
            scale_status::NullArgument,
            "NULL name arrays"
        );
        assert_eq!(
            scale_engine_process_chunk(e.0, null(), 0, 1, &mut out),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_process_chunk(e.0, &batch, 0, 1, null_mut()),
            scale_status::NullArgument
        );
        // A misaligned struct.
        let raw = [0u64; 16];
        let odd = raw.as_ptr().cast::<u8>().wrapping_add(1);
        assert_eq!(
            scale_engine_process(e.0, odd.cast(), &mut out),
            scale_status::MisalignedPointer
        );
        assert_eq!(
            scale_engine_process(e.0, &batch, odd.cast_mut().cast()),
            scale_status::MisalignedPointer
        );
        // Other exports' outputs.
        assert_eq!(
            scale_engine_intern(e.0, b"a".as_ptr(), 1, b"b".as_ptr(), 1, null_mut()),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_intern(e.0, null(), 1, b"b".as_ptr(), 1, &mut 0),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_stats(e.0, null_mut()),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_rule_count(e.0, null_mut()),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_snapshot_size(e.0, null_mut()),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_snapshot(e.0, null_mut(), 10, &mut 0),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_snapshot(e.0, null_mut(), 0, null_mut()),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_rule_name(e.0, 0, null_mut(), 0, null_mut()),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_snapshot_to_file(e.0, null(), 3, null_mut(), 0, null_mut()),
            scale_status::NullArgument
        );
    }
    // Nothing was touched or counted.
    assert!(sc.iter().all(|&s| s == -1.0) && kp.iter().all(|&k| k == 9));
    assert_eq!(out.decisions_len, 77);
    assert_eq!(stats(&e).spans_seen, 0);
}

#[test]
fn constructor_nulls_and_messages() {
    let yaml = b"{}";
    let mut out = null_mut();
    let mut msg = [0u8; 64];
    let mut len = 0;
    // SAFETY: valid buffers, one NULL at a time.
    unsafe {
        assert_eq!(
            scale_engine_new(
                yaml.as_ptr(),
                2,
                null_mut(),
                msg.as_mut_ptr().cast(),
                64,
                &mut len
            ),
            scale_status::NullArgument
        );
        assert!(len > 0, "a message says which argument");
        assert_eq!(
            scale_engine_new(null(), 2, &mut out, msg.as_mut_ptr().cast(), 64, &mut len),
            scale_status::NullArgument
        );
        assert!(out.is_null(), "*out written only on success");
        // A NULL message buffer with a capacity is itself refused.
        assert_eq!(
            scale_engine_new(yaml.as_ptr(), 2, &mut out, null_mut(), 64, &mut len),
            scale_status::NullArgument
        );
        // The message outputs are optional.
        assert_eq!(
            scale_engine_new(yaml.as_ptr(), 2, &mut out, null_mut(), 0, null_mut()),
            scale_status::Ok
        );
        drop(H(out));
        // (NULL, 0) is the empty configuration: every default.
        let mut out = null_mut();
        assert_eq!(
            scale_engine_new(null(), 0, &mut out, null_mut(), 0, null_mut()),
            scale_status::Ok
        );
        drop(H(out));
        let snap = b"x";
        assert_eq!(
            scale_engine_restore(
                yaml.as_ptr(),
                2,
                null(),
                5,
                &mut out,
                null_mut(),
                0,
                null_mut()
            ),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_restore(
                yaml.as_ptr(),
                2,
                snap.as_ptr(),
                1,
                null_mut(),
                null_mut(),
                0,
                null_mut()
            ),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_restore_from_file(
                yaml.as_ptr(),
                2,
                null(),
                5,
                &mut out,
                null_mut(),
                0,
                null_mut()
            ),
            scale_status::NullArgument
        );
    }
}

#[test]
fn bad_yaml_names_key_and_line() {
    let (st, e, msg) = try_new(b"sampler:\n  window_size: 20\n  n_tress: 3\n");
    assert_eq!(st, scale_status::InvalidConfig);
    assert!(e.is_null());
    assert!(msg.contains("n_tress") && msg.contains("line 3"), "{msg}");
    let (st, _, msg) = try_new(b"sampler:\n  n_trees: 0\nkeys:\n  max_keys: -1\n");
    assert_eq!(st, scale_status::InvalidConfig);
    assert!(
        msg.contains("line 2: sampler.n_trees") && msg.contains("line 4: keys.max_keys"),
        "every problem: {msg}"
    );
    let (st, _, msg) = try_new(b"sampler: [unclosed");
    assert_eq!(st, scale_status::InvalidConfig, "{msg}");
}

fn try_new_with_rules(yaml: &[u8], rules: &[u8]) -> (scale_status, *mut scale_engine, String) {
    let mut out = null_mut();
    let mut msg = vec![0u8; 4096];
    let mut len = usize::MAX;
    // SAFETY: valid buffers.
    let st = unsafe {
        scale_engine_new_with_rules(
            yaml.as_ptr(),
            yaml.len(),
            rules.as_ptr(),
            rules.len(),
            &mut out,
            msg.as_mut_ptr().cast(),
            msg.len(),
            &mut len,
        )
    };
    msg.truncate(len);
    (st, out, String::from_utf8(msg).unwrap())
}

#[test]
fn new_with_rules_file() {
    let rules = "rules:\n  - name: slow\n    when: { duration_above: 10ms }\n    count: 2\n    window: 1s\n    action: { kind: horizontal, target: { kind: Deployment, name: x }, max: 3 }\n";
    let (st, e, msg) = try_new_with_rules(SMALL.as_bytes(), rules.as_bytes());
    assert_eq!(st, scale_status::Ok, "{msg}");
    let e = H(e);
    let mut n = 0;
    // SAFETY: valid buffers.
    assert_eq!(
        unsafe { scale_engine_rule_count(e.0, &mut n) },
        scale_status::Ok
    );
    assert_eq!(n, 1);
    // Problems of both texts together; the rules file's cite its own lines.
    let (st, e, msg) = try_new_with_rules(
        b"sampler:\n  n_trees: 0\n",
        rules.replace("count: 2", "count: 0").as_bytes(),
    );
    assert_eq!(st, scale_status::InvalidConfig);
    assert!(e.is_null());
    assert!(
        msg.contains("line 2: sampler.n_trees")
            && msg.contains("rules file: line 4: rules[0].count"),
        "{msg}"
    );
    // Rules in both texts are refused.
    let both = format!("{SMALL}\n{rules}");
    let (st, _, msg) = try_new_with_rules(both.as_bytes(), rules.as_bytes());
    assert_eq!(st, scale_status::InvalidConfig, "{msg}");
    // NULLs and UTF-8 as `scale_engine_new`.
    let mut out = null_mut();
    // SAFETY: valid buffers, one NULL at a time.
    unsafe {
        assert_eq!(
            scale_engine_new_with_rules(null(), 0, null(), 3, &mut out, null_mut(), 0, null_mut()),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_new_with_rules(
                null(),
                0,
                null(),
                0,
                null_mut(),
                null_mut(),
                0,
                null_mut()
            ),
            scale_status::NullArgument
        );
        assert!(out.is_null());
    }
    let (st, _, _) = try_new_with_rules(b"", b"rules: \xff");
    assert_eq!(st, scale_status::InvalidUtf8);
}

/// `scale_engine_restore_with_rules` / `scale_engine_restore_from_file_with_rules` (through
/// `file`): the snapshot plus the same two texts as `scale_engine_new_with_rules`.
fn try_restore_with_rules(
    yaml: &[u8],
    rules: &[u8],
    snap: &[u8],
    file: Option<&str>,
) -> (scale_status, *mut scale_engine, String) {
    let mut out = null_mut();
    let mut msg = vec![0u8; 4096];
    let mut len = usize::MAX;
    let (m, cap) = (msg.as_mut_ptr().cast(), msg.len());
    // SAFETY: valid buffers.
    let st = unsafe {
        match file {
            None => scale_engine_restore_with_rules(
                yaml.as_ptr(),
                yaml.len(),
                rules.as_ptr(),
                rules.len(),
                snap.as_ptr(),
                snap.len(),
                &mut out,
                m,
                cap,
                &mut len,
            ),
            Some(p) => scale_engine_restore_from_file_with_rules(
                yaml.as_ptr(),
                yaml.len(),
                rules.as_ptr(),
                rules.len(),
                p.as_ptr(),
                p.len(),
                &mut out,
                m,
                cap,
                &mut len,
            ),
        }
    };
    msg.truncate(len);
    (st, out, String::from_utf8(msg).unwrap())
}

#[test]
fn restore_with_rules_file() {
    let rules = "rules:\n  - name: slow\n    when: { duration_above: 10ms }\n    count: 3\n    window: 1h\n    action: { kind: horizontal, target: { kind: Deployment, name: x }, max: 3 }\n";
    let (st, e, msg) = try_new_with_rules(SMALL.as_bytes(), rules.as_bytes());
    assert_eq!(st, scale_status::Ok, "{msg}");
    let e = H(e);
    let k = intern(&e, "s", "o");
    // Two breaches in the rule's window: the third fires, on the restored engine too.
    process(&e, T0, &[(k, 50.0), (k, 60.0)]);
    let snap = snapshot(&e);
    let path = std::env::temp_dir().join(format!("scale-ffi-rules-{}.snap", std::process::id()));
    std::fs::write(&path, &snap).unwrap();
    let p = path.to_str().unwrap();
    // What the original does next: each restored engine must do the same.
    let (want, next) = (stats(&e), [(k, 70.0)]);
    let x = process(&e, T0 + 1, &next);
    assert_eq!(x.n_decisions, 1, "the third breach fires");
    for file in [None, Some(p)] {
        let (st, r, msg) = try_restore_with_rules(SMALL.as_bytes(), rules.as_bytes(), &snap, file);
        assert_eq!(st, scale_status::Ok, "{file:?}: {msg}");
        assert!(msg.is_empty());
        let r = H(r);
        assert_eq!(stats(&r), want, "{file:?}");
        let mut n = 0;
        // SAFETY: valid buffers.
        assert_eq!(
            unsafe { scale_engine_rule_count(r.0, &mut n) },
            scale_status::Ok
        );
        assert_eq!(n, 1, "{file:?}: the rules file's rule");
        let y = process(&r, T0 + 1, &next);
        assert_eq!(
            dbits(&y.decisions),
            dbits(&x.decisions),
            "{file:?}: the window was kept"
        );
        // The rules text's problems cite its own lines; rules in both texts are refused.
        let bad = rules.replace("count: 3", "count: 0");
        let (st, r, msg) = try_restore_with_rules(SMALL.as_bytes(), bad.as_bytes(), &snap, file);
        assert_eq!((st, r.is_null()), (scale_status::InvalidConfig, true));
        assert!(msg.contains("rules file: line 4: rules[0].count"), "{msg}");
        let both = format!("{SMALL}\n{rules}");
        let (st, _, msg) = try_restore_with_rules(both.as_bytes(), rules.as_bytes(), &snap, file);
        assert_eq!(st, scale_status::InvalidConfig, "{msg}");
        // The model must still match.
        let (st, _, msg) = try_restore_with_rules(
            b"sampler: { window_size: 21 }",
            rules.as_bytes(),
            &snap,
            file,
        );
        assert_eq!(st, scale_status::SnapshotMismatch, "{msg}");
        let (st, _, _) = try_restore_with_rules(b"", b"rules: \xff", &snap, file);
        assert_eq!(st, scale_status::InvalidUtf8);
    }
    std::fs::remove_file(&path).unwrap();
    let (st, _, msg) = try_restore_with_rules(b"", rules.as_bytes(), b"garbage!", None);
    assert_eq!(st, scale_status::InvalidSnapshot, "{msg}");
    let (st, _, msg) = try_restore_with_rules(b"", rules.as_bytes(), b"", Some(p));
    assert!(
        st == scale_status::Io && msg.contains("No such file"),
        "{msg}"
    );
    let mut out = null_mut();
    // SAFETY: valid buffers, one NULL at a time.
    unsafe {
        assert_eq!(
            scale_engine_restore_with_rules(
                null(),
                0,
                null(),
                3,
                snap.as_ptr(),
                snap.len(),
                &mut out,
                null_mut(),
                0,
                null_mut()
            ),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_restore_with_rules(
                null(),
                0,
                rules.as_ptr(),
                rules.len(),
                null(),
                4,
                &mut out,
                null_mut(),
                0,
                null_mut()
            ),
            scale_status::NullArgument
        );
        assert_eq!(
            scale_engine_restore_from_file_with_rules(
                null(),
                0,
                rules.as_ptr(),
                rules.len(),
                p.as_ptr(),
                p.len(),
                null_mut(),
                null_mut(),
                0,
                null_mut()
            ),
            scale_status::NullArgument
        );
    }
    assert!(out.is_null());
}

#[test]
fn message_is_truncated_on_a_char_boundary() {
    // "é" is 2 bytes; a 1-byte cap must not split it.
    let yaml = "rules:\n- name: é\n  count: 0\n  window: 1s\n  when: { duration_above: 1ms }\n  action: { kind: horizontal, target: { kind: Deployment, name: x }, max: 1 }\n";
    let (st, _, full) = try_new(yaml.as_bytes());
    assert_eq!(st, scale_status::InvalidConfig, "{full}");
    for cap in 0..full.len() {
        let mut out = null_mut();
        let mut msg = vec![0xAAu8; cap + 4];
        let mut len = usize::MAX;
        // SAFETY: valid buffers.
        unsafe {
            scale_engine_new(
                yaml.as_ptr(),
                yaml.len(),
                &mut out,
                msg.as_mut_ptr().cast(),
                cap,
                &mut len,
            )
        };
        assert!(len <= cap);
        let text = std::str::from_utf8(&msg[..len]).expect("valid UTF-8");
        assert!(
            full.starts_with(text) && cap.min(full.len()) - len < 4,
            "cap {cap}: {text:?}"
        );
        assert!(
            msg[cap..].iter().all(|&b| b == 0xAA),
            "no write past the cap"
        );
    }
}

#[test]
fn invalid_utf8() {
    let (st, e, msg) = try_new(b"sampler: {}\n\xff\xfe");
    assert_eq!((st, e.is_null()), (scale_status::InvalidUtf8, true));
    assert!(msg.contains("UTF-8") && msg.contains("byte 12"), "{msg}");
    let e = new(SMALL);
    let mut k = 0;
    // SAFETY: valid buffers.
    let st = unsafe { scale_engine_intern(e.0, b"\xc3".as_ptr(), 1, b"op".as_ptr(), 2, &mut k) };
    assert_eq!(st, scale_status::InvalidUtf8);
    // In a names batch a bad name skips that span only.
    let names: [&[u8]; 3] = [b"good", b"\xff", b"good"];
    let ptrs: Vec<*const u8> = names.iter().map(|n| n.as_ptr()).collect();
    let mut lens: Vec<usize> = names.iter().map(|n| n.len()).collect();
    let mut ptrs2 = ptrs.clone();
    ptrs2[2] = null();
    lens[2] = 4;
    let start = [T0; 3];
    let end = [T0 + MS; 3];
    let (mut sc, mut kp, mut sk) = ([0.0; 3], [0u8; 3], [scale_skip::None; 3]);
    let names = scale_span_names {
        services: ptrs.as_ptr(),
        service_lens: lens.as_ptr(),
        operations: ptrs2.as_ptr(),
        operation_lens: lens.as_ptr(),
    };
    // `key_ids` is not read by the names call.
    let batch = input(T0, 3, null(), start.as_ptr(), end.as_ptr());
    let mut out = output(
        sc.as_mut_ptr(),
        kp.as_mut_ptr(),
        sk.as_mut_ptr(),
        null_mut(),
        0,
    );
    // SAFETY: valid arrays of 3 (the NULL name is per-span, documented as skipped).
    let st = unsafe { scale_engine_process_names(e.0, &batch, &names, &mut out) };
    assert_eq!((st, out.decisions_len), (scale_status::Ok, 0));
    assert_eq!(
        sk,
        [
            scale_skip::None,
            scale_skip::InvalidKey,
            scale_skip::InvalidKey
        ]
    );
    assert_eq!(stats(&e).spans_skipped[5], 2);
}

#[test]
fn zero_and_mismatched_lengths() {
    let e = new(SMALL);
    let mut out = output(null_mut(), null_mut(), null_mut(), null_mut(), 0);
    // SAFETY: an empty batch with every array NULL.
    let st = unsafe { scale_engine_process(e.0, &input(T0, 0, null(), null(), null()), &mut out) };
    assert_eq!((st, out.decisions_len), (scale_status::Ok, 0));
    // Empty names are valid names.
    assert_eq!(intern(&e, "", ""), 0);
    // Lengths that cannot be real arrays are refused, not dereferenced.
    let d = std::ptr::dangling::<u64>();
    let dm = std::ptr::dangling_mut::<f64>();
    for n in [usize::MAX, u32::MAX as usize + 1, usize::MAX / 8 + 1] {
        let mut out = output(
            dm,
            std::ptr::dangling_mut(),
            std::ptr::dangling_mut(),
            null_mut(),
            0,
        );
        // SAFETY: refused before any access.
        let st = unsafe {
            scale_engine_process(e.0, &input(T0, n, std::ptr::dangling(), d, d), &mut out)
        };
        assert_eq!(st, scale_status::InvalidLength, "n = {n}");
    }
    let mut k = 0;
    // SAFETY: refused before any access.
    let st = unsafe {
        scale_engine_intern(
            e.0,
            std::ptr::dangling(),
            usize::MAX,
            b"x".as_ptr(),
            1,
            &mut k,
        )
    };
    assert_eq!(st, scale_status::InvalidLength);
    // Misaligned arrays are refused.
    let buf = [0u64; 4];
    let odd = buf.as_ptr().cast::<u8>().wrapping_add(1).cast::<u64>();
    let keys = [0u32; 2];
    let (mut sc, mut kp, mut sk) = ([0.0; 2], [0u8; 2], [scale_skip::None; 2]);
    let mut out = output(
        sc.as_mut_ptr(),
        kp.as_mut_ptr(),
        sk.as_mut_ptr(),
        null_mut(),
        0,
    );
    // SAFETY: refused before any access.
    let st = unsafe {
        scale_engine_process(
            e.0,
            &input(T0, 2, keys.as_ptr(), odd, buf.as_ptr()),
            &mut out,
        )
    };
    assert_eq!(st, scale_status::MisalignedPointer);
    // Unknown key ids skip their span; they are not an error.
    let out = process(
        &e,
        T0,
        &[
            (0, 5.0),
            (1234, 5.0),
            (SCALE_KEY_OVERFLOW, 5.0),
            (u32::MAX - 1, 5.0),
        ],
    );
    assert_eq!(out.status, scale_status::Ok);
    assert_eq!(
        out.skip,
        [
            scale_skip::None,
            scale_skip::InvalidKey,
            scale_skip::None,
            scale_skip::InvalidKey
        ]
    );
    assert!(out.scores[1].is_nan() && out.keep[1] == 0);
}

#[test]
fn bad_spans_are_skipped_with_reasons() {
    let e = new(SMALL);
    let k = intern(&e, "s", "o");
    let keys = [k; 5];
    let start = [0, T0 + 10, 5, T0, T0];
    let end = [T0, T0, 10, T0 + 2 * 86_400_000 * MS, T0 + MS];
    let (mut sc, mut kp, mut sk) = ([0.0; 5], [0u8; 5], [scale_skip::None; 5]);
    let mut out = output(
        sc.as_mut_ptr(),
        kp.as_mut_ptr(),
        sk.as_mut_ptr(),
        null_mut(),
        0,
    );
    // SAFETY: arrays of 5.
    let st = unsafe {
        scale_engine_process(
            e.0,
            &input(T0, 5, keys.as_ptr(), start.as_ptr(), end.as_ptr()),
            &mut out,
        )
    };
    assert_eq!(st, scale_status::Ok);
    assert_eq!(
        sk,
        [
            scale_skip::ZeroTimestamp,
            scale_skip::EndBeforeStart,
            scale_skip::AbsurdTimestamp,
            scale_skip::AbsurdDuration,
            scale_skip::None
        ]
    );
    let s = stats(&e);
    assert_eq!(
        (s.spans_seen, s.spans_skipped[..4].to_vec(), s.keys),
        (5, vec![1, 1, 1, 1], 1)
    );
}

#[test]
fn scores_and_keep_after_warm_up() {
    let e = new(SMALL);
    let k = intern(&e, "svc", "op");
    // Enough spans for the keep threshold to be calibrated to the 1 % budget.
    let warm: Vec<(u32, f64)> = (0..1_200).map(|i| (k, 20.0 + (i % 5) as f64)).collect();
    let out = process(&e, T0, &warm);
    assert!(
        out.scores[..20].iter().all(|s| s.is_nan()),
        "no score before the first window"
    );
    assert!(out.scores[20..].iter().all(|s| (0.0..=1.0).contains(s)));
    assert!(out.keep.iter().all(|&k| k <= 1));
    let out = process(&e, T0, &[(k, 20_000.0)]);
    assert_eq!(out.keep, [1], "1000x slower is kept: {out:?}");
    let s = stats(&e);
    assert_eq!(s.spans_seen, 1_201);
    assert!(s.spans_kept >= 1 && s.spans_kept <= 30, "{s:?}");
}

const RULES: &str = "sampler: { window_size: 20, train_size: 1000000 }
rules:
- name: a
  match: { service: a }
  when: { duration_above: 100ms }
  count: 1
  window: 1h
  action: { kind: horizontal, target: { kind: Deployment, name: a }, max: 5 }
- name: b
  match: { service: b }
  when: { duration_above: 100ms }
  count: 1
  window: 1h
  action: { kind: vertical, target: { kind: Deployment, name: b }, max: 5 }
- name: c
  match: { service: c }
  when: { duration_above: 100ms }
  count: 2
  window: 1h
  action: { kind: horizontal, target: { kind: Deployment, name: c }, max: 5 }
";

#[test]
fn decisions_and_truncation() {
    let e = new(RULES);
    let (a, b, c) = (
        intern(&e, "a", "x"),
        intern(&e, "b", "x"),
        intern(&e, "c", "x"),
    );
    let batch = [(a, 500.0), (b, 5.0), (b, 300.0), (c, 200.0), (c, 200.0)];
    let full = process_cap(&e, T0 + 7, &batch, 8);
    assert_eq!((full.status, full.n_decisions), (scale_status::Ok, 3));
    let d = &full.decisions;
    assert_eq!(
        (
            d[0].rule_index,
            d[0].action,
            d[0].span_index,
            d[0].observed_ms,
            d[0].time_ns
        ),
        (0, scale_action::Horizontal, 0, 500.0, T0 + 7)
    );
    assert_eq!(
        (d[1].rule_index, d[1].action, d[1].span_index),
        (1, scale_action::Vertical, 2)
    );
    assert_eq!(
        (d[2].rule_index, d[2].count, d[2].span_index, d[2].conflated),
        (2, 2, 4, 0)
    );
    assert_eq!(d[1].trace_id, [2; 16]);
    assert_eq!(d[1].span_id, [2; 8]);
    assert_eq!(d[0].threshold_ms, 100.0);
    assert!(d[0].score.is_nan() || (0.0..=1.0).contains(&d[0].score));
    assert!(d[0].load_ratio.is_nan(), "not an auto rule");
    assert_eq!(d[0].window_ms, 3_600_000.0);
    // Same batch again on a twin engine, with room for one decision.
    let e2 = new(RULES);
    for s in ["a", "b", "c"] {
        intern(&e2, s, "x");
    }
    let cut = process_cap(&e2, T0 + 7, &batch, 1);
    assert_eq!(
        (cut.status, cut.n_decisions, cut.decisions.len()),
        (scale_status::DecisionsTruncated, 3, 1)
    );
    assert_eq!(dbits(&cut.decisions), dbits(&full.decisions[..1]));
    assert_eq!(
        (cut.score_bits(), &cut.keep, &cut.skip),
        (full.score_bits(), &full.keep, &full.skip),
        "per-span outputs still complete"
    );
    // Capacity 0 with a NULL buffer: just the count.
    let e3 = new(RULES);
    for s in ["a", "b", "c"] {
        intern(&e3, s, "x");
    }
    let none = process_cap(&e3, T0 + 7, &batch, 0);
    assert_eq!(
        (none.status, none.n_decisions),
        (scale_status::DecisionsTruncated, 3)
    );
    assert_eq!(stats(&e3).decisions, 3);
}

#[test]
fn rule_names() {
    let e = new(RULES);
    let mut count = 0;
    let mut buf = [safer_ffi::c_char(0); 8];
    let mut len = 0;
    // SAFETY: valid buffers.
    unsafe {
        assert_eq!(scale_engine_rule_count(e.0, &mut count), scale_status::Ok);
        assert_eq!(count, 3);
        assert_eq!(
            scale_engine_rule_name(e.0, 2, buf.as_mut_ptr(), buf.len(), &mut len),
            scale_status::Ok
        );
        assert_eq!((len, buf[0].0), (1, b'c'));
        assert_eq!(
            scale_engine_rule_name(e.0, 3, buf.as_mut_ptr(), buf.len(), &mut len),
            scale_status::IndexOutOfRange
        );
        assert_eq!(
            scale_engine_rule_name(e.0, 0, null_mut(), 0, &mut len),
            scale_status::BufferTooSmall
        );
        assert_eq!(len, 1, "the size needed");
    }
}

#[test]
fn rule_reports_carry_each_window_and_never_lose_one_to_a_small_buffer() {
    let per_service = "sampler: { window_size: 20, train_size: 1000000 }
rules:
- name: a
  match: { service: a }
  when: { duration_above: 100ms }
  count: 3
  window: 10s
  action: { kind: horizontal, target: { kind: Deployment, name: a }, max: 5 }
- name: each
  match: { service: \"*\" }
  when: { duration_above: 100ms }
  count: 3
  window: 10s
  action: { kind: horizontal, target: { kind: Deployment, name: \"${service}\" }, max: 5 }
";
    let e = new(per_service);
    let (a, svc) = (intern(&e, "a", "op"), intern(&e, "checkout", "op"));
    process(&e, T0 + SEC, &[(a, 20.0), (a, 500.0), (svc, 30.0)]);
    let blank = blank_report();
    let mut reports = [blank; 8];
    let mut names = [0u8; 64];
    let (mut n, mut nl) = (0usize, 0usize);
    // SAFETY: valid buffers.
    unsafe {
        // Too small: the sizes needed, and nothing drained.
        assert_eq!(
            scale_engine_rule_reports(
                e.0,
                T0 + 2 * SEC,
                reports.as_mut_ptr(),
                1,
                names.as_mut_ptr(),
                64,
                &mut n,
                &mut nl
            ),
            scale_status::BufferTooSmall
        );
        // a (fixed), each/a, each/checkout
        assert_eq!((n, nl), (3, 1 + 8));
        assert_eq!(
            scale_engine_rule_reports(
                e.0,
                T0 + 2 * SEC,
                reports.as_mut_ptr(),
                8,
                null_mut(),
                0,
                &mut n,
                &mut nl
            ),
            scale_status::BufferTooSmall
        );
        assert_eq!(
            scale_engine_rule_reports(
                e.0,
                T0 + 2 * SEC,
                reports.as_mut_ptr(),
                8,
                names.as_mut_ptr(),
                64,
                &mut n,
                &mut nl
            ),
            scale_status::Ok
        );
    }
    assert_eq!((n, nl), (3, 9));
    let name = |r: &scale_rule_report| {
        std::str::from_utf8(
            &names[r.service_offset as usize..(r.service_offset + r.service_len) as usize],
        )
        .unwrap()
        .to_string()
    };
    let fixed = reports[..n].iter().find(|r| r.rule_index == 0).unwrap();
    assert_eq!(
        (fixed.matched, fixed.breaches, fixed.service_len),
        (2, 1, 0)
    );
    assert_eq!(fixed.max_ms, 500.0);
    assert_eq!((fixed.since_ns, fixed.until_ns), (T0 + SEC, T0 + 2 * SEC));
    let each: Vec<(String, u64)> = reports[..n]
        .iter()
        .filter(|r| r.rule_index == 1)
        .map(|r| (name(r), r.matched))
        .collect();
    assert_eq!(
        each,
        vec![("a".to_string(), 2), ("checkout".to_string(), 1)]
    );
    // A new interval: nothing matched, NaN quantiles.
    // SAFETY: valid buffers.
    unsafe {
        assert_eq!(
            scale_engine_rule_reports(
                e.0,
                T0 + 3 * SEC,
                reports.as_mut_ptr(),
                8,
                names.as_mut_ptr(),
                64,
                &mut n,
                &mut nl
            ),
            scale_status::Ok
        );
    }
    assert!(
        reports[..n]
            .iter()
            .all(|r| r.matched == 0 && r.p50_ms.is_nan())
    );
}

#[test]
fn snapshot_restore_round_trip() {
    let e = new(RULES);
    let (a, c) = (intern(&e, "a", "x"), intern(&e, "c", "x"));
    let batch: Vec<(u32, f64)> = (0..300)
        .map(|i| (if i % 3 == 0 { a } else { c }, 5.0 + (i % 17) as f64 * 3.0))
        .collect();
    process(&e, T0, &batch);
    process(&e, T0, &[(c, 500.0)]); // one breach of rule c in its window
    let snap = snapshot(&e);
    let (st, r, msg) = restore(RULES, &snap);
    assert_eq!(st, scale_status::Ok, "{msg}");
    let r = H(r);
    assert_eq!(stats(&r), stats(&e));
    assert_eq!(intern(&r, "c", "x"), c, "ids survive");
    let next = [(c, 700.0), (a, 5.0), (a, 6.0)];
    let (x, y) = (process(&e, T0 + 1, &next), process(&r, T0 + 1, &next));
    assert_eq!(
        (x.score_bits(), &x.keep, dbits(&x.decisions), x.n_decisions),
        (y.score_bits(), &y.keep, dbits(&y.decisions), 1)
    );
    // Too small a buffer: the size needed, nothing written.
    let mut buf = vec![7u8; 10];
    let mut len = 0;
    // SAFETY: valid buffers.
    assert_eq!(
        unsafe { scale_engine_snapshot(e.0, buf.as_mut_ptr(), buf.len(), &mut len) },
        scale_status::BufferTooSmall
    );
    assert!(len > 10 && buf.iter().all(|&b| b == 7));
    // Corrupt, truncated and mismatched snapshots.
    let (st, out, msg) = restore(RULES, b"garbage!garbage!");
    assert_eq!(
        (st, out.is_null()),
        (scale_status::InvalidSnapshot, true),
        "{msg}"
    );
    assert!(msg.contains("snapshot"), "{msg}");
    let (st, _, _) = restore(RULES, &snap[..snap.len() / 2]);
    assert_eq!(st, scale_status::InvalidSnapshot);
    let (st, _, msg) = restore("sampler: { window_size: 21 }", &snap);
    assert_eq!(st, scale_status::SnapshotMismatch, "{msg}");
    let (st, _, _) = restore("sampler: [", &snap);
    assert_eq!(st, scale_status::InvalidConfig);
}

#[test]
fn snapshot_file_round_trip() {
    let dir = std::env::temp_dir().join(format!("scale-ffi-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("engine.snap");
    let p = path.to_str().unwrap();
    let e = new(SMALL);
    let k = intern(&e, "s", "o");
    process(
        &e,
        T0,
        &(0..100).map(|i| (k, 1.0 + i as f64)).collect::<Vec<_>>(),
    );
    let mut msg = [0u8; 256];
    let mut len = 99;
    // SAFETY: valid buffers.
    unsafe {
        assert_eq!(
            scale_engine_snapshot_to_file(
                e.0,
                p.as_ptr(),
                p.len(),
                msg.as_mut_ptr().cast(),
                256,
                &mut len
            ),
            scale_status::Ok
        );
        assert_eq!(len, 0);
        let mut out = null_mut();
        let y = SMALL.as_bytes();
        assert_eq!(
            scale_engine_restore_from_file(
                y.as_ptr(),
                y.len(),
                p.as_ptr(),
                p.len(),
                &mut out,
                null_mut(),
                0,
                null_mut()
            ),
            scale_status::Ok
        );
        let r = H(out);
        assert_eq!(stats(&r), stats(&e));
        assert_eq!(std::fs::read(&path).unwrap(), snapshot(&e));
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // Missing file and unwritable directory: I/O errors with the OS message.
        let missing = dir.join("missing.snap");
        let m = missing.to_str().unwrap();
        let st = scale_engine_restore_from_file(
            y.as_ptr(),
            y.len(),
            m.as_ptr(),
            m.len(),
            &mut out,
            msg.as_mut_ptr().cast(),
            256,
            &mut len,
        );
        let text = std::str::from_utf8(&msg[..len]).unwrap();
        assert_eq!(st, scale_status::Io);
        assert!(
            text.contains("missing.snap") && text.contains("No such file"),
            "{text}"
        );
        let bad = dir.join("no/such/dir/x.snap");
        let b = bad.to_str().unwrap();
        assert_eq!(
            scale_engine_snapshot_to_file(
                e.0,
                b.as_ptr(),
                b.len(),
                msg.as_mut_ptr().cast(),
                256,
                &mut len
            ),
            scale_status::Io
        );
        assert_eq!(
            scale_engine_snapshot_to_file(
                e.0,
                b"".as_ptr(),
                0,
                msg.as_mut_ptr().cast(),
                256,
                &mut len
            ),
            scale_status::Io
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn forced_panic_becomes_a_status_and_poisons() {
    let e = new(SMALL);
    let k = intern(&e, "s", "o");
    e.shared().panic_next.store(true, Ordering::SeqCst);
    let out = process(&e, T0, &[(k, 5.0)]);
    assert_eq!(out.status, scale_status::Panic);
    assert_eq!(out.scores, [-1.0], "outputs untouched");
    for (f, st) in every_call(e.0) {
        assert_eq!(st, scale_status::Poisoned, "{f}");
    }
    // Free still works on a poisoned handle (H's drop).
}

#[test]
fn forced_panic_in_each_export() {
    // Every export on a handle crosses the same boundary: each turns a panic into
    // SCALE_STATUS_PANIC, poisons the handle, and never unwinds into the caller.
    for i in 0..N_CALLS {
        let e = new(RULES);
        intern(&e, "k", "k");
        e.shared().panic_next.store(true, Ordering::SeqCst);
        let (f, st) = one_call(e.0, i);
        assert_eq!(st, scale_status::Panic, "{f}");
        assert!(e.shared().is_poisoned(), "{f}");
    }
}

#[test]
fn poisoned_handle_refuses_every_call() {
    let e = new(SMALL);
    e.shared().poison();
    for (f, st) in every_call(e.0) {
        assert_eq!(st, scale_status::Poisoned, "{f}");
    }
}

#[test]
fn status_text() {
    for s in scale_status::ALL {
        // SAFETY: static strings.
        let t = unsafe { std::ffi::CStr::from_ptr(scale_status_str(s as i32).cast()) };
        assert!(!t.to_bytes().is_empty());
        assert_eq!(scale_status::from_code(s as i32), Some(s));
    }
    // SAFETY: static strings.
    let t = unsafe { std::ffi::CStr::from_ptr(scale_status_str(0).cast()) };
    assert_eq!(t.to_str().unwrap(), "unknown status code");
    // Blocks of 100 by origin, never renumbered: pin every value.
    let codes: Vec<i32> = scale_status::ALL.iter().map(|s| *s as i32).collect();
    assert_eq!(
        codes,
        [
            1000, 1001, 1100, 1101, 1102, 1103, 1104, 1105, 1106, 1200, 1300, 1301, 1400, 1500,
            1501
        ]
    );
}

#[test]
fn layout_is_stable() {
    assert_eq!(std::mem::size_of::<scale_decision>(), 96);
    assert_eq!(std::mem::size_of::<scale_stats>(), 96);
    assert_eq!(std::mem::size_of::<scale_skip>(), 1);
    assert_eq!(std::mem::size_of::<scale_status>(), 4);
}

/// Several threads hammer one handle. Each thread has its own service, rule and batches, so
/// what the design promises is per-thread deterministic: skip reasons, keep flags while
/// training, and every decision (rules only see their own service's spans, and each batch is
/// processed atomically). Scores are *not* promised: the model is shared by all keys, so they
/// depend on how the threads' batches interleave.
#[test]
fn threads_hammering_one_handle() {
    const THREADS: usize = 4;
    const BATCHES: usize = 60;
    let mut yaml = String::from("sampler: { window_size: 50, train_size: 1000000 }\nrules:\n");
    for t in 0..THREADS {
        yaml += &format!(
            "- name: r{t}\n  match: {{ service: s{t} }}\n  when: {{ duration_above: 100ms }}\n  count: {}\n  window: 1h\n  action: {{ kind: horizontal, target: {{ kind: Deployment, name: d{t} }}, max: 5 }}\n",
            t + 2
        );
    }
    let batch_of = |t: usize, b: usize, key: u32| -> Vec<(u32, f64)> {
        (0..64)
            .map(|i| {
                (
                    if (i + b).is_multiple_of(31) { 999 } else { key },
                    if (i * 7 + b + t).is_multiple_of(13) {
                        250.0
                    } else {
                        10.0 + (i % 9) as f64
                    },
                )
            })
            .collect()
    };
    type Run = Vec<(Vec<scale_skip>, Vec<u8>, Vec<scale_decision>)>;
    let run_thread = |e: &H, t: usize, now_base: u64| -> Run {
        let key = intern(e, &format!("s{t}"), "op");
        (0..BATCHES)
            .map(|b| {
                let o = process(e, now_base + b as u64, &batch_of(t, b, key));
                assert_eq!(o.status, scale_status::Ok);
                (o.skip, o.keep, o.decisions)
            })
            .collect()
    };
    // Concurrent run on one handle.
    let shared = new(&yaml);
    let results: Vec<Run> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn({
                    let h = &shared;
                    move || run_thread(h, t, T0)
                })
            })
            .collect();
        // Readers at the same time.
        s.spawn(|| {
            for _ in 0..20 {
                stats(&shared);
                snapshot(&shared);
            }
        });
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let s = stats(&shared);
    assert_eq!(s.spans_seen, (THREADS * BATCHES * 64) as u64);
    assert_eq!(s.keys, THREADS as u64);
    // Serial reference: each thread alone on its own engine.
    for (t, got) in results.iter().enumerate() {
        let solo = new(&yaml);
        for u in 0..THREADS {
            intern(&solo, &format!("s{u}"), "op");
        }
        let want = run_thread(&solo, t, T0);
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.0, w.0, "thread {t} batch {b}: skips");
            assert_eq!(g.1, w.1, "thread {t} batch {b}: keep flags (training)");
            let strip = |d: &[scale_decision]| {
                d.iter()
                    .map(|d| {
                        (
                            d.rule_index,
                            d.span_index,
                            d.observed_ms.to_bits(),
                            d.time_ns,
                            d.trace_id,
                            d.conflated,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&g.2), strip(&w.2), "thread {t} batch {b}: decisions");
        }
        assert!(
            want.iter().any(|w| !w.2.is_empty()),
            "the test exercises decisions"
        );
    }
    assert!(!shared.shared().is_poisoned());
}

// --- scale_engine_process_chunk --------------------------------------------------------------

/// Spans `(key, duration_ms)` with their evidence ids, as `process_cap` builds them.
struct Spans {
    keys: Vec<u32>,
    start: Vec<u64>,
    end: Vec<u64>,
    trace: Vec<u8>,
    span: Vec<u8>,
}

impl Spans {
    /// The input struct of spans `lo..lo + n`.
    fn input(&self, now: u64, lo: usize, n: usize) -> scale_span_batch {
        scale_span_batch {
            trace_ids: self.trace[16 * lo..].as_ptr(),
            span_ids: self.span[8 * lo..].as_ptr(),
            ..input(
                now,
                n,
                self.keys[lo..].as_ptr(),
                self.start[lo..].as_ptr(),
                self.end[lo..].as_ptr(),
            )
        }
    }
}

fn spans_with_ids(v: &[(u32, f64)]) -> Spans {
    let (keys, start, end) = spans(v);
    let n = v.len();
    Spans {
        keys,
        start,
        end,
        trace: (0..n * 16).map(|i| (i / 16) as u8).collect(),
        span: (0..n * 8).map(|i| (i / 8) as u8).collect(),
    }
}

/// One chunk: spans `lo..hi` of `s`, outputs into `o`'s matching slots; returns the status and
/// `*decisions_len`.
fn chunk_call(
    e: &H,
    now: u64,
    s: &Spans,
    lo: usize,
    hi: usize,
    last: bool,
    o: &mut Out,
    cap: usize,
) -> (scale_status, usize) {
    let mut out = out_args(o, lo, cap);
    // SAFETY: every array has at least `hi` (or `cap`) elements; the chunk reads `lo..hi`.
    let st = unsafe {
        scale_engine_process_chunk(
            e.0,
            &s.input(now, lo, hi - lo),
            lo,
            u8::from(last),
            &mut out,
        )
    };
    (st, out.decisions_len)
}

/// The batch `v` in chunks of `chunk` spans through `scale_engine_process_chunk` (the last
/// one possibly short; an empty batch is one empty last chunk).
fn process_chunked(e: &H, now: u64, v: &[(u32, f64)], chunk: usize, cap: usize) -> Out {
    let s = spans_with_ids(v);
    let n = v.len();
    let mut o = Out {
        status: scale_status::Ok,
        scores: vec![-1.0; n],
        keep: vec![9; n],
        skip: vec![scale_skip::None; n],
        decisions: Vec::with_capacity(cap),
        n_decisions: usize::MAX,
    };
    let mut lo = 0;
    loop {
        let hi = (lo + chunk).min(n);
        let last = hi == n;
        let (st, nd) = chunk_call(e, now, &s, lo, hi, last, &mut o, cap);
        if last {
            (o.status, o.n_decisions) = (st, nd);
            break;
        }
        assert_eq!(
            (st, nd),
            (scale_status::Ok, 0),
            "chunk {lo}..{hi}: no decisions before the last chunk"
        );
        // Other calls between two chunks do not disturb the batch in progress.
        stats(e);
        lo = hi;
    }
    set_decisions(&mut o, cap);
    o
}

/// Two rules share a target (conflated together), one has its own; `count: 1` fires on every
/// breach, so batches carry many decisions, conflated across chunks.
const CHUNK_RULES: &str = "sampler: { window_size: 20, train_size: 300 }
rules:
- name: a
  match: { service: a }
  when: { duration_above: 100ms }
  count: 1
  window: 1h
  action: { kind: horizontal, target: { kind: Deployment, name: shared }, max: 5 }
- name: b
  match: { service: b }
  when: { duration_above: 50ms }
  count: 2
  window: 1h
  action: { kind: horizontal, target: { kind: Deployment, name: shared }, max: 5 }
- name: c
  match: { service: c }
  when: { duration_above: 100ms }
  count: 1
  window: 1h
  action: { kind: vertical, target: { kind: Deployment, name: own }, max: 5 }
";

/// Batch `b` of `n` spans over services a, b, c and an unknown key, with slow spans here and
/// there and a few bad timings.
fn chunk_batch(keys: [u32; 3], b: usize, n: usize) -> Vec<(u32, f64)> {
    (0..n)
        .map(|i| {
            let key = if (i + b).is_multiple_of(41) {
                9_999
            } else {
                keys[(i * 7 + b) % 3]
            };
            let d = match (i * 13 + b * 5) % 29 {
                0 => 400.0,
                1 => 75.0,
                2 => -1.0, // end before start: skipped
                x => 5.0 + x as f64,
            };
            (key, d)
        })
        .collect()
}

fn chunk_engine() -> (H, [u32; 3]) {
    let e = new(CHUNK_RULES);
    let keys = [
        intern(&e, "a", "x"),
        intern(&e, "b", "x"),
        intern(&e, "c", "x"),
    ];
    (e, keys)
}

/// The chunked path's observable results equal one call per batch: per-span verdicts, and
/// decisions conflated over the whole batch with batch-relative span indices, for chunk sizes
/// from 1 to more than the batch, over enough batches to train the model and keep spans.
#[test]
fn chunked_batches_equal_whole_batches() {
    for chunk in [1, 5, 32, 64, 200, 1000] {
        let (whole, keys) = chunk_engine();
        let (chunked, _) = chunk_engine();
        let (mut conflated_across, mut late_index, mut kept) = (false, false, 0);
        for (b, n) in [0, 1, 63, 64, 65, 200, 512, 511, 300, 0, 513]
            .into_iter()
            .enumerate()
        {
            let v = chunk_batch(keys, b, n);
            let now = T0 + b as u64 * 1_000 * MS;
            let w = process_cap(&whole, now, &v, 64);
            let c = process_chunked(&chunked, now, &v, chunk, 64);
            assert_eq!(w.status, scale_status::Ok, "chunk {chunk} batch {b}");
            assert_eq!(
                (c.status, c.n_decisions),
                (w.status, w.n_decisions),
                "chunk {chunk} batch {b}: status, decisions"
            );
            assert_eq!(
                c.score_bits(),
                w.score_bits(),
                "chunk {chunk} batch {b}: scores"
            );
            assert_eq!(
                (&c.keep, &c.skip),
                (&w.keep, &w.skip),
                "chunk {chunk} batch {b}: keep, skip"
            );
            assert_eq!(
                dbits(&c.decisions),
                dbits(&w.decisions),
                "chunk {chunk} batch {b}: decisions"
            );
            assert_eq!(
                stats(&chunked),
                stats(&whole),
                "chunk {chunk} batch {b}: counters"
            );
            kept += w.keep.iter().filter(|&&k| k == 1).count();
            for d in &w.decisions {
                // A decision on a span past the first chunk (its index is batch-relative).
                late_index |= d.span_index as usize >= chunk;
                // A decision that absorbed others, in a batch of several chunks.
                conflated_across |= d.conflated > 0 && n > chunk;
            }
        }
        assert!(kept > 0, "chunk {chunk}: the batches keep spans");
        assert!(
            (late_index && conflated_across) || chunk >= 200,
            "chunk {chunk}: late decisions and conflation across chunks are exercised"
        );
    }
}

/// One `scale_engine_process` per chunk would not do: it conflates per chunk and numbers spans
/// per chunk. (Shows `chunked_batches_equal_whole_batches` tests something.)
#[test]
fn naive_chunking_would_differ() {
    let (whole, keys) = chunk_engine();
    let (naive, _) = chunk_engine();
    let v = chunk_batch(keys, 3, 256);
    let w = process_cap(&whole, T0, &v, 64);
    let mut decisions = Vec::new();
    for part in v.chunks(32) {
        decisions.extend(process_cap(&naive, T0, part, 64).decisions);
    }
    assert!(
        decisions.len() > w.decisions.len(),
        "{} per-chunk vs {} whole",
        decisions.len(),
        w.decisions.len()
    );
}

#[test]
fn chunked_truncation_as_whole_batch() {
    let (whole, keys) = chunk_engine();
    let (chunked, _) = chunk_engine();
    let v = chunk_batch(keys, 2, 400);
    let w = process_cap(&whole, T0, &v, 1);
    let c = process_chunked(&chunked, T0, &v, 32, 1);
    assert_eq!(
        (w.status, w.n_decisions),
        (scale_status::DecisionsTruncated, 2)
    );
    assert_eq!(
        (c.status, c.n_decisions, dbits(&c.decisions)),
        (w.status, w.n_decisions, dbits(&w.decisions))
    );
    assert_eq!(
        (c.score_bits(), &c.keep, &c.skip),
        (w.score_bits(), &w.keep, &w.skip)
    );
    assert_eq!(
        stats(&chunked),
        stats(&whole),
        "truncated decisions are counted"
    );
}

/// Out-of-sequence chunks are refused with nothing processed and the batch in progress kept;
/// a new batch (`first_index` 0) abandons an unfinished one.
#[test]
fn chunks_out_of_sequence() {
    let (e, keys) = chunk_engine();
    let v = chunk_batch(keys, 1, 96);
    let s = spans_with_ids(&v);
    let fresh = |n: usize| Out {
        status: scale_status::Ok,
        scores: vec![-1.0; n],
        keep: vec![9; n],
        skip: vec![scale_skip::None; n],
        decisions: Vec::with_capacity(8),
        n_decisions: 0,
    };
    let mut o = fresh(96);
    let untouched = |o: &Out, lo: usize, hi: usize| {
        o.scores[lo..hi].iter().all(|&x| x == -1.0) && o.keep[lo..hi].iter().all(|&k| k == 9)
    };
    // No batch in progress: only first_index 0 is accepted.
    assert_eq!(
        chunk_call(&e, T0, &s, 32, 64, false, &mut o, 8).0,
        scale_status::ChunkOutOfSequence
    );
    assert_eq!(
        chunk_call(&e, T0, &s, 32, 64, true, &mut o, 8).0,
        scale_status::ChunkOutOfSequence
    );
    assert!(untouched(&o, 0, 96));
    assert_eq!(stats(&e).spans_seen, 0);
    assert_eq!(
        chunk_call(&e, T0, &s, 0, 32, false, &mut o, 8),
        (scale_status::Ok, 0)
    );
    // A gap, an overlap, another clock: refused, nothing processed.
    for (lo, hi, now) in [(48, 64, T0), (16, 48, T0), (33, 64, T0), (32, 64, T0 + 1)] {
        assert_eq!(
            chunk_call(&e, now, &s, lo, hi, false, &mut o, 8).0,
            scale_status::ChunkOutOfSequence,
            "{lo}..{hi} at {now}"
        );
    }
    assert!(untouched(&o, 32, 96));
    assert_eq!(stats(&e).spans_seen, 32);
    // The batch in progress continues as if nothing happened; then equals a whole batch.
    assert_eq!(
        chunk_call(&e, T0, &s, 32, 64, false, &mut o, 8),
        (scale_status::Ok, 0)
    );
    let (st, nd) = chunk_call(&e, T0, &s, 64, 96, true, &mut o, 8);
    let (w, _) = chunk_engine();
    let want = process_cap(&w, T0, &v, 8);
    assert_eq!((st, nd), (want.status, want.n_decisions));
    // SAFETY: the last chunk wrote min(8, nd) decisions.
    unsafe { o.decisions.set_len(nd.min(8)) };
    assert_eq!(
        (o.score_bits(), dbits(&o.decisions)),
        (want.score_bits(), dbits(&want.decisions))
    );
    assert_eq!(stats(&e), stats(&w));
    // After the last chunk, the batch is closed.
    assert_eq!(
        chunk_call(&e, T0, &s, 96, 96, true, &mut o, 8).0,
        scale_status::ChunkOutOfSequence
    );
    // An unfinished batch is abandoned by the next first chunk: its decisions are dropped.
    let slow = spans_with_ids(&[(keys[0], 500.0); 4]);
    let mut o = fresh(4);
    assert_eq!(
        chunk_call(&e, T0, &slow, 0, 2, false, &mut o, 8),
        (scale_status::Ok, 0)
    );
    let (st, nd) = chunk_call(&e, T0, &slow, 0, 4, true, &mut o, 8);
    assert_eq!((st, nd), (scale_status::Ok, 1));
    // SAFETY: one decision written.
    unsafe { o.decisions.set_len(1) };
    assert_eq!(
        (o.decisions[0].span_index, o.decisions[0].conflated),
        (0, 3),
        "only the new batch's four breaches"
    );
}

#[test]
fn chunk_bad_arguments() {
    let (e, keys) = chunk_engine();
    let v = chunk_batch(keys, 0, 8);
    let s = spans_with_ids(&v);
    let (mut sc, mut kp, mut sk) = (vec![-1.0; 8], vec![9u8; 8], vec![scale_skip::None; 8]);
    let batch = s.input(T0, 0, 8);
    let mut out = output(
        sc.as_mut_ptr(),
        kp.as_mut_ptr(),
        sk.as_mut_ptr(),
        null_mut(),
        0,
    );
    out.decisions_len = 77;
    let call = |e: *mut scale_engine, first: usize, b: scale_span_batch, mut o: scale_batch_out| {
        // SAFETY: valid buffers of 8, one bad argument at a time; refused before any access.
        let st = unsafe { scale_engine_process_chunk(e, &b, first, 1, &mut o) };
        assert_eq!(o.decisions_len, 77, "not written");
        st
    };
    assert_eq!(call(null_mut(), 0, batch, out), scale_status::NullArgument);
    assert_eq!(
        call(
            e.0,
            0,
            scale_span_batch {
                key_ids: null(),
                ..batch
            },
            out
        ),
        scale_status::NullArgument
    );
    assert_eq!(
        call(
            e.0,
            0,
            batch,
            scale_batch_out {
                scores: null_mut(),
                ..out
            }
        ),
        scale_status::NullArgument
    );
    assert_eq!(
        call(
            e.0,
            0,
            batch,
            scale_batch_out {
                decisions_cap: 2,
                ..out
            }
        ),
        scale_status::NullArgument
    );
    // SAFETY: refused before any access.
    assert_eq!(
        unsafe { scale_engine_process_chunk(e.0, &batch, 0, 1, null_mut()) },
        scale_status::NullArgument
    );
    // The batch's indices must fit u32, like a whole batch's.
    for (first, n) in [
        (u32::MAX as usize, 1),
        (u32::MAX as usize - 7, 8),
        (usize::MAX, 1),
        (usize::MAX - 3, 8),
    ] {
        assert_eq!(
            call(e.0, first, scale_span_batch { n, ..batch }, out),
            scale_status::InvalidLength,
            "{first} + {n}"
        );
    }
    let huge = scale_span_batch {
        n: u32::MAX as usize + 1,
        key_ids: std::ptr::dangling(),
        ..batch
    };
    assert_eq!(call(e.0, 0, huge, out), scale_status::InvalidLength);
    let odd = s.start.as_ptr().cast::<u8>().wrapping_add(1).cast::<u64>();
    assert_eq!(
        call(
            e.0,
            0,
            scale_span_batch {
                start_ns: odd,
                ..batch
            },
            out
        ),
        scale_status::MisalignedPointer
    );
    assert!(sc.iter().all(|&x| x == -1.0) && kp.iter().all(|&k| k == 9));
    assert_eq!(stats(&e).spans_seen, 0);
    // Empty chunks: a batch of one empty chunk, and an empty last chunk after a full one.
    let mut o = Out {
        status: scale_status::Ok,
        scores: vec![],
        keep: vec![],
        skip: vec![],
        decisions: vec![],
        n_decisions: 0,
    };
    assert_eq!(
        chunk_call(&e, T0, &spans_with_ids(&[]), 0, 0, true, &mut o, 0),
        (scale_status::Ok, 0)
    );
    let (whole, _) = chunk_engine();
    let w = process_cap(&whole, T0, &v, 8);
    let mut o = Out {
        status: scale_status::Ok,
        scores: vec![-1.0; 8],
        keep: vec![9; 8],
        skip: vec![scale_skip::None; 8],
        decisions: Vec::with_capacity(8),
        n_decisions: 0,
    };
    assert_eq!(
        chunk_call(&e, T0, &s, 0, 8, false, &mut o, 8),
        (scale_status::Ok, 0)
    );
    assert_eq!(
        chunk_call(&e, T0, &s, 8, 8, true, &mut o, 8),
        (w.status, w.n_decisions)
    );
}

/// Chunked batches' decisions are counted by the engine itself, so snapshots carry them.
#[test]
fn chunked_decisions_and_snapshots() {
    let (e, keys) = chunk_engine();
    let c = process_chunked(&e, T0, &chunk_batch(keys, 0, 300), 32, 64);
    assert!(c.n_decisions > 0);
    let (st, r, msg) = restore(CHUNK_RULES, &snapshot(&e));
    assert_eq!(st, scale_status::Ok, "{msg}");
    let r = H(r);
    let (a, b) = (stats(&e), stats(&r));
    assert_eq!(a.decisions, c.n_decisions as u64);
    assert_eq!(b, a);
}

/// Counted in traces, a chunked batch's late marks (spans of earlier chunks marked at the
/// batch's end, when a fault's onset showed) come in the last chunk's `late_keep`; with them
/// applied, `keep` equals one call per batch. The last chunk needs room for the whole batch.
#[test]
fn chunked_late_marks_equal_whole_batches() {
    let cfg = "sampler: { window_size: 20, train_size: 300 }";
    let (whole, chunked) = (new(cfg), new(cfg));
    let key = intern(&whole, "a", "x");
    assert_eq!(intern(&chunked, "a", "x"), key);
    for e in [&whole, &chunked] {
        // SAFETY: a live handle.
        assert_eq!(
            unsafe { scale_engine_count_budget_in_traces(e.0, 1) },
            scale_status::Ok
        );
    }
    // Ordinary spans: log-normal around 10 ms (sigma 0.3); then 2.2 times the median (rare,
    // 2.6 sigma) from span 28 of the last batch on.
    let mut rng = scale_core::rng::SplitMix64::new(5);
    let mut normal = || {
        let (u, v) = (rng.next_f64().max(1e-12), rng.next_f64());
        10.0 * (0.3 * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()).exp()
    };
    let (chunk, n) = (32, 200);
    // Enough batches for the engine to measure spans per trace (TRACE_BUDGET_WINDOW spans; the
    // test's trace ids repeat every batch).
    for b in 0..90u64 {
        let fault = b == 89;
        let v: Vec<(u32, f64)> = (0..n)
            .map(|i| (key, if fault && i >= 28 { 22.0 } else { normal() }))
            .collect();
        let now = T0 + b * 1_000 * MS;
        let w = process_cap(&whole, now, &v, 0);
        assert_eq!(w.status, scale_status::Ok);
        let s = spans_with_ids(&v);
        let mut o = Out {
            status: scale_status::Ok,
            scores: vec![-1.0; n],
            keep: vec![9; n],
            skip: vec![scale_skip::None; n],
            decisions: Vec::new(),
            n_decisions: 0,
        };
        let mut late = vec![u32::MAX; n];
        for lo in (0..n).step_by(chunk) {
            let hi = (lo + chunk).min(n);
            let last = hi == n;
            let mut out = out_args(&mut o, lo, 0);
            if last {
                // Too little room for the late marks: refused, nothing processed.
                out.late_keep = late.as_mut_ptr();
                out.late_keep_cap = n - 1;
                // SAFETY: arrays of at least `hi` (`n - 1`) elements.
                let st = unsafe {
                    scale_engine_process_chunk(
                        chunked.0,
                        &s.input(now, lo, hi - lo),
                        lo,
                        1,
                        &mut out,
                    )
                };
                assert_eq!(st, scale_status::InvalidLength);
                out.late_keep_cap = n;
            }
            // SAFETY: as above, with `n` elements of room for the late marks.
            let st = unsafe {
                scale_engine_process_chunk(
                    chunked.0,
                    &s.input(now, lo, hi - lo),
                    lo,
                    u8::from(last),
                    &mut out,
                )
            };
            assert_eq!(st, scale_status::Ok, "batch {b} chunk {lo}");
            if last {
                late.truncate(out.late_keep_len);
            }
        }
        for &i in &late {
            o.keep[i as usize] = 1;
        }
        assert_eq!(
            o.keep, w.keep,
            "batch {b}: keep with the late marks applied"
        );
        assert_eq!(o.score_bits(), w.score_bits(), "batch {b}: scores");
        if fault {
            // The fault's first spans, in the first chunk, are marked late.
            assert!(
                late.contains(&28) && late.contains(&29),
                "late marks {late:?}"
            );
            assert!((28..n).all(|i| w.keep[i] == 1), "keep {:?}", &w.keep[28..]);
        } else {
            assert!(late.is_empty(), "batch {b}: late marks {late:?}");
        }
    }
}
