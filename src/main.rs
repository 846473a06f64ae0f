//! The `joulo-gateway` command: parses the command line, loads the config, sets up
//! logging and hands over to the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use joulo_gateway::config::{self, Config, ConfigError};
use joulo_gateway::state::{AppState, StartError};
use joulo_gateway::token::{TokenError, TokenSource};
use joulo_gateway::{access, demo, hardening, healthcheck, logging, reload, server};

/// Exit status for a bad config, token file or argument (EX_USAGE from sysexits.h).
const EXIT_CONFIG: u8 = 64;

/// A LAN gateway for the Joulo EV-charging API: home devices call it without the
/// token; it strips `?token=`, injects the bearer token and keeps it out of logs.
#[derive(Parser)]
#[command(
    version,
    about,
    after_long_help = "Settings live in the config file (--config, default gateway.toml; \
        /etc/joulo-gateway/gateway.toml when installed from the package): every key is \
        listed there with its default and what it does. SIGHUP re-reads it, the token file \
        and the LAN certificate; under the systemd unit the token is a copy taken at start, \
        so a new token needs `systemctl restart joulo-gateway`."
)]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config and the token file, then exit (0 = valid, 64 = not).
    Check,
    /// Make a key for one device and print it once, with its `[[clients]]` entry.
    GenKey {
        /// The device's name, as the access log will show it.
        #[arg(long)]
        name: String,
        /// Comma-separated Joulo scopes: chargers:read, chargers:write,
        /// sessions:read, energy:read.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// Exit 0 if the gateway answers 200 on /healthz within 3 s (for
    /// container health checks and watchdogs, where no curl exists). Without
    /// --url it asks what --config serves: its listen address, over HTTPS with
    /// its own certificate pinned when tls_cert is set.
    Healthcheck {
        /// Ask this URL instead of the config's listener.
        #[arg(long)]
        url: Option<http::Uri>,
        /// A PEM CA (or the certificate itself) to verify an https --url against.
        #[arg(long, requires = "url")]
        ca: Option<PathBuf>,
    },
    /// Write the manual page or shell completions, made from this command
    /// line's own definition so they cannot drift from --help.
    #[command(hide = true)]
    Generate {
        /// What to write.
        #[arg(value_enum)]
        what: Generated,
        /// Where to write it (a folder for `man`, which writes one page per
        /// command); standard output without.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Start a simulated Joulo API and the gateway in front of it, on loopback.
    Demo {
        /// Where the demo gateway listens (a free port is used if this one is taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The same redaction as every log line: a token pasted where a
            // path or URL belongs must not be echoed to a terminal or journal.
            let text = describe(&e);
            eprintln!("joulo-gateway: {}", logging::redact(&text, None));
            if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<TokenError>().is_some()
                || e.downcast_ref::<StartError>().is_some()
                || e.downcast_ref::<access::GenKeyError>().is_some()
            {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes joined by ": ", as `{:#}` prints them, except that
/// a cause the message before it already ends with is not printed twice (the
/// library's errors quote their cause, so that a log line has it too).
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.ends_with(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// What `generate` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Generated {
    /// joulo-gateway(1) and a page per subcommand (roff).
    Man,
    /// Completions for bash.
    Bash,
    /// Completions for zsh.
    Zsh,
    /// Completions for fish.
    Fish,
}

/// What joulo-gateway(1) adds to the sections made from the command line: the
/// files an installed gateway reads, and where to read on.
const MAN_FILES_AND_SEE_ALSO: &str = r#".SH FILES
.TP
\fI/etc/joulo\-gateway/gateway.toml\fR
The configuration, as the Debian package installs it (a conffile). Every key,
its default and what it does is in
\fI/usr/share/doc/joulo\-gateway/examples/gateway.toml\fR.
.TP
\fI/etc/joulo\-gateway/joulo_token\fR
The Joulo API token, on one line: root's, mode 600. The systemd unit passes it
to the service as the credential \fBjoulo_token\fR, a copy taken at start, so
after changing it run \fBsystemctl restart joulo\-gateway\fR.
.TP
\fI/usr/lib/systemd/system/joulo\-gateway.service\fR
The hardened unit. \fBsystemctl reload joulo\-gateway\fR re-reads the
configuration; change the unit with \fBsystemctl edit joulo\-gateway\fR.
.SH "SEE ALSO"
\fBjoulo\-gateway\-run\fR(1), \fBjoulo\-gateway\-check\fR(1),
\fBjoulo\-gateway\-gen\-key\fR(1), \fBjoulo\-gateway\-healthcheck\fR(1),
\fBjoulo\-gateway\-demo\fR(1), \fBsystemd.exec\fR(5), \fBsystemd\-creds\fR(1)
.PP
\fI/usr/share/doc/joulo\-gateway/README.md\fR
"#;

/// Writes the manual pages or completions from the command line's definition.
fn generate(what: Generated, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut command = Cli::command();
    command.build();
    let shell = match what {
        Generated::Man => {
            let pages = std::iter::once(command.clone()).chain(
                command
                    .get_subcommands()
                    .filter(|c| !c.is_hide_set())
                    .map(|sub| {
                        let name = format!("joulo-gateway-{}", sub.get_name());
                        sub.clone().name(name).version(env!("CARGO_PKG_VERSION"))
                    }),
            );
            for page in pages {
                let mut roff = Vec::new();
                clap_mangen::Man::new(page.clone()).render(&mut roff)?;
                if page.get_name() == command.get_name() {
                    roff.extend_from_slice(MAN_FILES_AND_SEE_ALSO.as_bytes());
                }
                match out {
                    Some(dir) => {
                        let file = dir.join(format!("{}.1", page.get_name()));
                        std::fs::write(&file, roff)
                            .with_context(|| format!("cannot write {}", file.display()))?;
                    }
                    None => std::io::stdout().write_all(&roff)?,
                }
            }
            return Ok(());
        }
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "joulo-gateway", &mut script);
    if shell == clap_complete::Shell::Bash {
        // clap_complete spells a hyphenated program's subcommands one way where
        // it sets `cmd` and another in the `case` on it (clap-rs/clap#6421),
        // so no subcommand's options would complete.
        let text = String::from_utf8(script)?;
        script = text
            .replace("joulo__subcmd__gateway__", "joulo__gateway__")
            .into_bytes();
    }
    match out {
        Some(file) => std::fs::write(file, script)
            .with_context(|| format!("cannot write {}", file.display()))?,
        None => std::io::stdout().write_all(&script)?,
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before any secret is read: no core file, not dumpable or traceable.
    let hardened = hardening::forbid_core_dumps();
    let warn_if_dumpable = || {
        if let Err(e) = &hardened {
            tracing::warn!(error = %e, "cannot forbid core dumps; set LimitCORE=0 (systemd) or ulimit -c 0");
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            let config = Config::load(&cli.config)?;
            let tokens = TokenSource::with_origin(
                config.upstream.token_file.clone(),
                config.upstream.token_origin.clone(),
            );
            // So a too-open token file's warning is shown.
            logging::init(&config.log, Some(tokens.clone()))?;
            warn_if_dumpable();
            warn_if_not_joulo(&config);
            tokens.reload()?;
            // Builds what a run would: upstream TLS settings, the LAN certificate.
            AppState::new(&config, tokens)?;
            // Through the redactor like any error: a token pasted into a path
            // or URL that happens to work is still not echoed.
            let line = format!(
                "{}: valid; listens on {}, forwards to {}, token file {} holds a usable token",
                cli.config.display(),
                config.server.listen,
                config.upstream.base_url,
                config.upstream.token_file.display()
            );
            println!("{}", logging::redact(&line, None));
            Ok(())
        }
        Command::GenKey { name, scopes } => {
            print!("{}", access::gen_key_text(&name, &scopes)?);
            Ok(())
        }
        Command::Healthcheck { url, ca } => {
            let target = match url {
                Some(url) => healthcheck::Target::from_url(url, ca.as_deref())?,
                None => healthcheck::Target::from_config(&cli.config)?,
            };
            let runtime = runtime()?;
            runtime.block_on(target.check())?;
            Ok(())
        }
        Command::Generate { what, out } => generate(what, out.as_deref()),
        Command::Demo { listen } => {
            let runtime = runtime()?;
            let _guard = runtime.enter();
            // The demo belongs to its terminal: closing it (SIGHUP) ends the
            // demo and deletes its files, rather than leaving it running
            // re-parented to init.
            let stop = shutdown_signal();
            let hangup = hangup_signal();
            runtime.block_on(demo::run(listen, async {
                tokio::select! {
                    () = stop => {}
                    () = hangup => {}
                }
            }))
        }
        Command::Run => {
            let config = Config::load(&cli.config)?;
            let tokens = TokenSource::with_origin(
                config.upstream.token_file.clone(),
                config.upstream.token_origin.clone(),
            );
            let log_level = logging::init(&config.log, Some(tokens.clone()))?;
            warn_if_dumpable();
            warn_if_not_joulo(&config);
            tokens.reload()?;
            // More event loops, if configured, are started by the server.
            let runtime = runtime()?;
            let _guard = runtime.enter();
            let shutdown = shutdown_signal();
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.server.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.server.listen))?;
                let state = Arc::new(AppState::new(&config, tokens)?);
                // SIGHUP re-reads gateway.toml too (it ends with the runtime).
                tokio::spawn(reload::watch(
                    cli.config.clone(),
                    state.clone(),
                    log_level,
                    std::future::pending(),
                ));
                // systemd Type=notify: ready once the listener is up (a no-op elsewhere).
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                server::run(listener, &config, state, shutdown).await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
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
        tracing::warn!(
            host,
            "upstream.base_url points at {host}, not api.joulo.nl: the Joulo token is sent there"
        );
    }
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

/// Resolves on SIGHUP (the terminal closed). Installed when called, like
/// [`shutdown_signal`]; elsewhere than Unix it never resolves.
fn hangup_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler installs");
        async move {
            hangup.recv().await;
        }
    }
    #[cfg(not(unix))]
    std::future::pending()
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, Docker). The handlers are
/// installed when this is called, not when first polled, so a stop request that
/// arrives during start-up is not lost to the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
        async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
