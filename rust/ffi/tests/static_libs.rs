//! The link line documented in README.md ("Static linking") is the one rustc reports for the
//! staticlib (STYLE rule 30). A change of toolchain or dependency that adds a native library
//! fails here instead of at the Go build's link step.

use std::process::Command;

fn documented() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("    -lscale "))
        .expect("README.md has an indented `-lscale ...` line");
    line.split_whitespace().skip(1).map(String::from).collect()
}

#[test]
fn documented_link_line_matches_rustc() {
    let out = Command::new(env!("CARGO"))
        .args([
            "rustc",
            "-p",
            "scale-ffi",
            "--release",
            "--lib",
            "--crate-type",
            "staticlib",
            "--",
            "--print",
            "native-static-libs",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo rustc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let libs = stderr
        .lines()
        .find_map(|l| l.split_once("native-static-libs: "))
        .map(|(_, libs)| libs)
        .unwrap_or_else(|| panic!("no native-static-libs in:\n{stderr}"));
    let rustc: Vec<String> = libs.split_whitespace().map(String::from).collect();
    assert_eq!(
        documented(),
        rustc,
        "update the `-lscale ...` line in rust/ffi/README.md"
    );
}
