//! The commands in the README and `docs/`: every shell block is run as a user
//! following the page would, in order, or says in its fence why it cannot run
//! on a development machine, so the documentation cannot go stale unnoticed.
//!
//! A fence's info string decides: ```` ```sh ```` runs (with `bash -euo
//! pipefail`), ```` ```sh background ```` starts a server and waits for its
//! port, ```` ```console ```` runs each `$ ` line and expects the lines below
//! it in the output, and ```` ```sh not-run: REASON ```` is skipped. A page's
//! blocks share one scratch folder holding copies of `gateway.toml` and
//! `deploy/`, whose configs are pointed at a TLS mock of Joulo on loopback and
//! a free loopback port (so nothing leaves the machine); `joulo-gateway` is the
//! binary under test, `sudo` runs the command as the test's user, and a
//! prompt for the token reads a canary token, which must never appear in
//! anything the commands print.

use crate::support::{self, MockUpstream};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_joulo-gateway");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Long enough for the slowest runnable block (`check --online` against the
/// mock), short enough that a block waiting for input fails the test.
const BLOCK_LIMIT: Duration = Duration::from_secs(60);

/// One fenced shell block of a page.
#[derive(Debug)]
struct Block {
    /// The page and the line its fence opens on, for messages.
    at: String,
    /// `sh`, `console`, ...
    language: String,
    /// What follows the language in the fence.
    note: String,
    body: String,
}

fn is_shell(language: &str) -> bool {
    matches!(language, "sh" | "bash" | "shell" | "console")
}

/// The fenced shell blocks of `text`, fences indented under a list item included.
fn shell_blocks(page: &str, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((number, line)) = lines.next() {
        let trimmed = line.trim_start();
        let Some(info) = trimmed.strip_prefix("```") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let (language, note) = info.split_once(' ').unwrap_or((info, ""));
        let mut body = String::new();
        for (_, inner) in lines.by_ref() {
            if inner.trim_start().starts_with("```") {
                break;
            }
            let cut = inner.len() - inner.trim_start().len();
            body.push_str(&inner[cut.min(indent)..]);
            body.push('\n');
        }
        if is_shell(language) {
            blocks.push(Block {
                at: format!("{page}:{}", number + 1),
                language: language.to_string(),
                note: note.trim().to_string(),
                body,
            });
        }
    }
    blocks
}

/// README.md, every page under docs/ and the add-on's DOCS.md, in a fixed order.
fn pages() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut more = Vec::new();
    find_named(root, "DOCS.md", &mut more);
    more.sort();
    pages.extend(more);
    pages
}

fn find_named(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !file.starts_with('.') && file != "target" && file != "fuzz" {
                find_named(&path, name, found);
            }
        } else if file == name {
            found.push(path);
        }
    }
}

/// A page's scratch folder and the servers its blocks started.
struct Scratch {
    dir: tempfile::TempDir,
    port: u16,
    canary: String,
    background: Vec<Child>,
    /// Everything the page's commands printed, searched for the canary.
    printed: String,
}

impl Scratch {
    fn new(upstream: &MockUpstream) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(ROOT);
        copy_tree(&root.join("deploy"), &dir.path().join("deploy"));
        std::fs::copy(root.join("gateway.toml"), dir.path().join("gateway.toml")).unwrap();
        let ca = dir.path().join("mock-ca.pem");
        std::fs::write(&ca, &upstream.ca_pem).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut configs = Vec::new();
        find_toml(dir.path(), &mut configs);
        for config in configs {
            let text = std::fs::read_to_string(&config).unwrap();
            let text = point_at_mock(&text, &upstream.base_url(), &ca, port);
            std::fs::write(&config, text).unwrap();
        }
        let bin = dir.path().join(".bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(BIN, bin.join("joulo-gateway")).unwrap();
        std::fs::write(bin.join("sudo"), "#!/bin/sh\nexec \"$@\"\n").unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(bin.join("sudo"))
            .status()
            .unwrap();
        Scratch {
            dir,
            port,
            canary: support::canary(),
            background: Vec::new(),
            printed: String::new(),
        }
    }

    /// The block's text as it runs here: the built binary for `cargo run` and
    /// `target/release`, the scratch port for the documented 8080.
    fn localise(&self, text: &str) -> String {
        let here = format!("127.0.0.1:{}", self.port);
        text.replace("cargo run --release --", "joulo-gateway")
            .replace("./target/release/joulo-gateway", "joulo-gateway")
            .replace("./joulo-gateway ", "joulo-gateway ")
            .replace("gateway.lan:8080", &here)
            .replace("localhost:8080", &here)
            .replace("127.0.0.1:8080", &here)
    }

    fn command(&self, script: &str) -> Command {
        let mut command = Command::new("bash");
        let path = format!(
            "{}:{}",
            self.dir.path().join(".bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        command
            .arg("-euo")
            .arg("pipefail")
            .arg("-c")
            .arg(script)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped());
        command
    }

    /// Runs `script` to its end; Err with what it printed when it fails.
    fn run(&mut self, script: &str) -> Result<String, String> {
        let mut child = self
            .command(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.feed_token(&mut child);
        let waited = wait_for(&mut child, BLOCK_LIMIT);
        let output = child.wait_with_output().unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        self.printed.push_str(&printed);
        match waited {
            Some(status) if status.success() => Ok(printed),
            Some(status) => Err(format!("exited with {status}:\n{printed}")),
            None => Err(format!("still running after {BLOCK_LIMIT:?}:\n{printed}")),
        }
    }

    /// Starts `script` and waits until the scratch port takes connections.
    fn start(&mut self, script: &str) -> Result<(), String> {
        let log = self
            .dir
            .path()
            .join(format!("background-{}.log", self.background.len()));
        let file = std::fs::File::create(&log).unwrap();
        let mut child = self
            .command(script)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        self.feed_token(&mut child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if TcpStream::connect(addr).is_ok() {
                self.background.push(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let printed = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("exited with {status} before listening:\n{printed}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        Err(format!("never listened on {addr}"))
    }

    /// A prompt for the token gets the canary (twice, for a confirmation).
    fn feed_token(&self, child: &mut Child) {
        let mut stdin = child.stdin.take().unwrap();
        let _ = writeln!(stdin, "{}\n{}", self.canary, self.canary);
    }

    fn finish(&mut self) {
        for child in &mut self.background {
            let _ = child.kill();
            let _ = child.wait();
        }
        for index in 0..self.background.len() {
            let log = self.dir.path().join(format!("background-{index}.log"));
            self.printed
                .push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        self.background.clear();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for child in &mut self.background {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls the child for at most `limit`: an external process, so no clock to pause.
fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn find_toml(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            find_toml(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

/// The config with Joulo replaced by the mock (and its CA trusted) and the
/// listener on the scratch port.
fn point_at_mock(text: &str, base_url: &str, ca: &Path, port: u16) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if key == "base_url" {
            out.push_str(&format!("base_url = \"{base_url}\"\n"));
            out.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
        } else if key == "ca_file" || key == "roots" {
            // The mock's CA above is the only one that matters here.
        } else if key == "listen" {
            out.push_str(&format!("listen = \"127.0.0.1:{port}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Why a block must not run in a test, if it must not: it would reach past
/// loopback (tests never send traffic anywhere else) or change the machine.
fn leaves_the_sandbox(body: &str) -> Option<String> {
    const MACHINE: [&str; 10] = [
        "apt",
        "apt-get",
        "dpkg",
        "docker",
        "pip",
        "scp",
        "ssh",
        "systemctl",
        "git",
        "wget",
    ];
    for url in body.split("://").skip(1) {
        let host = url
            .split(['/', ' ', '"', '\'', '?'])
            .next()
            .unwrap_or("")
            .rsplit_once(':')
            .map_or(
                url.split(['/', ' ', '"', '\'']).next().unwrap_or(""),
                |(h, _)| h,
            );
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            return Some(format!("it reaches `{host}`, not loopback"));
        }
    }
    for line in body.lines() {
        for part in line.split(['|', ';', '&', '(', '`']) {
            let mut words = part.split_whitespace().skip_while(|w| *w == "sudo");
            let first = words.next().unwrap_or("");
            if MACHINE.contains(&first) || (first == "cargo" && words.next() == Some("install")) {
                return Some(format!(
                    "`{first}` changes the machine or reaches the network"
                ));
            }
        }
    }
    None
}

/// Whether `printed` holds `expected`, where a device key in `expected`
/// (`jgw_` and 32 characters, made for the page) stands for any key: each
/// `device add` prints a new one.
fn printed_line(printed: &str, expected: &str) -> bool {
    let key_at = expected.find("jgw_").filter(|&at| {
        expected[at + 4..]
            .chars()
            .take(32)
            .filter(char::is_ascii_alphanumeric)
            .count()
            == 32
    });
    let Some(at) = key_at else {
        return printed.contains(expected);
    };
    let (before, after) = (&expected[..at], &expected[at + 4 + 32..]);
    printed.lines().any(|line| {
        let line = line.trim();
        line.len() == before.len() + 36 + after.len()
            && line.starts_with(before)
            && line.ends_with(after)
            && line[before.len()..].starts_with("jgw_")
    })
}

/// Runs one block; Ok(false) when it is not to be run here.
fn run_block(scratch: &mut Scratch, block: &Block) -> Result<bool, String> {
    if let Some(reason) = block.note.strip_prefix("not-run:") {
        if reason.trim().len() < 10 {
            return Err("`not-run:` needs a reason a reader can act on".into());
        }
        return Ok(false);
    }
    let body = scratch.localise(&block.body);
    if let Some(why) = leaves_the_sandbox(&body) {
        return Err(format!("{why}: mark it `not-run: REASON`"));
    }
    match (block.language.as_str(), block.note.as_str()) {
        ("console", "") => {
            let mut commands: Vec<(String, Vec<String>)> = Vec::new();
            for line in body.lines() {
                if let Some(command) = line.strip_prefix("$ ") {
                    commands.push((command.to_string(), Vec::new()));
                } else if let Some((_, expected)) = commands.last_mut() {
                    if !line.trim().is_empty() {
                        expected.push(line.trim().to_string());
                    }
                } else if !line.trim().is_empty() {
                    return Err(format!("output before any `$ ` command: {line}"));
                }
            }
            for (command, expected) in commands {
                let printed = scratch.run(&command)?;
                for line in expected {
                    if !printed_line(&printed, &line) {
                        return Err(format!(
                            "`{command}` did not print `{line}`; it printed:\n{printed}"
                        ));
                    }
                }
            }
            Ok(true)
        }
        (_, "") => scratch.run(&body).map(|_| true),
        (_, "background") => scratch.start(&body).map(|()| true),
        (_, note) => Err(format!(
            "unknown fence note `{note}` (none, `background` or `not-run: REASON`)"
        )),
    }
}

#[test]
fn every_shell_block_in_the_docs_runs_or_says_why_not() {
    let upstream = MockUpstream::start();
    let mut ran = 0;
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    for page in pages() {
        let name = page.strip_prefix(ROOT).unwrap().display().to_string();
        let text = std::fs::read_to_string(&page).unwrap();
        let mut scratch = Scratch::new(&upstream);
        for block in shell_blocks(&name, &text) {
            match run_block(&mut scratch, &block) {
                Ok(true) => ran += 1,
                Ok(false) => skipped.push(format!("{}: {}", block.at, block.note)),
                Err(why) => {
                    failures.push(format!(
                        "{} ({}):\n{}\n{why}",
                        block.at, block.language, block.body
                    ));
                    // The page's later blocks build on this one.
                    break;
                }
            }
        }
        scratch.finish();
        assert!(
            !scratch.printed.contains(&scratch.canary),
            "{name}: a command printed the token typed at its prompt"
        );
    }
    println!("docs: {ran} blocks run, {} not run:", skipped.len());
    for line in &skipped {
        println!("  {line}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran > 0, "no block was run: the fences were not found");
}

#[test]
fn a_failing_or_hanging_block_fails_and_fences_are_read_as_written() {
    let upstream = MockUpstream::start();
    let mut scratch = Scratch::new(&upstream);
    let page = "intro\n```sh\nfalse\n```\n1. a step\n   ```sh not-run: needs a Docker engine\n   docker ps\n   ```\n```console\n$ echo one\none\n$ echo two\nthree\n```\n```toml\n[server]\n```\n";
    let blocks = shell_blocks("page.md", page);
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    assert_eq!(blocks[1].body, "docker ps\n");
    assert_eq!(blocks[1].at, "page.md:6");
    assert!(
        run_block(&mut scratch, &blocks[0]).is_err(),
        "`false` failed"
    );
    assert_eq!(run_block(&mut scratch, &blocks[1]), Ok(false));
    let console = run_block(&mut scratch, &blocks[2]).unwrap_err();
    assert!(console.contains("did not print `three`"), "{console}");
    let short = Block {
        at: "page.md:1".into(),
        language: "sh".into(),
        note: "not-run: no".into(),
        body: String::new(),
    };
    assert!(
        run_block(&mut scratch, &short).is_err(),
        "a reason is required"
    );
    let key = "jgw_mVeZS9TEdm2rXl5FMgUeVYzfcM24BMI1";
    let other = "  joulo_gateway_key: jgw_Go5AN3O5ajHfZ1iahkXREpsHEevhp8QW\n";
    assert!(printed_line(other, &format!("joulo_gateway_key: {key}")));
    assert!(!printed_line(other, &format!("other_key: {key}")));
    assert!(!printed_line(
        "joulo_gateway_key: jgw_short\n",
        &format!("joulo_gateway_key: {key}")
    ));
    assert!(leaves_the_sandbox("curl -s http://127.0.0.1:8080/x").is_none());
    assert!(leaves_the_sandbox("curl -fLO https://github.com/a/b").is_some());
    assert!(leaves_the_sandbox("x && sudo apt install ./a.deb").is_some());
    assert!(leaves_the_sandbox("git clone x").is_some());
    // A prompt gets the canary and a block that waits for more input ends
    // at end of input rather than hanging.
    let read = scratch
        .run("read -r t; read -r u; read -r v || echo done")
        .unwrap();
    assert_eq!(read.trim(), "done");
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces made `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every relative link of the README and docs/ leads to a file of the
/// repository, and an anchor to a heading of that file: a page moved or
/// renamed breaks the test, not the reader.
#[test]
fn every_relative_link_in_the_docs_leads_somewhere() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        for piece in text.split("](").skip(1) {
            let Some(target) = piece.split(')').next() else {
                continue;
            };
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            checked += 1;
            if !path.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            if !fragment.is_empty() && path.extension().is_some_and(|e| e == "md") {
                let target_text = std::fs::read_to_string(&path).unwrap();
                let found = target_text
                    .lines()
                    .filter_map(|l| {
                        l.trim_start_matches('#')
                            .strip_prefix(' ')
                            .filter(|_| l.starts_with('#'))
                    })
                    .any(|h| anchor(h) == fragment);
                if !found {
                    broken.push(format!("{}: {target} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
