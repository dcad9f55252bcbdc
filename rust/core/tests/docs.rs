//! Keeps the README's and configs/' YAML examples valid: every ```yaml block in README.md and
//! every file under configs/engine and configs/rules must parse and validate.

use std::path::Path;

use scale_core::{EngineConfig, RulesFile};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn readme_yaml_examples_validate() {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut n = 0;
    let mut rest = text.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("closed block");
        let block = &body[..end];
        // The collector processor's reference is checked by collector-go/readme_test.go.
        if block.starts_with("processors:") {
            rest = &body[end..];
            continue;
        }
        // Blocks starting `# invalid` show an error on purpose: their leading comment lines after
        // the first are the exact message.
        if block.starts_with("# invalid") {
            let expected: Vec<&str> = block
                .lines()
                .skip(1)
                .take_while(|l| l.starts_with('#'))
                .map(|l| l.trim_start_matches('#').trim())
                .collect();
            let err = EngineConfig::from_yaml(block)
                .expect_err("an invalid example")
                .to_string();
            let got: Vec<&str> = err.lines().map(str::trim).collect();
            assert_eq!(got, expected, "README block {n}");
        } else {
            EngineConfig::from_yaml(block)
                .unwrap_or_else(|e| panic!("README block {n} is invalid: {e}\n{block}"));
        }
        n += 1;
        rest = &body[end..];
    }
    assert!(n >= 2, "README has {n} yaml blocks");
}

#[test]
fn config_files_validate() {
    for dir in ["configs/engine", "configs/rules"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = entry.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            let res = if dir.ends_with("rules") {
                RulesFile::from_yaml(&text).map(|_| ())
            } else {
                EngineConfig::from_yaml(&text).map(|_| ())
            };
            res.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

#[test]
fn default_config_file_is_the_default() {
    let text = std::fs::read_to_string(root().join("configs/engine/default.yaml")).unwrap();
    assert_eq!(
        EngineConfig::from_yaml(&text).unwrap(),
        EngineConfig::default()
    );
}
