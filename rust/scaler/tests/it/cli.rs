//! End-to-end tests of the `scale` binary: `eval` on generated CSV and on recorded OTLP JSON,
//! `--json` output, the side outputs (`--scores`, `--plots`, `--compare-seed`), and `check`'s
//! exit codes and messages.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::harness::scale;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh directory under the system temp dir, unique per test and process.
fn tempdir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "scale-cli-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

/// 3,000 spans over three operations; after the first 1,000, every 40th is ten times slower and
/// labelled 1. Plus one NaN duration (skipped by the engine) and one malformed row (bad line).
fn write_csv(dir: &Path, with_label: bool) -> PathBuf {
    let mut s = String::from(if with_label {
        "service,operation,duration_ms,label\n"
    } else {
        "service,operation,duration_ms\n"
    });
    for i in 0..3000u32 {
        let op = ["GetCart", "AddItem", "Checkout"][(i % 3) as usize];
        let base = [5.0, 12.0, 80.0][(i % 3) as usize] * (1.0 + (i % 11) as f64 * 0.02);
        let anomalous = i >= 1000 && i % 40 == 0;
        let d = if anomalous { base * 10.0 } else { base };
        if with_label {
            s.push_str(&format!("cart,{op},{d},{}\n", u8::from(anomalous)));
        } else {
            s.push_str(&format!("cart,{op},{d}\n"));
        }
    }
    s.push_str(if with_label {
        "cart,GetCart,not-a-number,0\n"
    } else {
        "cart,GetCart,not-a-number\n"
    });
    s.push_str("this row has,too,many,fields,here\n");
    let path = dir.join(if with_label {
        "spans.csv"
    } else {
        "unlabelled.csv"
    });
    std::fs::write(&path, s).unwrap();
    path
}

const EVAL: &[&str] = &[
    "eval",
    "--train-size",
    "1000",
    "--window-size",
    "100",
    "--n-trees",
    "10",
    "--min-score",
    "0.8",
];

#[test]
fn eval_csv_json_scores_and_plots() {
    let dir = tempdir("csv");
    let csv = write_csv(&dir, true);
    let scores = dir.join("scores.csv");
    let plots = dir.join("plots");
    let args: Vec<&str> = EVAL
        .iter()
        .copied()
        .chain([
            "--json",
            "--scores",
            p(&scores),
            "--plots",
            p(&plots),
            p(&csv),
        ])
        .collect();
    let v = json(&scale(&args));
    let spans = &v["spans"];
    assert_eq!(spans["total"], 3001);
    assert_eq!(spans["training"], 1000);
    assert_eq!(spans["tested"], 2000);
    assert_eq!(spans["skipped"], 1);
    assert_eq!(spans["skipped_by_reason"]["invalid_duration"], 1);
    assert_eq!(spans["bad_input_lines"], 1);
    let m = &v["metrics"];
    let total: u64 = ["tp", "fp", "fn", "tn"]
        .iter()
        .map(|k| m[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2000);
    assert_eq!(m["tp"].as_u64().unwrap() + m["fn"].as_u64().unwrap(), 50);
    let auc = m["roc_auc"].as_f64().unwrap();
    assert!((0.9..=1.0).contains(&auc), "{m}");
    for k in ["precision", "recall", "f1", "fpr"] {
        let x = m[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{k} = {x}");
    }
    assert_eq!(v["config"]["n_trees"], 10);
    assert_eq!(v["config"]["window_size"], 100);
    assert!(v["performance"]["ns_per_span"].as_f64().unwrap() > 0.0);
    assert!(v["performance"]["memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["engine"]["keys"], 3);
    assert!(v["seed"].is_null());

    let lines: Vec<String> = BufReader::new(std::fs::File::open(&scores).unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        lines[0],
        "index,score,keep,label,learned,arrival_unix_nano,service,operation,incident,judged_unix_nano"
    );
    assert_eq!(lines.len(), 2001);
    let field = |l: &str, i: usize| l.split(',').nth(i).unwrap().to_string();
    assert!(
        lines[1].starts_with("1000,0.") && field(&lines[1], 3) == "1",
        "span 1000 is anomalous: {}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("1001,0.") && field(&lines[2], 3) == "0",
        "{}",
        lines[2]
    );
    for name in ["scores.svg", "confusion.svg", "durations.svg"] {
        let svg = std::fs::read_to_string(plots.join(name)).unwrap();
        assert!(
            svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"),
            "{name}"
        );
        assert!(
            svg.contains("keyed mode, n_trees 10, height 8, window_size 100, min_score 0.8"),
            "{name}"
        );
    }
}

#[test]
fn eval_text_and_compare_seed() {
    let dir = tempdir("seed");
    let csv = write_csv(&dir, true);
    // A seed file that is perfect on the 2,000 test rows (gzip, to exercise that path too).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    writeln!(gz, "operation,duration_ms,seed_score,seed_sampled,label").unwrap();
    for i in 1000..3000u32 {
        let a = i % 40 == 0;
        writeln!(
            gz,
            "op,1,{},{},{}",
            if a { 0.9 } else { 0.1 },
            u8::from(a),
            u8::from(a)
        )
        .unwrap();
    }
    let seed = dir.join("seed_results.csv.gz");
    std::fs::write(&seed, gz.finish().unwrap()).unwrap();
    let args: Vec<&str> = EVAL
        .iter()
        .copied()
        .chain(["--compare-seed", p(&seed), p(&csv)])
        .collect();
    let out = scale(&args);
    let t = text(&out.stdout);
    assert!(out.status.success(), "{t}\n{}", text(&out.stderr));
    for needle in [
        "scale",
        "seed",
        "TP",
        "precision",
        "ROC AUC",
        "ns/span",
        "3001 total",
        "1 bad input lines",
        "invalid_duration 1",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in\n{t}");
    }
    let recall = t.lines().find(|l| l.starts_with("recall")).unwrap();
    assert!(
        recall.trim_end().ends_with("1.0000"),
        "seed recall is 1: {recall}"
    );

    let args: Vec<&str> = EVAL
        .iter()
        .copied()
        .chain(["--json", "--compare-seed", p(&seed), p(&csv)])
        .collect();
    let v = json(&scale(&args));
    assert_eq!(v["seed"]["tp"], 50);
    assert_eq!(v["seed"]["fp"], 0);
    assert_eq!(v["seed"]["rows"], 2000);
    assert_eq!(v["seed"]["roc_auc"], 1.0);
}

#[test]
fn eval_without_labels_omits_metrics() {
    let dir = tempdir("nolabel");
    let csv = write_csv(&dir, false);
    let plots = dir.join("plots");
    let args: Vec<&str> = EVAL
        .iter()
        .copied()
        .chain(["--json", "--plots", p(&plots), p(&csv)])
        .collect();
    let v = json(&scale(&args));
    assert!(v["metrics"].is_null(), "{v}");
    assert_eq!(v["spans"]["labelled"], 0);
    assert_eq!(v["spans"]["tested"], 2000);
    assert!(dir.join("plots/scores.svg").exists() && !dir.join("plots/confusion.svg").exists());
}

#[test]
fn eval_otlp_json_lines() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/otel-demo/traces.jsonl.gz");
    let reader = BufReader::new(flate2::read::MultiGzDecoder::new(
        std::fs::File::open(&data).unwrap(),
    ));
    let dir = tempdir("otlp");
    let path = dir.join("traces.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for line in reader.lines().take(2000) {
        writeln!(f, "{}", line.unwrap()).unwrap();
    }
    writeln!(f, "{{\"resourceSpans\": [{{\"broken\"").unwrap();
    writeln!(f, "not json at all").unwrap();
    drop(f);
    let config = dir.join("engine.yaml");
    std::fs::write(
        &config,
        "mode: keyed\nsampler: { train_size: 2000, window_size: 250 }\nkeys: { max_keys: 500 }\n",
    )
    .unwrap();
    let v = json(&scale(&[
        "eval",
        "--json",
        "--config",
        p(&config),
        "--height",
        "6",
        p(&path),
    ]));
    let spans = &v["spans"];
    let total = spans["total"].as_u64().unwrap();
    assert!(total > 20_000, "{spans}");
    assert_eq!(spans["bad_input_lines"], 2);
    assert_eq!(spans["training"], 2000);
    assert_eq!(
        spans["tested"].as_u64().unwrap() + 2000 + spans["skipped"].as_u64().unwrap(),
        total
    );
    assert!(v["metrics"].is_null(), "the recording has no scale.label");
    assert_eq!(v["config"]["height"], 6);
    assert_eq!(v["config"]["max_keys"], 500);
    assert_eq!(v["engine"]["keys"], 500, "the key table is bounded");
    assert!(v["engine"]["keys_overflow"].as_u64().unwrap() > 0);

    // The compressed original reads the same way, in text mode.
    let out = scale(&["eval", "--train-size", "1000", p(&data)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no labels"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn eval_errors_are_reported_not_panics() {
    let dir = tempdir("errors");
    let out = scale(&["eval", p(&dir.join("missing.csv"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("missing.csv"),
        "{}",
        text(&out.stderr)
    );
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "a,b,c\n1,2,3\n").unwrap();
    let out = scale(&["eval", p(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("duration_ms"),
        "{}",
        text(&out.stderr)
    );
    let cfg = dir.join("bad.yaml");
    std::fs::write(&cfg, "sampler:\n  min_score: 7\n").unwrap();
    let out = scale(&["eval", "--config", p(&cfg), p(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("line 2: sampler.min_score"),
        "{}",
        text(&out.stderr)
    );
    let out = scale(&["eval", "--min-score", "2", p(&bad)]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

const VALID: &str = "mode: paper
sampler: { n_trees: 16, height: 8, window_size: 175, min_score: 0.6 }
rules:
  - name: checkout-latency
    match: { service: checkout, operation: \"PlaceOrder*\" }
    when: { duration_above: 500ms }
    count: 5
    window: 30s
    action: { kind: horizontal, target: { kind: Deployment, name: checkout }, max: 10 }
";

#[test]
fn check_exit_codes_and_messages() {
    let dir = tempdir("check");
    let valid = dir.join("valid.yaml");
    std::fs::write(&valid, VALID).unwrap();
    let out = scale(&["check", p(&valid)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("ok: {} (1 rule, mode paper)", p(&valid))),
        "{}",
        text(&out.stdout)
    );

    let invalid = dir.join("invalid.yaml");
    std::fs::write(
        &invalid,
        VALID
            .replace("count: 5", "count: 0")
            .replace("window: 30s", "window: -2s"),
    )
    .unwrap();
    let out = scale(&["check", p(&valid), p(&invalid)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(p(&invalid)), "{err}");
    assert!(err.contains("line 7: rules[0].count"), "{err}");
    assert!(err.contains("line 8: rules[0].window"), "{err}");

    // Engine keys are not allowed in a rules file.
    let out = scale(&["check", "--rules", p(&valid)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("mode"), "{}", text(&out.stderr));
    let rules_only = dir.join("rules.yaml");
    std::fs::write(&rules_only, &VALID[VALID.find("rules:").unwrap()..]).unwrap();
    let out = scale(&["check", "--rules", p(&rules_only)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("(1 rule)"));

    let out = scale(&["check", p(&valid), p(&dir.join("nope.yaml")), p(&invalid)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nope.yaml: cannot read"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn version() {
    let v = format!("scale {}", env!("CARGO_PKG_VERSION"));
    for args in [&["version"][..], &["--version"][..]] {
        let out = scale(args);
        assert!(out.status.success());
        assert_eq!(text(&out.stdout).trim(), v);
    }
}

/// The README's daemon reference is `scale serve -h` verbatim; regenerate it when flags change.
#[test]
fn readme_shows_the_current_serve_help() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme
        .find("$ scale serve -h\n")
        .expect("README has the `scale serve -h` block")
        + "$ scale serve -h\n".len();
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let out = scale(&["serve", "-h"]);
    assert!(out.status.success());
    assert_eq!(
        block,
        text(&out.stdout),
        "README.md's `scale serve -h` block is stale: paste the current output"
    );
}

/// The OnlineBoutique fault-data sample (`data/nezha-ob-sample`: 90 s of ordinary traffic, then
/// the first minute of a CPU-contention fault in cartservice), at the defaults, with the
/// anomaly rule for every service (`configs/rules/nezha-ob.yaml`).
#[test]
fn r11_eval_on_real_fault_data_timeline_faults_and_rules() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let data = format!("{root}/data/nezha-ob-sample");
    let rules = format!("{root}/configs/rules/nezha-ob.yaml");
    let v = json(&scale(&[
        "eval",
        "--json",
        "--faults",
        &format!("{data}/faults.csv"),
        "--rules",
        &rules,
        &format!("{data}/spans.csv.gz"),
    ]));
    let t = &v["timeline"];
    let before = &t["phases"]["before"];
    let kept = before["normal_kept"].as_f64().unwrap() / before["normal"].as_f64().unwrap();
    assert!(
        kept <= 0.015,
        "ordinary traffic kept {kept} of the 1 % budget's: {before}"
    );
    let f = &t["faults"][0];
    assert_eq!(f["fault_id"], "ob-2022-08-23#05");
    assert!(f["recall"].as_f64().unwrap() >= 0.4, "{f}");
    assert!(f["first_kept_after_s"].as_f64().unwrap() < 10.0, "{f}");
    let first = f["first_decision_after_s"]
        .as_f64()
        .expect("a decision for cartservice");
    assert!(first < 60.0, "{f}");
    let r = &t["rules"];
    assert_eq!(r["false_decisions"], 0, "{r}");
    assert!(
        r["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["target"] == "Deployment/online-boutique/cartservice")
    );
    let m = &v["metrics"];
    assert!(m["fpr"].as_f64().unwrap() <= 0.01, "{m}");
}
