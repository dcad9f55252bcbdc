//! Digest of every verdict and snapshot an engine produces on a fixed synthetic stream, for
//! checking that a change to the engine's internals (e.g. `hst.rs`) changes no result:
//!
//! ```sh
//! cargo run --release -p scale-core --example digest > before.txt   # on the old tree
//! cargo run --release -p scale-core --example digest > after.txt    # on the new tree
//! diff before.txt after.txt                                       # no output: identical
//! ```
//!
//! One line per configuration (keyed and paper modes; eager and lazy window pivots): a hash of
//! every span's score bits and keep flag, of the snapshot after batch 100 and of the final
//! snapshot, then the number of spans kept. 192 batches of 1,024 spans over 30, then 300 keys
//! (new keys arrive mid-stream, so absent features are exercised), log-normal durations with
//! 5 % ×9 slowdowns.
use scale_core::rng::SplitMix64;
use scale_core::{BatchOutput, Engine, EngineConfig, SpanKey, SpanRef, Timing};
use std::hash::{DefaultHasher, Hasher};

fn main() {
    for yaml in [
        "mode: keyed\nsampler: { n_trees: 10, height: 8, window_size: 250, train_size: 1000 }\n",
        "mode: keyed\nsampler: { n_trees: 25, height: 15, window_size: 250, train_size: 1000 }\n",
        "mode: keyed\nsampler: { n_trees: 7, height: 6, window_size: 50, train_size: 300 }\n",
        "mode: paper\nsampler: { n_trees: 10, height: 8, window_size: 250, train_size: 1000 }\n",
        "mode: paper\nsampler: { n_trees: 25, height: 15, window_size: 250, train_size: 1000 }\n",
    ] {
        let mut e = Engine::new(EngineConfig::from_yaml(yaml).unwrap());
        let mut rng = SplitMix64::new(7);
        let names: Vec<String> = (0..300).map(|k| format!("op-{k}")).collect();
        let mut h = DefaultHasher::new();
        let mut out = BatchOutput::default();
        let mut kept = 0u64;
        for b in 0..192 {
            let keys = if b < 20 { 30 } else { 300 };
            let spans: Vec<SpanRef> = (0..1024)
                .map(|_| {
                    let k = (rng.next_u64() % keys) as usize;
                    let (u1, u2) = (rng.next_f64().max(1e-12), rng.next_f64());
                    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    let mut d = 0.1 * (1.0 + k as f64) * (0.5 * z).exp();
                    if rng.next_f64() < 0.05 {
                        d *= 9.0;
                    }
                    SpanRef {
                        key: SpanKey::Names {
                            service: "svc",
                            operation: &names[k],
                        },
                        timing: Timing::DurationMs(d),
                        trace_id: [1; 16],
                        span_id: [2; 8],
                    }
                })
                .collect();
            e.process_batch(&spans, 0, &mut out);
            for v in &out.verdicts {
                h.write_u64(v.score.map_or(u64::MAX, f64::to_bits));
                h.write_u8(v.keep as u8);
                kept += v.keep as u64;
            }
            if b == 100 {
                h.write(&e.snapshot());
            }
        }
        h.write(&e.snapshot());
        println!(
            "{:016x} kept {kept} {}",
            h.finish(),
            yaml.replace('\n', " ")
        );
    }
}
