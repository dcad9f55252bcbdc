//! The C ABI's cost, and the locking decision.
//!
//! `cargo bench -p scale-ffi --bench abi` (or `make bench-ffi`).
//!
//! * `abi_per_span/{direct,c_abi}/N`: per-span cost of one batch of N spans (1, 64, 1,024) through
//!   `scale_engine_process` (called through its C symbol) next to `Engine::process_batch` on
//!   pre-built `SpanRef`s. Both engines start from the same configuration and warm-up.
//! * `locking_2_threads/*`: two threads each scoring batches of 1,024 spans of its own service:
//!   on one handle (one mutex: what ships), on two handles (the upper bound of sharding the
//!   handle by service: independent engines, independent locks), and one thread doing the same
//!   total work on one handle; each also `_caller_work`, where every thread spends as long
//!   preparing each batch as the engine takes to score it (a collector decodes, batches and
//!   exports around each call).

use std::ptr::null_mut;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use scale::{
    scale_batch_out, scale_decision, scale_engine, scale_skip, scale_span_batch, scale_status,
};
use scale_core::rng::SplitMix64;
use scale_core::{BatchOutput, Engine, SpanKey, SpanRef, Timing};

/// The exported symbol itself, so the measured path is the one C and Go take.
mod c {
    use super::*;
    #[allow(improper_ctypes)] // pointers to an opaque type
    unsafe extern "C" {
        pub fn scale_engine_process(
            engine: *mut scale_engine,
            batch: *const scale_span_batch,
            out: *mut scale_batch_out,
        ) -> scale_status;
    }
}

const YAML: &str = "sampler: { train_size: 1000 }\nrules:\n- name: slow\n  match: { service: svc0 }\n  when: { duration_above: 400ms }\n  count: 50\n  window: 10s\n  action: { kind: horizontal, target: { kind: Deployment, name: a }, max: 5 }\n";
const T0: u64 = 1_700_000_000_000_000_000;
const STREAM: usize = 64 * 1024;
const KEYS: usize = 200;

/// Flat arrays, as a collector batch arrives.
struct Flat {
    keys: Vec<u32>,
    start: Vec<u64>,
    end: Vec<u64>,
    trace: Vec<u8>,
    span: Vec<u8>,
}

/// A synthetic stream: `KEYS` operations of `service` with log-normal durations, 5 % slow.
fn flat(ids: &[u32], seed: u64) -> Flat {
    let mut rng = SplitMix64::new(seed);
    let mut f = Flat {
        keys: Vec::new(),
        start: Vec::new(),
        end: Vec::new(),
        trace: vec![3; 16 * STREAM],
        span: vec![4; 8 * STREAM],
    };
    for i in 0..STREAM {
        let k = (rng.next_u64() % ids.len() as u64) as usize;
        let (u1, u2) = (rng.next_f64().max(1e-12), rng.next_f64());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let mut d = 0.5 * (1.0 + k as f64) * (0.5 * z).exp();
        if rng.next_f64() < 0.05 {
            d *= 9.0;
        }
        f.keys.push(ids[k]);
        f.start.push(T0 + i as u64 * 1_000);
        f.end.push(T0 + i as u64 * 1_000 + (d * 1e6) as u64);
    }
    f
}

fn new_handle() -> *mut scale_engine {
    let mut e = null_mut();
    // SAFETY: valid buffers.
    let st = unsafe {
        scale::scale_engine_new(YAML.as_ptr(), YAML.len(), &mut e, null_mut(), 0, null_mut())
    };
    assert_eq!(st, scale_status::Ok);
    e
}

fn intern(e: *mut scale_engine, service: &str) -> Vec<u32> {
    (0..KEYS)
        .map(|k| {
            let op = format!("op-{k}");
            let mut id = 0;
            // SAFETY: valid buffers.
            unsafe {
                scale::scale_engine_intern(
                    e,
                    service.as_ptr(),
                    service.len(),
                    op.as_ptr(),
                    op.len(),
                    &mut id,
                )
            };
            id
        })
        .collect()
}

/// Caller-side output buffers for up to 1,024 spans.
struct Outs {
    scores: Vec<f64>,
    keep: Vec<u8>,
    skip: Vec<scale_skip>,
    decisions: Vec<scale_decision>,
    n_decisions: usize,
}

impl Outs {
    fn new() -> Self {
        Outs {
            scores: vec![0.0; 1024],
            keep: vec![0; 1024],
            skip: vec![scale_skip::None; 1024],
            decisions: Vec::with_capacity(64),
            n_decisions: 0,
        }
    }
}

/// One batch of `n` spans at `off` through the C symbol.
fn c_batch(e: *mut scale_engine, f: &Flat, off: usize, n: usize, o: &mut Outs) {
    // SAFETY: every array has at least `n` elements from `off`.
    let batch = scale_span_batch {
        now_ns: T0,
        n,
        key_ids: f.keys[off..].as_ptr(),
        start_ns: f.start[off..].as_ptr(),
        end_ns: f.end[off..].as_ptr(),
        trace_ids: f.trace[16 * off..].as_ptr(),
        span_ids: f.span[8 * off..].as_ptr(),
    };
    let mut out = scale_batch_out {
        scores: o.scores.as_mut_ptr(),
        keep: o.keep.as_mut_ptr(),
        skip: o.skip.as_mut_ptr(),
        decisions: o.decisions.as_mut_ptr(),
        decisions_cap: o.decisions.capacity(),
        decisions_len: 0,
        late_keep: std::ptr::null_mut(),
        late_keep_cap: 0,
        late_keep_len: 0,
    };
    // SAFETY: every array has at least `n` elements from `off`.
    let st = unsafe { c::scale_engine_process(e, &batch, &mut out) };
    o.n_decisions = out.decisions_len;
    debug_assert!(matches!(
        st,
        scale_status::Ok | scale_status::DecisionsTruncated
    ));
    std::hint::black_box(st);
}

fn abi(c: &mut Criterion) {
    let mut g = c.benchmark_group("abi_per_span");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for n in [1usize, 64, 1024] {
        g.throughput(Throughput::Elements(n as u64));
        // Direct: scale-core on pre-built SpanRefs.
        let mut engine = Engine::from_yaml(YAML).unwrap();
        let ids: Vec<u32> = (0..KEYS)
            .map(|k| engine.intern("svc0", &format!("op-{k}")))
            .collect();
        let f = flat(&ids, 1);
        let spans: Vec<SpanRef<'static>> = (0..STREAM)
            .map(|i| SpanRef {
                key: SpanKey::Id(f.keys[i]),
                timing: Timing::StartEnd {
                    start_ns: f.start[i],
                    end_ns: f.end[i],
                },
                trace_id: [3; 16],
                span_id: [4; 8],
            })
            .collect();
        let mut out = BatchOutput::default();
        for chunk in spans.chunks(1024).take(8) {
            engine.process_batch(chunk, T0, &mut out);
        }
        let mut off = 0;
        g.bench_with_input(BenchmarkId::new("direct", n), &n, |b, &n| {
            b.iter(|| {
                off = (off + n) % (STREAM - n);
                engine.process_batch(&spans[off..off + n], T0, &mut out);
            })
        });
        // The C ABI: same configuration, ids, stream and warm-up.
        let h = new_handle();
        assert_eq!(intern(h, "svc0"), ids);
        let mut o = Outs::new();
        for i in 0..8 {
            c_batch(h, &f, i * 1024, 1024, &mut o);
        }
        let mut off = 0;
        g.bench_with_input(BenchmarkId::new("c_abi", n), &n, |b, &n| {
            b.iter(|| {
                off = (off + n) % (STREAM - n);
                c_batch(h, &f, off, n, &mut o);
            })
        });
        // SAFETY: made above, used by no one else.
        unsafe { scale::scale_engine_free(h) };
    }
    g.finish();
}

/// Raw handle shared across the bench's threads (the handle is documented thread-safe).
#[derive(Clone, Copy)]
struct Shared(*mut scale_engine);
// SAFETY: scale_engine is safe for concurrent calls other than free.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

const ROUNDS: usize = 16;

/// Caller work per batch outside the engine (decoding, batching, exporting in a collector),
/// emulated by spinning for about as long as the engine takes on a batch of 1,024.
fn caller_work(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Each of `handles.len()` threads (or one thread, if `threads == 1`) scores `ROUNDS` batches
/// of 1,024 of its own service per worker, doing `work` of its own before each; returns the
/// wall time.
fn run(handles: &[(Shared, &Flat)], threads: usize, work: Duration) -> Duration {
    let t = Instant::now();
    if threads == 1 {
        let mut o = Outs::new();
        for r in 0..ROUNDS {
            for (h, f) in handles {
                caller_work(work);
                c_batch(h.0, f, (r * 1024) % (STREAM - 1024), 1024, &mut o);
            }
        }
    } else {
        std::thread::scope(|s| {
            for &(h, f) in handles {
                s.spawn(move || {
                    let h: Shared = h; // capture the whole Send wrapper, not its field
                    let mut o = Outs::new();
                    for r in 0..ROUNDS {
                        caller_work(work);
                        c_batch(h.0, f, (r * 1024) % (STREAM - 1024), 1024, &mut o);
                    }
                });
            }
        });
    }
    t.elapsed()
}

fn locking(c: &mut Criterion) {
    let mut g = c.benchmark_group("locking_2_threads");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements((2 * ROUNDS * 1024) as u64));
    // One handle, two services.
    let one = new_handle();
    let (fa, fb) = (flat(&intern(one, "svc0"), 1), flat(&intern(one, "svc1"), 2));
    for i in 0..8 {
        c_batch(one, &fa, i * 1024, 1024, &mut Outs::new());
    }
    // Two handles (a shard per service).
    let (ha, hb) = (new_handle(), new_handle());
    let (ga, gb) = (flat(&intern(ha, "svc0"), 1), flat(&intern(hb, "svc1"), 2));
    for i in 0..8 {
        c_batch(ha, &ga, i * 1024, 1024, &mut Outs::new());
        c_batch(hb, &gb, i * 1024, 1024, &mut Outs::new());
    }
    let shared = [(Shared(one), &fa), (Shared(one), &fb)];
    let sharded = [(Shared(ha), &ga), (Shared(hb), &gb)];
    for (label, work) in [
        ("", Duration::ZERO),
        ("_caller_work", Duration::from_micros(180)),
    ] {
        g.bench_function(format!("one_handle_one_thread{label}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(&shared, 1, work)).sum())
        });
        g.bench_function(format!("one_handle_two_threads{label}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(&shared, 2, work)).sum())
        });
        g.bench_function(format!("two_handles_two_threads{label}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(&sharded, 2, work)).sum())
        });
    }
    g.finish();
    // SAFETY: made above; the threads are done.
    unsafe {
        scale::scale_engine_free(one);
        scale::scale_engine_free(ha);
        scale::scale_engine_free(hb);
    }
}

criterion_group!(benches, abi, locking);
criterion_main!(benches);
