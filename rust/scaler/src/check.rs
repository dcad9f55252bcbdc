//! `scale check`: validate engine configurations (or, with `--rules`, rules files) without
//! running anything.
//!
//! Each file is parsed with [`EngineConfig::from_yaml`] (a file with only `rules:` is a valid
//! engine configuration too) or [`RulesFile::from_yaml`]. Valid files print
//! `ok: PATH (N rules, mode M)` on stdout; invalid ones print `PATH: ` and the error, whose
//! Display lists every problem with its line and key path, on stderr. The exit code is the worst
//! outcome: 0 all valid, 1 some invalid, 2 some unreadable.

use std::io::Write;
use std::path::PathBuf;

use scale_core::{EngineConfig, RulesFile};

/// Arguments of `scale check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Configuration files (YAML).
    #[arg(required = true, value_name = "CONFIG")]
    pub files: Vec<PathBuf>,
    /// Validate as rules files (`rules:` only) instead of engine configurations.
    #[arg(long)]
    pub rules: bool,
}

/// Every file valid.
pub const EXIT_OK: u8 = 0;
/// Some file invalid.
pub const EXIT_INVALID: u8 = 1;
/// Some file unreadable.
pub const EXIT_UNREADABLE: u8 = 2;

/// Check every file, reporting to `out` (valid) and `err` (problems); returns the exit code.
pub fn run(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut code = EXIT_OK;
    for path in &args.files {
        let p = path.display();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(err, "{p}: cannot read: {e}");
                code = code.max(EXIT_UNREADABLE);
                continue;
            }
        };
        let result = if args.rules {
            RulesFile::from_yaml(&text)
                .map(|r| format!("{} rule{}", r.rules.len(), plural(r.rules.len())))
        } else {
            EngineConfig::from_yaml(&text).map(|c| {
                format!(
                    "{} rule{}, mode {}",
                    c.rules.len(),
                    plural(c.rules.len()),
                    c.mode.as_str()
                )
            })
        };
        match result {
            Ok(summary) => {
                let _ = writeln!(out, "ok: {p} ({summary})");
            }
            Err(e) => {
                let _ = writeln!(err, "{p}: {e}");
                code = code.max(EXIT_INVALID);
            }
        }
    }
    code
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(files: &[(&str, &str)], rules: bool) -> (u8, String, String) {
        let dir = std::env::temp_dir().join(format!(
            "scale-check-unit-{}-{}",
            std::process::id(),
            files[0].0
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = files
            .iter()
            .map(|(name, text)| {
                let p = dir.join(name);
                if !text.is_empty() {
                    std::fs::write(&p, text).unwrap();
                }
                p
            })
            .collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(
            &CheckArgs {
                files: paths,
                rules,
            },
            &mut out,
            &mut err,
        );
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    const RULE: &str = "rules:\n  - name: slow\n    when: { duration_above: 500ms }\n    count: 3\n    window: 30s\n    action: { kind: horizontal, target: { kind: Deployment, name: cart }, max: 5 }\n";

    #[test]
    fn valid_files() {
        let (code, out, err) = check(
            &[
                ("a.yaml", "mode: paper\nsampler: { n_trees: 16 }\n"),
                ("b.yaml", RULE),
            ],
            false,
        );
        assert_eq!(code, EXIT_OK, "{err}");
        assert!(
            out.contains("a.yaml (0 rules, mode paper)")
                && out.contains("b.yaml (1 rule, mode keyed)"),
            "{out}"
        );
        let (code, out, _) = check(&[("c.yaml", RULE)], true);
        assert_eq!((code, out.contains("(1 rule)")), (EXIT_OK, true), "{out}");
    }

    #[test]
    fn invalid_and_unreadable() {
        let bad = RULE.replace("count: 3", "count: 0");
        let (code, _, err) = check(
            &[("d.yaml", &bad), ("e.yaml", "sampler:\n  n_tress: 3\n")],
            false,
        );
        assert_eq!(code, EXIT_INVALID);
        assert!(
            err.contains("d.yaml: invalid configuration") && err.contains("line 4: rules[0].count"),
            "{err}"
        );
        assert!(err.contains("e.yaml") && err.contains("n_tress"), "{err}");
        // A rules file must not carry engine settings.
        let (code, _, err) = check(&[("f.yaml", "mode: paper\n")], true);
        assert_eq!(code, EXIT_INVALID, "{err}");
        let (code, _, err) = check(
            &[("g.yaml", RULE), ("missing.yaml", ""), ("h.yaml", &bad)],
            false,
        );
        assert_eq!(code, EXIT_UNREADABLE);
        assert!(err.contains("missing.yaml: cannot read"), "{err}");
    }
}
