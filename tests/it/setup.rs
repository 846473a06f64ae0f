//! Setup mistakes a new user makes (issue 23, item 4), caught by `check` and
//! at start in words that say what to do: a token file holding quotes, a
//! `NAME=` or `Bearer `; an unknown log level; a missing config; keyless
//! access wider than the home network; and `check --online` asking Joulo.

use crate::binary::{BIN, write_config};
use crate::support;

use std::path::Path;
use std::process::{Command, Output};

use joulo_gateway::demo::write_private;
use support::{MockUpstream, Reply, canary};

fn run(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap()
}

fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_token_pasted_with_quotes_a_name_or_bearer_is_refused_by_check_and_at_start() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, "");
    let token = canary();
    for (text, words) in [
        (format!("\"{token}\"\n"), "quotes"),
        (format!("JOULO_TOKEN={token}\n"), "JOULO_TOKEN="),
        (format!("Bearer {token}\n"), "Bearer"),
    ] {
        write_private(&dir.path().join("joulo_token"), &text).unwrap();
        for args in [&["check"][..], &[]] {
            let out = run(args, &config);
            let said = printed(&out);
            assert_eq!(out.status.code(), Some(64), "{args:?} {text}: {said}");
            assert!(
                said.contains(words) && said.contains("write the token alone"),
                "{said}"
            );
            assert!(!said.contains(&token), "{said}");
        }
    }
    // Not shaped like a Joulo token: usable, with a warning.
    write_private(
        &dir.path().join("joulo_token"),
        "sk-live-0123456789abcdef\n",
    )
    .unwrap();
    let out = run(&["check"], &config);
    let said = printed(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("does not look like a Joulo token"), "{said}");
    assert!(!said.contains("sk-live-0123456789abcdef"), "{said}");
}

#[test]
fn check_names_the_line_refuses_unknown_levels_and_says_where_it_looked() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("joulo_token"), &canary()).unwrap();
    let config = write_config(dir.path(), &upstream, "\n[log]\nlevel = \"warning\"\n");
    let out = run(&["check"], &config);
    let said = printed(&out);
    assert_eq!(out.status.code(), Some(64), "{said}");
    assert!(
        said.contains("log.level") && said.contains("`warning` is not a level"),
        "{said}"
    );
    assert!(said.contains("(line 9)"), "{said}");

    let config = write_config(
        dir.path(),
        &upstream,
        "[routes.me]\nttl = \"1h\"\nscope = \"me:read\"\n",
    );
    let said = printed(&run(&["check"], &config));
    assert!(
        said.contains("routes.me.scope") && said.contains("(line 9)"),
        "{said}"
    );
    assert!(!said.contains("line 0"), "{said}");

    let missing = dir.path().join("nowhere/gateway.toml");
    let out = run(&["check"], &missing);
    let said = printed(&out);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        said.contains("no config file at") && said.contains("--config"),
        "{said}"
    );
    // No --config, in a folder without gateway.toml.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .current_dir(empty.path())
        .output()
        .unwrap();
    let said = printed(&out);
    assert_eq!(out.status.code(), Some(64));
    if !Path::new("/etc/joulo-gateway/gateway.toml").exists() {
        assert!(
            said.contains(&empty.path().join("gateway.toml").display().to_string())
                && said.contains("/etc/joulo-gateway/gateway.toml")
                && said.contains("--config PATH"),
            "{said}"
        );
    }
}

#[test]
fn check_says_who_is_served_warns_on_keyless_and_refuses_it_beyond_the_home_network() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("joulo_token"), &canary()).unwrap();
    let config = write_config(dir.path(), &upstream, "");
    let said = printed(&run(&["check"], &config));
    assert!(
        said.contains("no device keys yet: only this host is served"),
        "{said}"
    );

    let config = write_config(dir.path(), &upstream, "[access]\nkeyless = true\n");
    let out = run(&["check"], &config);
    let said = printed(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("WARN") && said.contains("keyless = true"),
        "{said}"
    );

    for wide in ["0.0.0.0/0", "::/0", "203.0.113.0/24"] {
        let config = write_config(
            dir.path(),
            &upstream,
            &format!("[access]\nkeyless = true\nallow = [\"{wide}\"]\n"),
        );
        let out = run(&["check"], &config);
        let said = printed(&out);
        assert_eq!(out.status.code(), Some(64), "{wide}: {said}");
        assert!(
            said.contains("access.allow") && said.contains("beyond the private ranges"),
            "{said}"
        );
        // Keys required: allowed.
        let config = write_config(
            dir.path(),
            &upstream,
            &format!("[access]\nallow = [\"{wide}\"]\n"),
        );
        assert_eq!(run(&["check"], &config).status.code(), Some(0), "{wide}");
    }
}

#[test]
fn check_online_asks_joulo_once_through_the_request_path_and_prints_nothing_of_the_answer() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let token = canary();
    write_private(&dir.path().join("joulo_token"), &token).unwrap();
    // Device keys and a narrow "this host" change nothing: the check asks
    // through a gateway of its own.
    let hash = "0".repeat(64);
    let config = write_config(
        dir.path(),
        &upstream,
        &format!(
            "[access]\nlocal_addresses = [\"127.0.0.9\"]\n\
             [[clients]]\nname = \"ha\"\nkey_sha256 = \"{hash}\"\nscopes = []\n"
        ),
    );
    let out = run(&["check", "--online"], &config);
    let said = printed(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("Joulo accepted the token"), "{said}");
    let calls = upstream.received();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].target.ends_with("/me"), "{:?}", calls[0].target);
    assert_eq!(
        calls[0].headers["authorization"],
        format!("Bearer {token}").as_str()
    );
    // The mock's answer names the path; none of it is printed.
    assert!(!said.contains("\"path\""), "{said}");

    upstream.set_reply(Reply::Status(401, "{\"error\":\"Invalid token\"}"));
    let out = run(&["check", "--online"], &config);
    let said = printed(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("Joulo refused the token") && said.contains("joulo_token"),
        "{said}"
    );
    assert!(
        !said.contains("Invalid token") && !said.contains(&token),
        "{said}"
    );
    assert_eq!(upstream.received().len(), 2, "one call per check");
}
