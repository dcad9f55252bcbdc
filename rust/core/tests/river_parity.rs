//! `paper` mode reproduces River 0.26.1's `HalfSpaceTrees` scores.
//!
//! The fixture `tests/fixtures/river_parity.json.gz` is written by `scripts/river_export.py`: River's
//! trees (internal nodes in heap order, thresholds as IEEE-754 bits) and River's score for each of
//! the first rows of `data/seed-tracemesh/spans.csv.gz` (score before learn; `null` while River's
//! first window fills). Here the same trees are loaded into the engine, the same rows are fed
//! one at a time, and every score must agree.

use std::io::Read;

use scale_core::{Engine, EngineConfig, Mode, SamplerConfig, SpanKey, SpanRef, Timing};
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/river_parity.json.gz"
);
const SPANS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/seed-tracemesh/spans.csv.gz"
);
const TOLERANCE: f64 = 1e-9;
const MIN_COMPARED: usize = 10_000;

fn gunzip(path: &str) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("gunzip {path}: {e}"));
    text
}

struct Fixture {
    n_trees: u32,
    height: u32,
    window_size: u32,
    seed: u64,
    max_duration_ms: f64,
    rows: usize,
    features: Vec<String>,
    trees: Vec<Vec<(u32, f64)>>,
    scores: Vec<Option<f64>>,
    river_ns_per_span: Option<f64>,
}

fn fixture() -> Fixture {
    let v: Value = serde_json::from_str(&gunzip(FIXTURE)).expect("fixture is JSON");
    assert_eq!(
        v["river_version"], "0.26.1",
        "fixture made with another River"
    );
    let p = &v["params"];
    let u = |k: &str| p[k].as_u64().unwrap_or_else(|| panic!("params.{k}"));
    let features: Vec<String> = v["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| f.as_str().expect("feature name").to_string())
        .collect();
    let trees = v["trees"]
        .as_array()
        .expect("trees")
        .iter()
        .map(|t| {
            t.as_array()
                .expect("tree")
                .iter()
                .map(|n| {
                    let f = n[0].as_u64().expect("feature index") as u32;
                    let bits = n[1].as_u64().expect("threshold bits");
                    (f, f64::from_bits(bits))
                })
                .collect()
        })
        .collect();
    let scores = v["scores"]
        .as_array()
        .expect("scores")
        .iter()
        .map(|s| {
            if s.is_null() {
                None
            } else {
                Some(f64::from_bits(s.as_u64().expect("score bits")))
            }
        })
        .collect::<Vec<_>>();
    let rows = u("rows") as usize;
    assert_eq!(scores.len(), rows, "one score per row");
    Fixture {
        n_trees: u("n_trees") as u32,
        height: u("height") as u32,
        window_size: u("window_size") as u32,
        seed: u("seed"),
        max_duration_ms: p["max_duration_ms"]
            .as_f64()
            .expect("params.max_duration_ms"),
        rows,
        features,
        trees,
        scores,
        river_ns_per_span: v["river_ns_per_span"].as_f64(),
    }
}

/// (service, operation, duration_ms) of the first `n` rows of `service,operation,duration_ms,label`.
fn spans(n: usize) -> Vec<(String, String, f64)> {
    let text = gunzip(SPANS);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("service,operation,duration_ms,label"));
    lines
        .take(n)
        .map(|line| {
            assert!(
                !line.contains('"'),
                "quoted CSV field not supported: {line}"
            );
            let mut back = line.rsplitn(3, ',');
            let (_label, duration, front) = (
                back.next(),
                back.next().expect("duration"),
                back.next().expect("key"),
            );
            let (service, operation) = front.split_once(',').expect("service,operation");
            let d = duration
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("duration {duration:?}: {e}"));
            (service.to_string(), operation.to_string(), d)
        })
        .collect()
}

fn engine(fx: &Fixture) -> Engine {
    let cfg = EngineConfig {
        mode: Mode::Paper,
        sampler: SamplerConfig {
            n_trees: fx.n_trees,
            height: fx.height,
            window_size: fx.window_size,
            max_duration_ms: fx.max_duration_ms,
            train_size: 0,
            min_score: Some(0.6),
            seed: fx.seed,
            ..SamplerConfig::DEFAULT
        },
        ..Default::default()
    };
    Engine::with_paper_trees(cfg, &fx.features, &fx.trees).expect("River's trees load")
}

#[test]
fn paper_mode_scores_match_river() {
    let fx = fixture();
    let rows = spans(fx.rows);
    assert_eq!(rows.len(), fx.rows, "data has the fixture's rows");
    let mut e = engine(&fx);
    let mut decisions = Vec::new();
    let (mut compared, mut identical, mut max_diff, mut worst) = (0usize, 0usize, 0.0f64, 0usize);
    let mut mismatches = Vec::new();
    for (i, ((service, operation, d), river)) in rows.iter().zip(&fx.scores).enumerate() {
        let span = SpanRef {
            key: SpanKey::Names { service, operation },
            timing: Timing::DurationMs(*d),
            trace_id: [0; 16],
            span_id: [0; 8],
        };
        let v = e.process_span(&span, i as u32, 0, &mut decisions);
        assert_eq!(v.skipped, None, "row {i} skipped");
        match (river, v.score) {
            (None, None) => {}
            (None, Some(s)) => panic!("row {i}: River has no score yet, we have {s}"),
            (Some(r), None) => panic!("row {i}: River scores {r}, we have none"),
            (Some(r), Some(s)) => {
                compared += 1;
                if r.to_bits() == s.to_bits() {
                    identical += 1;
                }
                let diff = (r - s).abs();
                if diff > max_diff || diff.is_nan() {
                    max_diff = if diff.is_nan() { f64::INFINITY } else { diff };
                    worst = i;
                }
                if (diff.is_nan() || diff > TOLERANCE) && mismatches.len() < 10 {
                    mismatches.push(format!(
                        "row {i} ({service}::{operation}, {d} ms): River {r}, ours {s}"
                    ));
                }
            }
        }
    }
    let summary = format!(
        "River parity: {compared} rows compared, {identical} bit-identical, max |ours - River| = {max_diff:e} (row {worst}); \
         River {} ns/span",
        fx.river_ns_per_span
            .map_or("?".to_string(), |n| format!("{n:.0}")),
    );
    eprintln!("{summary}");
    assert!(
        compared >= MIN_COMPARED,
        "{summary}: fewer than {MIN_COMPARED} rows compared"
    );
    assert!(
        max_diff <= TOLERANCE,
        "{summary}; first mismatches:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn feature_names_match_river() {
    let fx = fixture();
    let e = engine(&fx);
    let names = e
        .feature_names()
        .expect("paper features known once trees are loaded");
    assert_eq!(names.as_slice(), fx.features.as_slice());
}
