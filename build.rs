//! Records the commit the binary is built from, for `--version`: from
//! `JOULO_GATEWAY_COMMIT` when the build sets it (the release workflow, a
//! build from a tarball of the source), else from git when the source is a
//! clone, else "unknown". git is asked, not linked: no build dependency.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=JOULO_GATEWAY_COMMIT");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    let commit = std::env::var("JOULO_GATEWAY_COMMIT")
        .ok()
        .filter(|c| is_commit(c))
        .or_else(|| git(&dir, &["rev-parse", "--short=12", "HEAD"]).filter(|c| is_commit(c)))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=JOULO_GATEWAY_COMMIT={commit}");
    // Rebuilt when HEAD moves: HEAD itself (a checkout) and the branch it
    // names (a commit). A worktree's files live under its own git dir.
    for name in ["HEAD", "packed-refs"] {
        watch(&dir, name);
    }
    if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch(&dir, &branch);
    }
}

/// A short or full hex commit id; anything else is not printed.
fn is_commit(text: &str) -> bool {
    (7..=40).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `git args` run in `dir`, its output trimmed; None without git or a clone.
fn git(dir: &str, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Asks cargo to rerun this script when the git file `name` changes.
fn watch(dir: &str, name: &str) {
    if let Some(path) = git(dir, &["rev-parse", "--git-path", name]) {
        let path = Path::new(dir).join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
