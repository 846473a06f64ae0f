//! What a released binary says about itself and how the add-on's entry point
//! fails: `--version` names the commit, and `joulo-gateway addon` with unusable
//! options stops with exit 64 and a message naming the option, never its value.

use std::path::Path;
use std::process::Command;

use crate::support;

const BIN: &str = env!("CARGO_BIN_EXE_joulo-gateway");

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let version = format!("joulo-gateway {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = text
        .trim_end()
        .strip_prefix(&version)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text}"));
    // From a clone (CI, a developer) it is HEAD; built without git, "unknown".
    let head = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match (std::env::var("JOULO_GATEWAY_COMMIT").ok(), head) {
        (Some(set), _) if !set.is_empty() => assert_eq!(commit, set),
        (_, Some(head)) => assert_eq!(commit, head),
        _ => assert_eq!(commit, "unknown"),
    }
}

/// Runs `joulo-gateway addon` on `options` in a fresh data folder; returns
/// its exit code and stderr.
fn addon(options: &str) -> (Option<i32>, String) {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("options.json"), options).unwrap();
    let out = Command::new(BIN)
        .args(["addon", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!Path::new(&data.path().join("joulo_token")).exists() || out.status.success());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_addon_with_an_empty_token_says_where_to_set_it() {
    let (code, stderr) = addon(r#"{"joulo_token": "", "log_level": "info"}"#);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("joulo_token is empty"), "{stderr}");
    assert!(stderr.contains("Configuration tab"), "{stderr}");
}

#[test]
fn the_addon_names_a_bad_option_without_its_value() {
    let token = support::canary();
    let options = serde_json::json!({"joulo_token": token, "log_level": token}).to_string();
    let (code, stderr) = addon(&options);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("log_level must be one of"), "{stderr}");
    assert!(!stderr.contains(&token), "{stderr}");
}
