//! Per-span cost of featurize + score + learn (+ rules), the engine's hot path.
//!
//! `cargo bench --workspace --bench engine`. Spans come from a synthetic stream of 800 keys (and,
//! for the default forest, also 3 keys: few keys mean dense paths, so walks go deeper) with
//! log-normal durations and 5 % slow spans, interned once (as the C ABI's callers do), fed in
//! batches of 1,024 through `Engine::process_batch`, the engine's clock moving 10 µs per span.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use scale_core::rng::SplitMix64;
use scale_core::{BatchOutput, Engine, EngineConfig, Mode, SpanKey, SpanRef, Timing};

const BATCH: usize = 1_024;

fn stream(engine: &mut Engine, n: usize, keys: usize) -> Vec<SpanRef<'static>> {
    let mut rng = SplitMix64::new(1);
    let ids: Vec<u32> = (0..keys)
        .map(|k| engine.intern("svc", &format!("op-{k}")))
        .collect();
    (0..n)
        .map(|_| {
            let k = (rng.next_u64() % keys as u64) as usize;
            // Box-Muller normal for a log-normal duration around a per-key median.
            let (u1, u2) = (rng.next_f64().max(1e-12), rng.next_f64());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let median = 0.1 * (1.0 + k as f64);
            let mut d = median * (0.5 * z).exp();
            if rng.next_f64() < 0.05 {
                d *= 9.0;
            }
            SpanRef {
                key: SpanKey::Id(ids[k]),
                timing: Timing::DurationMs(d),
                trace_id: [1; 16],
                span_id: [2; 8],
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine_per_span");
    g.throughput(Throughput::Elements(BATCH as u64));
    for mode in [Mode::Keyed, Mode::Paper] {
        for (n_trees, height, window, keys) in [
            (10, 8, 250, 3),
            (10, 8, 250, 800),
            (16, 8, 175, 800),
            (25, 15, 250, 800),
        ] {
            let yaml = format!(
                "mode: {}\nsampler: {{ n_trees: {n_trees}, height: {height}, window_size: {window}, train_size: 1000 }}\n",
                if mode == Mode::Paper {
                    "paper"
                } else {
                    "keyed"
                }
            );
            let mut engine = Engine::new(EngineConfig::from_yaml(&yaml).unwrap());
            let spans = stream(&mut engine, 64 * BATCH, keys);
            let mut out = BatchOutput::default();
            // The engine's clock moves 10 µs per span (100,000 spans/s): per-key memories and
            // contexts decay as in a busy collector.
            let mut now = 1_700_000_000_000_000_000u64;
            // Warm up: fill the first windows, the training prefix and the keep threshold.
            for chunk in spans.chunks(BATCH).take(16) {
                now += 10_240_000;
                engine.process_batch(chunk, now, &mut out);
            }
            let mut i = 0usize;
            g.bench_function(
                format!("{mode:?}/{n_trees}x{height}x{window}/{keys}keys").to_lowercase(),
                |b| {
                    b.iter_batched_ref(
                        || {
                            i = (i + 1) % 64;
                            now += 10_240_000;
                            (&spans[i * BATCH..(i + 1) * BATCH], now)
                        },
                        |(chunk, now)| engine.process_batch(chunk, *now, &mut out),
                        BatchSize::SmallInput,
                    )
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
