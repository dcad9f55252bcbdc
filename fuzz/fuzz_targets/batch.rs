//! The hot path: arbitrary batches (unknown key ids, absurd timings, any capacity, names that
//! are not UTF-8) through `scale_engine_process` / `scale_engine_process_names` on a small
//! engine with rules. Every call returns OK or DECISIONS_TRUNCATED, the outputs are in range,
//! and a snapshot taken at the end restores to an engine with the same counters.
#![no_main]

use std::ptr::{null, null_mut};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scale::*;

const YAML: &str = "sampler: { window_size: 8, train_size: 16, n_trees: 3, height: 4 }
keys: { max_keys: 6 }
rules:
- name: a
  match: { service: \"s*\" }
  when: { duration_above: 1ms }
  count: 2
  window: 1s
  action: { kind: auto, target: { kind: Deployment, name: a }, max: 3 }
- name: b
  when: { anomalous: true }
  count: 1
  window: 100ms
  action: { kind: vertical, target: { kind: Deployment, name: b }, max: 3 }
";

#[derive(Arbitrary, Debug)]
struct Span {
    key: u32,
    start: u64,
    dur: u64,
    names: Option<(Vec<u8>, Vec<u8>)>,
    trace: u8,
}

#[derive(Arbitrary, Debug)]
struct Batch {
    now: u64,
    cap: u8,
    by_names: bool,
    spans: Vec<Span>,
}

const T0: u64 = 1_700_000_000_000_000_000;

fuzz_target!(|batches: Vec<Batch>| {
    let mut e = null_mut();
    // SAFETY: valid buffers.
    assert_eq!(unsafe { scale_engine_new(YAML.as_ptr(), YAML.len(), &mut e, null_mut(), 0, null_mut()) }, scale_status::Ok);
    let mut now = T0;
    for b in batches.iter().take(32) {
        let n = b.spans.len().min(256);
        let spans = &b.spans[..n];
        // Mostly plausible times, sometimes anything.
        let start: Vec<u64> = spans.iter().map(|s| if s.start % 4 == 0 { s.start } else { T0 + s.start % 1_000_000_000_000 }).collect();
        let end: Vec<u64> = spans.iter().zip(&start).map(|(s, st)| if s.dur % 5 == 0 { s.dur } else { st.wrapping_add(s.dur % 10_000_000_000) }).collect();
        let keys: Vec<u32> = spans.iter().map(|s| if s.key % 3 == 0 { s.key } else { s.key % 8 }).collect();
        let trace: Vec<u8> = spans.iter().flat_map(|s| [s.trace; 16]).collect();
        let names: Vec<(&[u8], &[u8])> = spans.iter().map(|s| s.names.as_ref().map_or((&b"svc"[..], &b"op"[..]), |(a, o)| (&a[..], &o[..]))).collect();
        let (sp, sl): (Vec<*const u8>, Vec<usize>) = names.iter().map(|(s, _)| (s.as_ptr(), s.len())).unzip();
        let (op, ol): (Vec<*const u8>, Vec<usize>) = names.iter().map(|(_, o)| (o.as_ptr(), o.len())).unzip();
        let (mut sc, mut kp, mut sk) = (vec![0.0; n], vec![0u8; n], vec![scale_skip::None; n]);
        let mut dec = Vec::<scale_decision>::with_capacity(b.cap as usize);
        now = now.wrapping_add(b.now % 10_000_000_000);
        let batch = scale_span_batch { now_ns: now, n, key_ids: keys.as_ptr(), start_ns: start.as_ptr(), end_ns: end.as_ptr(), trace_ids: trace.as_ptr(), span_ids: null() };
        let names = scale_span_names { services: sp.as_ptr(), service_lens: sl.as_ptr(), operations: op.as_ptr(), operation_lens: ol.as_ptr() };
        let mut out = scale_batch_out { scores: sc.as_mut_ptr(), keep: kp.as_mut_ptr(), skip: sk.as_mut_ptr(), decisions: dec.as_mut_ptr(), decisions_cap: dec.capacity(), decisions_len: 0, late_keep: std::ptr::null_mut(), late_keep_cap: 0, late_keep_len: 0 };
        // SAFETY: every array has n elements (decisions: cap).
        let st = unsafe {
            if b.by_names {
                scale_engine_process_names(e, &batch, &names, &mut out)
            } else {
                scale_engine_process(e, &batch, &mut out)
            }
        };
        let nd = out.decisions_len;
        assert!(matches!(st, scale_status::Ok | scale_status::DecisionsTruncated), "{st:?}");
        assert_eq!(st == scale_status::DecisionsTruncated, nd > b.cap as usize);
        for i in 0..n {
            assert!(sc[i].is_nan() || (0.0..=1.0).contains(&sc[i]), "score {}", sc[i]);
            assert!(kp[i] <= 1);
            assert!(sk[i] == scale_skip::None || sc[i].is_nan());
        }
    }
    let (mut stats, mut size, mut len) = (scale_stats::default(), 0, 0);
    // SAFETY: valid buffers; the handle is live.
    unsafe {
        assert_eq!(scale_engine_stats(e, &mut stats), scale_status::Ok);
        assert_eq!(scale_engine_snapshot_size(e, &mut size), scale_status::Ok);
        let mut snap = vec![0u8; size];
        assert_eq!(scale_engine_snapshot(e, snap.as_mut_ptr(), size, &mut len), scale_status::Ok);
        let mut r = null_mut();
        assert_eq!(scale_engine_restore(YAML.as_ptr(), YAML.len(), snap.as_ptr(), len, &mut r, null_mut(), 0, null_mut()), scale_status::Ok);
        let mut rs = scale_stats::default();
        assert_eq!(scale_engine_stats(r, &mut rs), scale_status::Ok);
        assert_eq!(stats, rs);
        scale_engine_free(r);
        scale_engine_free(e);
    }
});
