//! Detection behaviour at the defaults, on synthetic timelines: the keep budget, latency-sided
//! judgement, no poisoning after a fault, replays. (Real data: `scale eval` on the recorded
//! streams, BENCHMARKS.md; a sample of the fault data is checked in `rust/scaler/tests/it/cli.rs`.)

use scale_core::rng::SplitMix64;
use scale_core::{BatchOutput, Engine, EngineConfig, SpanKey, SpanRef, Timing};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * S;

/// One span of the timeline: (arrival time, key, duration ms, tag).
type Event = (u64, u32, f64, u8);

/// Runs `events` (in time order) through `engine` in batches of at most 100 ms of the clock;
/// returns each span's keep flag.
fn run(engine: &mut Engine, events: &[Event]) -> Vec<bool> {
    let mut out = BatchOutput::default();
    let mut keep = Vec::with_capacity(events.len());
    let mut i = 0;
    while i < events.len() {
        let start = events[i].0;
        let mut j = i;
        while j < events.len() && events[j].0 < start + S / 10 && j - i < 1024 {
            j += 1;
        }
        let spans: Vec<SpanRef> = events[i..j]
            .iter()
            .map(|&(_, k, d, _)| SpanRef {
                key: SpanKey::Id(k),
                timing: Timing::DurationMs(d),
                trace_id: [0; 16],
                span_id: [0; 8],
            })
            .collect();
        engine.process_batch(&spans, events[j - 1].0, &mut out);
        keep.extend(out.verdicts.iter().map(|v| v.keep));
        i = j;
    }
    keep
}

fn share(keep: &[bool], events: &[Event], f: impl Fn(&Event) -> bool) -> f64 {
    let (mut n, mut k) = (0, 0);
    for (e, &kept) in events.iter().zip(keep) {
        if f(e) {
            n += 1;
            k += usize::from(kept);
        }
    }
    k as f64 / n.max(1) as f64
}

/// Three operations at 5, 50 and 500 ms (uniform ±10 % jitter), 30 spans/s each; after two
/// minutes one span in a hundred is `factor` × its usual duration (tag 1).
fn regular(factor: f64, seconds: u64) -> Vec<Event> {
    let mut rng = SplitMix64::new(3);
    let mut ev = Vec::new();
    for (k, base) in [(0u32, 5.0), (1, 50.0), (2, 500.0)] {
        let mut t = T0;
        while t < T0 + seconds * S {
            t += (S as f64 * -rng.next_f64().max(1e-12).ln() / 30.0) as u64;
            let mut d = base * (0.9 + 0.2 * rng.next_f64());
            let mut tag = 0;
            if t > T0 + 120 * S && rng.next_f64() < 0.01 {
                d *= factor;
                tag = 1;
            }
            // Spans arrive at their end.
            ev.push((t + (d * 1e6) as u64, k, d, tag));
        }
    }
    ev.sort_by_key(|e| e.0);
    ev
}

fn engine(yaml: &str) -> Engine {
    let mut e = Engine::new(EngineConfig::from_yaml(yaml).unwrap());
    for (k, op) in ["fast", "medium", "slow"].iter().enumerate() {
        assert_eq!(e.intern("regular", op), k as u32);
    }
    e
}

#[test]
fn r11_slowdowns_of_regular_traffic_are_kept_speedups_are_not() {
    let slow = regular(3.0, 600);
    let keep = run(&mut engine(""), &slow);
    let recall = share(&keep, &slow, |e| e.3 == 1);
    let normal = share(&keep, &slow, |e| e.3 == 0 && e.0 > T0 + 120 * S);
    assert!(recall >= 0.99, "3x slower kept: {recall}");
    assert!(normal <= 0.015, "normal spans kept: {normal}");

    let fast = regular(1.0 / 3.0, 600);
    let keep = run(&mut engine(""), &fast);
    assert_eq!(
        share(&keep, &fast, |e| e.3 == 1),
        0.0,
        "3x faster is not kept"
    );
    let both = run(&mut engine("keyed: { sides: both }"), &fast);
    assert!(
        share(&both, &fast, |e| e.3 == 1) > 0.9,
        "sides: both keeps them"
    );
}

/// A system of 20 keys with log-normal latencies of different spreads (some with two modes),
/// and no fault.
fn ordinary(seconds: u64, seed: u64) -> Vec<Event> {
    let mut rng = SplitMix64::new(seed);
    let mut ev = Vec::new();
    for k in 0..20u32 {
        let mu = 0.2 + rng.next_f64() * 6.0;
        let sigma = 0.1 + rng.next_f64() * 0.9;
        let rate = 2.0 + rng.next_f64() * 60.0;
        let two_modes = k % 4 == 0;
        let mut r = SplitMix64::new(seed * 100 + k as u64);
        let mut t = T0;
        while t < T0 + seconds * S {
            t += (S as f64 * -r.next_f64().max(1e-12).ln() / rate) as u64;
            let (u1, u2) = (r.next_f64().max(1e-12), r.next_f64());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let m = mu
                + if two_modes && r.next_f64() < 0.3 {
                    2.0
                } else {
                    0.0
                };
            let d = (m + sigma * z).exp();
            ev.push((t + (d * 1e6) as u64, k, d, 0));
        }
    }
    ev.sort_by_key(|e| e.0);
    ev
}

fn keyed_engine(yaml: &str) -> Engine {
    let mut e = Engine::new(EngineConfig::from_yaml(yaml).unwrap());
    for k in 0..20 {
        e.intern("svc", &format!("op-{k}"));
    }
    e
}

#[test]
fn r11_the_keep_rate_follows_the_budget() {
    let ev = ordinary(900, 5);
    let warm = |e: &Event| e.0 > T0 + 120 * S;
    let mut rates = Vec::new();
    for budget in [0.005, 0.01, 0.02] {
        let keep = run(
            &mut keyed_engine(&format!("sampler: {{ keep_budget: {budget} }}")),
            &ev,
        );
        let rate = share(&keep, &ev, warm);
        assert!(
            rate >= 0.4 * budget && rate <= 1.5 * budget,
            "budget {budget}: kept {rate}"
        );
        rates.push(rate);
    }
    assert!(rates[0] < rates[1] && rates[1] < rates[2], "{rates:?}");
}

#[test]
fn r11_a_fault_does_not_become_normal_and_a_replay_is_not_more_anomalous() {
    // Five minutes of ordinary traffic, then key 3 (about 5 % of the spans) three times slower
    // for two minutes, then ordinary traffic again: the same five minutes, replayed.
    let base = ordinary(300, 9);
    let mut ev: Vec<Event> = base.clone();
    for &(t, k, d, _) in base.iter().filter(|e| e.0 < T0 + 120 * S) {
        let slow = k == 3;
        ev.push((
            t + 300 * S,
            k,
            if slow { d * 3.0 } else { d },
            u8::from(slow),
        ));
    }
    for &(t, k, d, _) in &base {
        ev.push((t + 420 * S, k, d, 0));
    }
    ev.sort_by_key(|e| e.0);
    let mut e = keyed_engine("");
    let keep = run(&mut e, &ev);
    let during = share(&keep, &ev, |e| e.3 == 1);
    assert!(during > 0.8, "the fault's spans are kept: {during}");
    // Key 3 and the rest, in the first and the replayed ordinary periods (after warm-up).
    let first = |e: &Event| e.0 > T0 + 60 * S && e.0 < T0 + 300 * S;
    let replay = |e: &Event| e.0 > T0 + 480 * S;
    for key in [3u32, 0] {
        let before = share(&keep, &ev, |x| x.1 == key && first(x));
        let after = share(&keep, &ev, |x| x.1 == key && replay(x));
        assert!(
            after <= 1.5 * before + 0.005,
            "key {key}: {after} after the fault, {before} before"
        );
    }
    let before = share(&keep, &ev, first);
    let after = share(&keep, &ev, replay);
    assert!(
        after <= 1.2 * before + 0.002,
        "the replay keeps {after}, the first pass {before}"
    );
}
