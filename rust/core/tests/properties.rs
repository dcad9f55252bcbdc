//! Contract tests over the public API: properties (proptest) and robustness under bad or
//! unbounded input.

use proptest::prelude::*;
use scale_core::{BatchOutput, Engine, EngineConfig, Mode, SkipReason, SpanKey, SpanRef, Timing};

fn cfg(mode: Mode, window: u32, seed: u64, rules: &str) -> EngineConfig {
    let m = if mode == Mode::Paper {
        "paper"
    } else {
        "keyed"
    };
    EngineConfig::from_yaml(&format!(
        "mode: {m}\nsampler: {{ n_trees: 4, height: 5, window_size: {window}, train_size: 20, seed: {seed} }}\n{rules}"
    ))
    .unwrap()
}

fn spans(input: &[(u8, f64)]) -> Vec<SpanRef<'static>> {
    const OPS: [&str; 4] = ["a", "b", "c", "d"];
    input
        .iter()
        .map(|&(k, d)| SpanRef {
            key: SpanKey::Names {
                service: "svc",
                operation: OPS[k as usize % 4],
            },
            timing: Timing::DurationMs(d),
            trace_id: [k; 16],
            span_id: [k; 8],
        })
        .collect()
}

fn durations() -> impl Strategy<Value = Vec<(u8, f64)>> {
    prop::collection::vec(
        (
            0u8..4,
            prop_oneof![0.0f64..10.0, 0.0f64..100_000.0, Just(0.0)],
        ),
        1..400,
    )
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Paper), Just(Mode::Keyed)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn scores_are_in_unit_interval(input in durations(), m in mode(), w in 1u32..50) {
        let mut e = Engine::new(cfg(m, w, 1, ""));
        let mut out = BatchOutput::default();
        e.process_batch(&spans(&input), 0, &mut out);
        for v in &out.verdicts {
            if let Some(s) = v.score {
                prop_assert!((0.0..=1.0).contains(&s), "score {s}");
            }
        }
    }

    #[test]
    fn same_seed_same_input_same_scores(input in durations(), m in mode(), seed in any::<u64>()) {
        let run = || {
            let mut e = Engine::new(cfg(m, 16, seed, ""));
            let mut out = BatchOutput::default();
            e.process_batch(&spans(&input), 0, &mut out);
            out.verdicts
        };
        prop_assert_eq!(run(), run());
    }

    #[test]
    fn snapshot_restore_gives_identical_scores(a in durations(), b in durations(), m in mode()) {
        let c = cfg(m, 16, 7, "");
        let mut e = Engine::new(c.clone());
        let mut out = BatchOutput::default();
        e.process_batch(&spans(&a), 0, &mut out);
        let mut r = Engine::restore(c, &e.snapshot()).unwrap();
        let mut out2 = BatchOutput::default();
        e.process_batch(&spans(&b), 0, &mut out);
        r.process_batch(&spans(&b), 0, &mut out2);
        prop_assert_eq!(out.verdicts, out2.verdicts);
    }

    /// The rule fires exactly when a brute-force count over the half-open window `(now − W, now]`
    /// of breaches since the last firing reaches N.
    #[test]
    fn rule_windows_match_brute_force(gaps in prop::collection::vec(0u64..400, 1..300), n in 1u32..6, w_ms in 1u64..1_000) {
        let rules = format!(
            "rules:\n- name: r\n  when: {{ duration_above: 1ms }}\n  count: {n}\n  window: {w_ms}ms\n  action: {{ kind: horizontal, target: {{ kind: Deployment, name: x }}, max: 3 }}\n"
        );
        let mut e = Engine::new(cfg(Mode::Keyed, 16, 1, &rules));
        let mut out = BatchOutput::default();
        let w_ns = w_ms * 1_000_000;
        let mut now = 1_000_000_000u64;
        let mut since_fire: Vec<u64> = Vec::new();
        for g in gaps {
            now += g * 1_000_000 / 7; // irregular steps, often landing exactly on boundaries
            e.process_batch(&spans(&[(0, 5.0)]), now, &mut out);
            since_fire.push(now);
            let inside = since_fire.iter().filter(|&&t| now - t < w_ns).count() as u32;
            let expect = inside >= n;
            prop_assert_eq!(out.decisions.len() == 1, expect, "now {} inside {} n {}", now, inside, n);
            if expect {
                since_fire.clear();
            }
        }
    }
}

#[test]
fn a_million_distinct_keys_stay_within_the_bound() {
    let c = EngineConfig::from_yaml("keys: { max_keys: 5000 }\nsampler: { n_trees: 4, height: 6 }")
        .unwrap();
    let mut e = Engine::new(c);
    let mut out = BatchOutput::default();
    let names: Vec<String> = (0..10_000).map(|i| format!("operation-{i}")).collect();
    let mut after_bound = 0;
    for chunk in 0..100u64 {
        let batch: Vec<SpanRef> = (0..10_000u64)
            .map(|i| {
                let k = chunk * 10_000 + i;
                SpanRef {
                    key: SpanKey::Names {
                        service: &names[(k / 10_000) as usize % 100],
                        operation: &names[(k % 10_000) as usize],
                    },
                    timing: Timing::DurationMs((k % 97) as f64),
                    trace_id: [0; 16],
                    span_id: [0; 8],
                }
            })
            .collect();
        e.process_batch(&batch, 0, &mut out);
        if chunk == 0 {
            after_bound = e.memory_bytes();
        }
    }
    let s = e.stats();
    assert_eq!(s.spans_seen, 1_000_000);
    assert_eq!(s.keys, 5_000);
    assert_eq!(s.keys_overflow, 1_000_000 - 5_000);
    // Memory stops growing once the bound is reached.
    assert_eq!(
        e.memory_bytes(),
        after_bound,
        "memory grew past the key bound"
    );
    assert!(e.memory_bytes() < 8 << 20, "{} bytes", e.memory_bytes());
}

#[test]
fn absurd_and_broken_timestamps_are_counted_never_panic() {
    let mut e = Engine::new(EngineConfig::default());
    let mut out = BatchOutput::default();
    let base = 1_700_000_000_000_000_000u64;
    let cases = [
        (0, 0),
        (0, base),
        (base, 0),
        (base, base - 1),
        (1, 2),
        (u64::MAX - 1, u64::MAX),
        (base, base + 3 * 86_400 * 1_000_000_000),
        (base, base),
    ];
    let batch: Vec<SpanRef> = cases
        .iter()
        .map(|&(s, t)| SpanRef {
            key: SpanKey::Names {
                service: "",
                operation: "",
            },
            timing: Timing::StartEnd {
                start_ns: s,
                end_ns: t,
            },
            trace_id: [0; 16],
            span_id: [0; 8],
        })
        .collect();
    e.process_batch(&batch, 0, &mut out);
    let skipped: Vec<_> = out.verdicts.iter().map(|v| v.skipped).collect();
    assert_eq!(
        skipped,
        vec![
            Some(SkipReason::ZeroTimestamp),
            Some(SkipReason::ZeroTimestamp),
            Some(SkipReason::ZeroTimestamp),
            Some(SkipReason::EndBeforeStart),
            Some(SkipReason::AbsurdTimestamp),
            Some(SkipReason::AbsurdTimestamp),
            Some(SkipReason::AbsurdDuration),
            None,
        ]
    );
    assert_eq!(e.stats().spans_skipped.iter().sum::<u64>(), 7);
}
