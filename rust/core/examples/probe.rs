//! Replays a span CSV (`[arrival_unix_nano,][start_unix_nano,]service,operation,duration_ms[,label]`,
//! in arrival order) through an engine and prints, per span, what the engine saw and decided: a
//! tool for looking into detection, not a benchmark. A span reaches the engine at
//! `arrival_unix_nano` when the file has it (as `scale eval` does), else at its end, else
//! (no times) one millisecond after the one before.
//!
//! ```sh
//! cargo run --workspace --release --example probe -- CONFIG.yaml SPANS.csv > probe.csv
//! ```
//!
//! Columns: `index,key,duration_ms,label,x0,x1,tail,context_z,shift,incident,established,score,learned,keep,threshold`.

use std::io::{BufRead, BufReader, Write};

use scale_core::{Engine, EngineConfig, SpanKey, SpanRef, Timing};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, spans] = &args[..] else {
        return Err("usage: probe CONFIG.yaml SPANS.csv".into());
    };
    let cfg = EngineConfig::from_yaml(&std::fs::read_to_string(config)?)?;
    let mut engine = Engine::new(cfg);
    let input = BufReader::new(std::fs::File::open(spans)?);
    let mut lines = input.lines();
    let header = lines.next().ok_or("empty file")??;
    let cols: Vec<&str> = header.split(',').collect();
    let col = |n: &str| cols.iter().position(|c| *c == n);
    let (arrival, start, service, operation, duration, label) = (
        col("arrival_unix_nano"),
        col("start_unix_nano"),
        col("service"),
        col("operation").ok_or("no operation column")?,
        col("duration_ms").ok_or("no duration_ms column")?,
        col("label"),
    );
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    writeln!(
        out,
        "index,key,duration_ms,label,x0,x1,tail,context_z,shift,incident,established,score,learned,keep,threshold"
    )?;
    let mut decisions = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line?;
        let f: Vec<&str> = line.split(',').collect();
        let d: f64 = f[duration].parse()?;
        let now = match (arrival, start) {
            (Some(a), _) => f[a].parse::<u64>()?,
            (None, Some(s)) => f[s].parse::<u64>()? + (d * 1e6) as u64,
            (None, None) => i as u64 * 1_000_000 + 1,
        };
        let svc = service.map_or("unknown_service", |s| f[s]);
        let span = SpanRef {
            key: SpanKey::Names {
                service: svc,
                operation: f[operation],
            },
            timing: Timing::DurationMs(d),
            trace_id: [0; 16],
            span_id: [0; 8],
        };
        let v = engine.process_span(&span, 0, now, &mut decisions);
        decisions.clear();
        let e = engine.last_explain();
        writeln!(
            out,
            "{i},{}::{},{d},{},{:.5},{:.5},{:.3e},{:.2},{:.4},{},{},{},{},{},{}",
            svc,
            f[operation],
            label.map_or("", |l| f[l]),
            e.features[0],
            e.features[1],
            e.tail,
            e.context_z,
            e.shift,
            u8::from(e.incident),
            u8::from(e.established),
            v.score.map(|s| format!("{s:.6}")).unwrap_or_default(),
            u8::from(v.learned),
            u8::from(v.keep),
            engine
                .keep_threshold()
                .map(|t| format!("{t:.6}"))
                .unwrap_or_default(),
        )?;
    }
    Ok(())
}
