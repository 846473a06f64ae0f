//! The `joulo-gateway` command: parses the command line, loads the config, sets up
//! logging and hands over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use joulo_gateway::config::{self, Config};
use joulo_gateway::demo;
use joulo_gateway::{
    Cli, Command, Failure, Gateway, HealthcheckTarget, REDACTED, Supervisor, TokenFileText,
    addon_drop_root, addon_mqtt_from_supervisor, addon_owner, addon_prepare, ask_joulo_once,
    bind_listener, device_command, forbid_core_dumps, gen_key_text, init_logging, redact,
    shutdown_signal,
};
use std::path::{Path, PathBuf};

/// Every build allocates through mimalloc. With musl's own allocator the
/// static binary ran pass-through calls at 0.95x nginx's rate where the glibc
/// build ran 1.16x (bench/RESULTS.md, 2026-11-30); glibc's allocator kept what
/// a hostile device made it hold (+17.5 MB after the stuck-stream attack,
/// bench/hostile), where mimalloc gives it back once nudged (`settle`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = cli.config_path();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let code = failure.exit_code();
            // The same redaction as every log line, and by what the token
            // files hold and the device keys' hashes: a secret pasted where a
            // path or URL belongs must not be echoed to a terminal or
            // journal, whatever its shape.
            let text = failure.describe();
            let candidates = config::token_file_candidates(&config_path);
            let paths: Vec<&Path> = candidates.iter().map(PathBuf::as_path).collect();
            let text = TokenFileText::read(&paths).redact(&text, REDACTED);
            let text = config::DeviceKeyHashes::read(&config_path).redact(&text, REDACTED);
            eprintln!("joulo-gateway: {}", redact(&text, None));
            code
        }
    }
}

fn run(mut cli: Cli) -> Result<(), Failure> {
    // Before any secret is read: no core file, not dumpable or traceable.
    let hardened = forbid_core_dumps();
    // The add-on: its options become a config under /data, written as root
    // (the Supervisor's /data is root's), then the gateway runs unprivileged.
    if let Some(Command::Addon { data, keys, listen }) = &cli.command {
        cli.config = Some(addon_prepare(data, keys, *listen, addon_owner())?);
        // Before the runtime starts a thread: the ids change for this one.
        addon_drop_root()?;
    }
    let warn_if_dumpable = || {
        if let Err(e) = &hardened {
            tracing::warn!(error = %e, "cannot forbid core dumps; set LimitCORE=0 (systemd) or ulimit -c 0");
        }
    };
    let addon = matches!(cli.command, Some(Command::Addon { .. }));
    let config_path = cli.config_path();
    let command = cli.command.unwrap_or(Command::Run);
    if cli.config.is_some() && matches!(command, Command::Demo { .. } | Command::GenKey { .. }) {
        return Err(Failure::Usage(
            "--config: `demo` and `gen-key` read no config file; leave --config out".to_owned(),
        ));
    }
    match command {
        Command::Check { online } => {
            let config = Config::load(&config_path)?;
            let tokens = Gateway::token_source(&config);
            // So a too-open token file's warning is shown.
            init_logging(&config.log, Some(tokens.clone()))?;
            warn_if_dumpable();
            warn_if_not_joulo(&config);
            // Builds what a run would: the token, upstream TLS settings, the
            // LAN certificate.
            Gateway::build_with(&config, tokens)?;
            if config.access.keyless {
                tracing::warn!(
                    "[access] keyless = true: every allowed address is served without a device \
                     key while there are none; any device on those networks can use the token"
                );
            }
            // Through the redactor like any error: a token pasted into a path
            // or URL that happens to work is still not echoed.
            let line = format!(
                "{}: valid; listens on {}, forwards to {}, token file {} holds a usable token; {}",
                config_path.display(),
                config.server.listen,
                config.upstream.base_url,
                config.upstream.token_file.display(),
                access_summary(&config),
            );
            let line = token_file_text(&config).redact(&line, REDACTED);
            println!("{}", redact(&line, None));
            if online {
                let runtime = runtime()?;
                let _guard = runtime.enter();
                let answer = runtime.block_on(ask_joulo_once(&config));
                let line = match answer {
                    Ok(status) if status.is_success() => {
                        println!("online: Joulo accepted the token (GET /me answered {status})");
                        return Ok(());
                    }
                    Ok(status) if status.as_u16() == 401 || status.as_u16() == 403 => format!(
                        "online: Joulo refused the token (GET /me answered {status}): write a \
                         valid token (Joulo app: Settings > API) into {}",
                        config.upstream.token_file.display()
                    ),
                    Ok(status) => format!("online: GET /me answered {status}; see the log above"),
                    Err(e) => format!("online: could not ask Joulo: {e}"),
                };
                return Err(Failure::Other(anyhow::anyhow!(line)));
            }
            Ok(())
        }
        Command::Device { action } => {
            print!("{}", device_command(&config_path, action.into())?);
            Ok(())
        }
        Command::GenKey { name, scopes } => {
            print!("{}", gen_key_text(&name, &scopes)?);
            Ok(())
        }
        Command::Healthcheck { url, ca } => {
            let target = match url {
                Some(url) => HealthcheckTarget::from_url(url, ca.as_deref()),
                None => HealthcheckTarget::from_config(&config_path),
            }
            .map_err(anyhow::Error::from)?;
            let runtime = runtime()?;
            runtime
                .block_on(target.check())
                .map_err(anyhow::Error::from)?;
            Ok(())
        }
        Command::Demo { listen } => {
            let runtime = runtime()?;
            let _guard = runtime.enter();
            let stop = shutdown_signal();
            Ok(runtime.block_on(demo::run(listen, stop))?)
        }
        // The add-on's config was written above.
        Command::Run | Command::Addon { .. } => {
            let mut config = Config::load(&config_path)?;
            let tokens = Gateway::token_source(&config);
            let log_level = init_logging(&config.log, Some(tokens.clone()))?;
            warn_if_dumpable();
            warn_if_not_joulo(&config);
            // The add-on's broker comes from the Supervisor, asked once at
            // start (as the add-on's options are read once): the password
            // stays in memory, never in a file under /data.
            if addon && config.mqtt.is_none() {
                match Supervisor::from_env() {
                    Ok(supervisor) => {
                        config.mqtt = runtime()?.block_on(addon_mqtt_from_supervisor(&supervisor));
                    }
                    Err(e) => tracing::warn!(error = %e, "MQTT discovery is off"),
                }
            }
            // Every check that can fail, before the port is bound.
            let gateway =
                Gateway::build_with(&config, tokens)?.reload_config_from(config_path, log_level);
            // More event loops, if configured, are started by the server.
            let runtime = runtime()?;
            let _guard = runtime.enter();
            let shutdown = shutdown_signal();
            runtime.block_on(async {
                let listener = bind_listener(config.server.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.server.listen))?;
                gateway.serve(listener, shutdown).await;
                Ok(())
            })
        }
    }
}

/// One warning when `base_url` is not Joulo's own host: the token is sent
/// wherever it points, so a typo or a pasted test URL should be seen. (The
/// library does not warn, so tests and the demo, which point at a local
/// mock, stay quiet.)
fn warn_if_not_joulo(config: &Config) {
    let host = config.upstream.base_url.host().unwrap_or("");
    if !host.eq_ignore_ascii_case("api.joulo.nl") {
        // Logged before the token is loaded, so the log writer does not know
        // it yet: a token pasted as the host is scrubbed here.
        let host = token_file_text(config).redact(host, REDACTED);
        tracing::warn!(
            host = %host,
            "upstream.base_url points at {host}, not api.joulo.nl: the Joulo token is sent there"
        );
    }
}

/// Who the config lets in without a key, for `check`'s line.
fn access_summary(config: &Config) -> String {
    let devices = config.access.clients.len();
    if devices > 0 {
        format!("{devices} device key(s); every client needs one")
    } else if config.access.keyless {
        "no device keys and keyless = true: every allowed address is served without a key"
            .to_owned()
    } else {
        "no device keys yet: only this host is served; add one with `joulo-gateway device add NAME`"
            .to_owned()
    }
}

/// What `config`'s token files hold, to scrub from what is printed.
fn token_file_text(config: &Config) -> TokenFileText {
    let upstream = &config.upstream;
    let paths: Vec<&Path> = std::iter::once(upstream.token_file.as_path())
        .chain(upstream.token_origin.as_deref())
        .collect();
    TokenFileText::read(&paths)
}

/// A single-threaded runtime: tokio's current-thread scheduler skips the
/// work-stealing machinery; bench/profile counts 2-5% fewer instructions per
/// request than with the multi-threaded one.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
