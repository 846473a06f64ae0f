//! The deploy/ files stay true to the gateway: their configs validate, Home
//! Assistant polls no faster than the cache serves, no token is committed, and the
//! systemd unit keeps its hardening score.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support;
use joulo_gateway::RouteId;
use joulo_gateway::config::Config;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn deploy_configs_validate_and_take_the_token_from_the_platform() {
    let systemd = Config::load(&repo("deploy/systemd/gateway.toml")).unwrap();
    // From a shell (as here) the file an admin writes; under the unit the
    // credential the unit copies it into (unit-tested in src/config/upstream.rs).
    assert_eq!(
        systemd.upstream.token_file,
        Path::new("/etc/joulo-gateway/joulo_token")
    );
    let unit = read("deploy/systemd/joulo-gateway.service");
    let load = format!(
        "LoadCredential=joulo_token:{}",
        systemd.upstream.token_file.display()
    );
    assert!(unit.lines().any(|l| l == load), "missing {load}");
    assert!(
        read("deploy/systemd/gateway.toml")
            .lines()
            .any(|l| l == "token_credential = \"joulo_token\""),
        "the config must name the unit's credential"
    );
    let docker = Config::load(&repo("deploy/docker/gateway.toml")).unwrap();
    assert_eq!(
        docker.upstream.token_file,
        Path::new("/run/secrets/joulo_token")
    );
    let shipped = Config::load(&repo("gateway.toml")).unwrap();
    for config in [&systemd, &docker] {
        for route in RouteId::ALL {
            assert_eq!(
                config.cache.ttl_for(route),
                shipped.cache.ttl_for(route),
                "{route:?}"
            );
        }
    }
}

#[test]
fn home_assistant_polls_no_faster_than_the_cache_serves() {
    let shipped = Config::load(&repo("gateway.toml")).unwrap();
    let text = read("deploy/homeassistant/configuration.yaml");
    let mut resource = None;
    let mut checked = 0;
    for line in text.lines().map(str::trim) {
        if let Some(url) = line.strip_prefix("- resource: ") {
            let path = url.split("8080").nth(1).unwrap().split('?').next().unwrap();
            resource = RouteId::ALL.into_iter().find(|r| r.path() == path);
            // The gateway's own /status is not cached: any interval will do.
            if path == "/status" {
                continue;
            }
            assert!(resource.is_some(), "unknown route in {url}");
        }
        if let Some(rest) = line.strip_prefix("scan_interval: ") {
            let seconds: u64 = rest.split_whitespace().next().unwrap().parse().unwrap();
            // None after /status, which is not a route.
            let Some(route) = resource.take() else {
                continue;
            };
            let ttl = shipped.cache.ttl_for(route);
            assert!(
                Duration::from_secs(seconds) >= ttl,
                "{}: polls every {seconds} s but the cache serves {ttl:?}",
                route.path()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3, "the three resources were checked");
    assert!(text.contains("password: !secret joulo_gateway_key"));
}

#[test]
fn every_home_assistant_sensor_goes_unavailable_on_a_gateway_error() {
    let text = read("deploy/homeassistant/configuration.yaml");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let entities: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("- name: "))
        .map(|(i, _)| i)
        .collect();
    assert!(entities.len() >= 12, "{} entities", entities.len());
    for (n, &start) in entities.iter().enumerate() {
        let end = entities.get(n + 1).copied().unwrap_or(lines.len());
        let entity = &lines[start..end];
        let availability = entity
            .iter()
            .find_map(|l| l.strip_prefix("availability: "))
            .unwrap_or_else(|| panic!("{} has no availability template", lines[start]));
        // It must test for the data itself: an error body has only "error".
        assert!(
            availability.contains("value_json is defined and value_json."),
            "{}: {availability}",
            lines[start]
        );
    }
    // And the two sensors from /status.
    for name in ["Joulo gateway ready", "Joulo API calls left this minute"] {
        assert!(text.contains(&format!("- name: \"{name}\"")), "{name}");
    }
}

#[test]
fn no_token_is_committed_in_deploy() {
    let mut stack = vec![repo("deploy")];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            files += 1;
            for prefix in ["joulo_", "jgw_"] {
                for (at, _) in text.match_indices(prefix) {
                    let run = text[at + prefix.len()..]
                        .bytes()
                        .take_while(|b| b.is_ascii_alphanumeric())
                        .count();
                    assert!(run < 32, "{} holds a {prefix} secret shape", path.display());
                }
            }
        }
    }
    assert!(files >= 10, "read {files} files");
}

#[test]
fn the_systemd_unit_is_hardened() {
    let unit = read("deploy/systemd/joulo-gateway.service");
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "LoadCredential=joulo_token:/etc/joulo-gateway/joulo_token",
        "ProtectSystem=strict",
        "PrivateDevices=yes",
        "MemoryDenyWriteExecute=yes",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SocketBindAllow=tcp:8080",
        "SocketBindDeny=any",
        "LimitCORE=0",
        "MemoryMax=128M",
        "TasksMax=64",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
    // The score itself, where systemd-analyze exists (Debian's systemd package).
    let Ok(out) = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(repo("deploy/systemd/joulo-gateway.service"))
        .output()
    else {
        eprintln!("systemd-analyze not installed: score not checked");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for joulo-gateway.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    assert!(score <= 1.1, "exposure {score}");
}

#[test]
fn the_unit_binds_only_the_port_the_shipped_config_listens_on() {
    let unit = read("deploy/systemd/joulo-gateway.service");
    let config = Config::load(&repo("deploy/systemd/gateway.toml")).unwrap();
    let allowed = format!("SocketBindAllow=tcp:{}", config.server.listen.port());
    assert!(unit.lines().any(|l| l == allowed), "missing {allowed}");
}

#[test]
fn compose_publishes_on_one_lan_address_without_core_files() {
    let compose = read("deploy/docker/compose.yaml");
    let ports: Vec<&str> = compose
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("- \"") && l.contains(":8080\""))
        .collect();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert!(
        ports[0].starts_with("- \"${GATEWAY_LAN_IP:?"),
        "published on a LAN address, not on all: {}",
        ports[0]
    );
    assert!(compose.contains("ulimits:\n      core: 0"), "no core files");
    for line in ["read_only: true", "- ALL", "no-new-privileges:true"] {
        assert!(compose.contains(line), "missing {line}");
    }
}

#[test]
fn the_docker_build_context_leaves_secrets_out_and_bases_are_pinned() {
    let ignore = read(".dockerignore");
    for pattern in ["**/joulo_token", "secrets/", "target/", "**/*.key"] {
        assert!(ignore.lines().any(|l| l == pattern), "missing {pattern}");
    }
    // Issue 25: both images are the prebuilt static binary on an empty
    // image, so there is no base image to pin and nothing is compiled in them.
    for path in [
        "deploy/docker/Dockerfile",
        "deploy/homeassistant/addon/joulo_gateway/Dockerfile",
    ] {
        let dockerfile = read(path);
        let froms: Vec<&str> = dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .collect();
        assert_eq!(froms, ["FROM scratch"], "{path}");
        assert!(
            dockerfile
                .contains("COPY bin/${TARGETARCH}/joulo-gateway /usr/local/bin/joulo-gateway"),
            "{path}: the binary for the target's architecture"
        );
        assert!(
            !dockerfile.contains("RUN "),
            "{path}: nothing runs in the build"
        );
    }
    let dockerfile = read("deploy/docker/Dockerfile");
    assert!(dockerfile.lines().any(|l| l == "USER 65532:65532"));
    assert!(
        dockerfile.contains("\"healthcheck\""),
        "HEALTHCHECK uses the binary"
    );
    let passwd = read("deploy/docker/rootfs/etc/passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("joulo:x:65532:65532:"))
    );
    let group = read("deploy/docker/rootfs/etc/group");
    assert!(group.lines().any(|l| l.starts_with("joulo:x:65532:")));
}

#[test]
fn the_home_assistant_addon_keeps_its_port_closed_and_drops_root() {
    let addon = "deploy/homeassistant/addon/joulo_gateway";
    let config = read(&format!("{addon}/config.yaml"));
    assert!(
        config.contains("  8080/tcp: null"),
        "LAN port off by default"
    );
    // Installed from the repository (issue 25), the add-on's hostname is the
    // slug behind the first 8 hex digits of the SHA-1 of the repository's URL.
    assert!(config.contains("http://c02f3660-joulo-gateway:8080"));
    // Root is dropped by the binary itself (src/addon/mod.rs, drop_root), which
    // the image's entry point runs; deploy/test-image.sh checks the uid.
    let dockerfile = read(&format!("{addon}/Dockerfile"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/joulo-gateway\", \"addon\"]"));
    assert!(!dockerfile.lines().any(|l| l.starts_with("USER ")));
}

/// Issue 25: the add-on repository Home Assistant users add by URL:
/// repository.yaml at the root, the add-on pulled from the published
/// per-architecture images at the crate's version, every option named in
/// the translations, the icon and logo at the sizes Home Assistant shows.
#[test]
fn the_addon_repository_is_complete() {
    let addon = "deploy/homeassistant/addon/joulo_gateway";
    let repository = read("repository.yaml");
    for key in ["name: ", "url: ", "maintainer: "] {
        assert!(
            repository.lines().any(|l| l.starts_with(key)),
            "repository.yaml: {key}"
        );
    }
    let config = read(&format!("{addon}/config.yaml"));
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let version = manifest["package"]["version"].as_str().unwrap();
    assert!(
        config
            .lines()
            .any(|l| l == format!("version: \"{version}\"")),
        "config.yaml's version is the crate's ({version})"
    );
    let image = config
        .lines()
        .find_map(|l| l.strip_prefix("image: "))
        .expect("an image: to pull, no local build");
    assert!(
        image.starts_with("ghcr.io/") && image.contains("{arch}"),
        "{image}"
    );
    assert!(config.lines().any(|l| l == "  - mqtt:want"));
    let options: Vec<&str> = config
        .lines()
        .skip_while(|l| *l != "schema:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k))
        .collect();
    assert_eq!(options, ["joulo_token", "log_level", "devices"]);
    // The devices option's keys go to /share, where the user can read them.
    assert!(config.contains("map:\n  - type: share\n    read_only: false\n"));
    let translations = read(&format!("{addon}/translations/en.yaml"));
    for option in &options {
        assert!(
            translations.contains(&format!("\n  {option}:\n    name: ")),
            "translations/en.yaml names {option}"
        );
    }
    for doc in ["DOCS.md", "CHANGELOG.md"] {
        assert!(read(&format!("{addon}/{doc}")).starts_with("# "), "{doc}");
    }
    assert!(read(&format!("{addon}/CHANGELOG.md")).contains(&format!("\n## {version}\n")));
    for (png, size) in [("icon.png", (128, 128)), ("logo.png", (250, 100))] {
        let bytes = std::fs::read(repo(&format!("{addon}/{png}"))).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((width, height), size, "{png}");
    }
}

/// The Debian package's metadata points at files that exist, its maintainer
/// scripts leave room for the unit's generated snippets, create no user and
/// keep the token private; the unit is enabled but not started on install.
#[test]
fn the_debian_package_is_complete() {
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    let destinations: Vec<&str> = assets
        .iter()
        .map(|a| a.as_array().unwrap()[1].as_str().unwrap())
        .collect();
    for wanted in [
        "usr/bin/",
        "etc/joulo-gateway/gateway.toml",
        "usr/share/man/man1/",
        "usr/share/bash-completion/completions/joulo-gateway",
        "usr/share/zsh/vendor-completions/",
        "usr/share/fish/vendor_completions.d/",
        "usr/share/doc/joulo-gateway/copyright",
    ] {
        assert!(destinations.contains(&wanted), "no asset for {wanted}");
    }
    for asset in assets {
        let source = asset.as_array().unwrap()[0].as_str().unwrap();
        // target/ is built by deploy/build-deb.sh; the rest is committed.
        if !source.starts_with("target/") {
            assert!(repo(source).is_file(), "{source} is missing");
        }
    }
    let units = &deb["systemd-units"];
    assert_eq!(units["enable"].as_bool(), Some(true));
    assert_eq!(units["start"].as_bool(), Some(false));
    for script in ["deploy/debian/postinst", "deploy/debian/postrm"] {
        let text = read(script);
        assert!(text.contains("#DEBHELPER#"), "{script}");
        assert!(
            !text.contains("adduser") && !text.contains("useradd"),
            "{script}"
        );
    }
    assert!(
        read("deploy/debian/postinst")
            .contains("install -m 600 -o root -g root /dev/null /etc/joulo-gateway/joulo_token")
    );
    assert!(
        read("deploy/debian/changelog")
            .starts_with(&format!("joulo-gateway ({}-1) ", env!("CARGO_PKG_VERSION")))
    );
}

/// `apt purge`'s postrm, run on a fake root (its path rewritten into a
/// temporary folder): the token and every copy an editor or a rotation left
/// beside it go; what the package never made is named, not left silently.
#[test]
fn purge_removes_the_token_and_its_copies_and_names_what_it_leaves() {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/joulo-gateway");
    let script = root.path().join("postrm");
    std::fs::write(
        &script,
        read("deploy/debian/postrm").replace("/etc/joulo-gateway", &etc.display().to_string()),
    )
    .unwrap();
    let purge = |action: &str| {
        let out = std::process::Command::new("sh")
            .arg(&script)
            .arg(action)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let copies = [
        "joulo_token",
        "joulo_token.new",
        "joulo_token~",
        "joulo_token.bak",
        ".joulo_token.swp",
        "#joulo_token#",
    ];
    let make = |extra: &[&str]| {
        std::fs::create_dir_all(&etc).unwrap();
        for name in copies.iter().chain(extra) {
            std::fs::write(etc.join(name), "joulo_x").unwrap();
        }
        std::os::unix::fs::symlink("/nonexistent", etc.join(".#joulo_token")).unwrap();
    };

    make(&[]);
    assert_eq!(purge("remove"), "", "a plain remove keeps everything");
    assert!(etc.join("joulo_token.new").exists());
    assert_eq!(purge("purge"), "");
    assert!(!etc.exists(), "every copy and the folder went");

    make(&["notes.txt"]);
    let said = purge("purge");
    assert!(
        said.contains("left in place") && said.contains("notes.txt"),
        "{said}"
    );
    let left: Vec<_> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["notes.txt"], "only the admin's own file stays");
}

/// CI checks the supply chain: cargo-deny offline with a deny.toml that
/// takes crates from crates.io only, and hadolint on both Dockerfiles.
#[test]
fn ci_checks_licences_sources_and_dockerfiles() {
    let ci = read(".ci/run");
    assert!(ci.contains("cargo deny --offline --locked check licenses bans sources"));
    assert!(ci.contains("cargo install cargo-deny --version \"$CARGO_DENY_VERSION\" --locked"));
    for dockerfile in [
        "deploy/docker/Dockerfile",
        "deploy/homeassistant/addon/joulo_gateway/Dockerfile",
    ] {
        assert!(ci.contains(dockerfile), "{dockerfile} is not linted");
        assert!(repo(dockerfile).is_file());
    }
    let deny: toml::Table = read("deny.toml").parse().unwrap();
    let sources = &deny["sources"];
    assert_eq!(sources["unknown-registry"].as_str(), Some("deny"));
    assert_eq!(sources["unknown-git"].as_str(), Some("deny"));
    assert_eq!(
        sources["allow-registry"].as_array().unwrap(),
        &[toml::Value::from(
            "https://github.com/rust-lang/crates.io-index"
        )]
    );
    assert!(sources["allow-git"].as_array().unwrap().is_empty());
    assert_eq!(
        deny["licenses"]["unused-allowed-license"].as_str(),
        Some("deny")
    );
}

/// Issue 25: CI checks the workflows (GitHub's schema, shellcheck on their
/// scripts) and builds and runs both images; the release takes its notes
/// from a changelog kept in Keep a Changelog's format.
#[test]
fn ci_checks_the_release_and_runs_the_images() {
    let ci = read(".ci/run");
    for line in [
        "bash .ci/check-workflows \"$check_jsonschema\"",
        "bash deploy/build-image.sh \"${image_arches[@]}\"",
        "bash deploy/test-image.sh amd64",
    ] {
        assert!(ci.lines().any(|l| l.trim() == line), "missing {line}");
    }
    let check = read(".ci/check-workflows");
    assert!(check.contains("--builtin-schema vendor.github-workflows"));
    let release = read(".github/workflows/release.yml");
    for step in [
        "bash deploy/build-deb.sh \"$TARGET\"",
        "bash deploy/build-image.sh --context-only target/image/context amd64 arm64",
        "sha256sum -- *.tar.gz *.deb >SHA256SUMS",
        "bash deploy/release-notes.sh \"$VERSION\" >release-notes.md",
    ] {
        assert!(release.contains(step), "release.yml: missing {step}");
    }
    let changelog = read("CHANGELOG.md");
    assert!(changelog.starts_with("# Changelog\n"));
    assert!(changelog.contains("https://keepachangelog.com/en/1.1.0/"));
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let version = manifest["package"]["version"].as_str().unwrap();
    assert!(
        changelog.contains("\n## [Unreleased]\n")
            || changelog.contains(&format!("\n## [{version}] - ")),
        "CHANGELOG.md has neither [Unreleased] nor [{version}]"
    );
}

/// The shipped `rest:` templates, rendered as Home Assistant renders them:
/// the meter is unavailable (not 0) while Joulo leaves it out, and "energy
/// this month" is the current month's entry, or 0 before its first charge
/// (not last month's, which `months[0]` is until then).
#[test]
fn the_shipped_meter_and_month_sensors_never_show_a_false_value() {
    let Some(python) = support::ha_python() else {
        return;
    };
    let this_month =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..7].to_owned();
    let render = |chargers: serde_json::Value, energy: serde_json::Value| {
        let input = serde_json::json!({
            "config": repo("deploy/homeassistant/configuration.yaml"),
            "answers": {"/chargers": chargers, "/energy": energy},
        });
        let (ok, out) = support::run_python(&python, "ha_rest_templates.py", &input.to_string());
        assert!(ok, "{out}");
        support::json(&out)
    };
    let charger = |meter: Option<u64>| {
        let mut c = serde_json::json!({"id": "c1", "status": "available", "is_charging": false});
        if let Some(wh) = meter {
            c["latest_meter_wh"] = wh.into();
        }
        serde_json::json!({"chargers": [c]})
    };
    let energy = |months: serde_json::Value| serde_json::json!({"total_kwh": 100.0, "total_ere_credits": 5.0, "total_sessions": 9, "months": months});
    let with_current = energy(serde_json::json!([
        {"month": this_month, "kwh": 7.5, "ere_credits": 0.4, "sessions": 1},
        {"month": "1999-01", "kwh": 92.5, "ere_credits": 4.6, "sessions": 8},
    ]));
    let out = render(charger(Some(4_190_735)), with_current);
    assert_eq!(out["joulo_charger_meter"]["value"], "4190.735", "{out}");
    assert_eq!(out["joulo_month_kwh"]["value"], "7.5", "{out}");

    let last_month_only = energy(serde_json::json!([
        {"month": "1999-01", "kwh": 92.5, "ere_credits": 4.6, "sessions": 8},
    ]));
    let out = render(charger(None), last_month_only);
    assert_eq!(out["joulo_charger_meter"]["available"], false, "{out}");
    assert_eq!(out["joulo_charger_status"]["available"], true, "{out}");
    assert_eq!(out["joulo_month_kwh"]["value"], "0", "{out}");
}
