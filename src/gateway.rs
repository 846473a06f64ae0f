//! The gateway assembled, and the one file that says what happens on SIGHUP
//! and on shutdown. [`Gateway::build`] does every check that can fail (the
//! token, the upstream TLS settings, the LAN certificate) and opens no
//! socket; [`Gateway::serve`] runs it on a bound listener: one signal hub
//! passes SIGHUP to the token, certificate and `gateway.toml` reloads, the
//! background tasks run beside the accept loop, and on shutdown no connection
//! is accepted, those open are drained within `server.shutdown_grace`, then
//! the background tasks stop.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::logging::LogLevel;
use crate::mqtt::{MqttError, Publisher};
use crate::state::{AppState, StateError};
use crate::token::{TokenError, TokenSource};
use crate::watch::{Baseline, Hangups, LoadedState};
use crate::{reload, server};

/// A gateway built from a validated config, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    /// The config it was built from: the listener's limits and timeouts.
    config: Config,
    /// What every request shares.
    state: Arc<AppState>,
    /// Where `gateway.toml` is re-read from on SIGHUP, and the log level a
    /// reload sets; `None` when nothing is reloaded (tests, the demo).
    config_reload: Option<(PathBuf, LogLevel)>,
    /// Whether SIGHUP stops the gateway instead of reloading.
    on_hangup: OnHangup,
    /// The MQTT publisher, when `[mqtt]` is configured.
    publisher: Option<Publisher>,
    /// The devices file's state when the gateway was built: its watcher
    /// starts from here, so a change made during start-up is not missed.
    devices_loaded: LoadedState,
}

/// What SIGHUP does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnHangup {
    /// Re-reads the token, the LAN certificate and `gateway.toml`.
    Reload,
    /// Re-reads the token and certificate, then stops: the terminal a demo
    /// runs in was closed.
    Stop,
}

/// Why the gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The token file.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The upstream TLS settings or the LAN certificate.
    #[error(transparent)]
    State(#[from] StateError),
    /// The MQTT broker's password file or TLS settings.
    #[error(transparent)]
    Mqtt(#[from] MqttError),
}

impl Gateway {
    /// Where `config`'s token comes from. Callers that set up logging before
    /// the build (so a warning about the token file is scrubbed and shown)
    /// make it here and hand it to [`Gateway::build_with`].
    pub fn token_source(config: &Config) -> TokenSource {
        TokenSource::with_origin(
            config.upstream.token_file.clone(),
            config.upstream.token_origin.clone(),
        )
    }

    /// Reads the token, checks the upstream TLS settings and loads the LAN
    /// certificate; opens no socket.
    pub fn build(config: &Config) -> Result<Gateway, StartError> {
        Gateway::build_with(config, Gateway::token_source(config))
    }

    /// [`Gateway::build`] with the token source made by
    /// [`Gateway::token_source`].
    pub fn build_with(config: &Config, tokens: TokenSource) -> Result<Gateway, StartError> {
        let devices_loaded = LoadedState::default();
        devices_loaded.record(&[config.access.devices_file.as_path()]);
        tokens.reload()?;
        let publisher = config.mqtt.as_ref().map(Publisher::build).transpose()?;
        let state = Arc::new(AppState::new(config, tokens)?);
        Ok(Gateway {
            config: config.clone(),
            state,
            config_reload: None,
            on_hangup: OnHangup::Reload,
            publisher,
            devices_loaded,
        })
    }

    /// SIGHUP re-reads `gateway.toml` at `path` too, and sets `log`'s level.
    pub fn reload_config_from(mut self, path: PathBuf, log: LogLevel) -> Gateway {
        self.config_reload = Some((path, log));
        self
    }

    /// SIGHUP stops the gateway (after a token and certificate re-read), as
    /// closing the demo's terminal should.
    pub fn stop_on_hangup(mut self) -> Gateway {
        self.on_hangup = OnHangup::Stop;
        self
    }

    /// The shared state, to look at its cache and counters.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves on `listener` until `shutdown` resolves, then drains (see the
    /// module's documentation). Tells systemd (`Type=notify`) when it is
    /// ready and when it stops; elsewhere that is a no-op. The SIGHUP handler
    /// is installed when this is called, not when first polled, so a SIGHUP
    /// right after start is not lost to the default action (terminating the
    /// process).
    pub fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> impl Future<Output = ()> {
        let signals = SignalHub::install();
        self.run(signals, listener, shutdown)
    }

    /// [`Gateway::serve`] once the signal hub is installed.
    async fn run(
        self,
        signals: SignalHub,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let Gateway {
            config,
            state,
            config_reload,
            on_hangup,
            publisher,
            devices_loaded,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = Stopped(stop_rx);
        let config_reload = config_reload.map(|(path, log)| (path, log, devices_loaded.baseline()));
        let mut background = background_tasks(&config, &state, config_reload, &signals, &stopped);
        if let Some(publisher) = publisher {
            background.push(tokio::spawn(publisher.run(state.clone(), stopped.wait())));
        }
        let mut hangups = signals.hangups();
        background.push(tokio::spawn(signals.run(stopped.wait())));

        let shutdown = async {
            match on_hangup {
                OnHangup::Reload => shutdown.await,
                OnHangup::Stop => tokio::select! {
                    () = shutdown => {}
                    () = hangups.next() => info!("SIGHUP: stopping"),
                },
            }
        };
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        server::run(listener, &config, state, shutdown).await;
        let _ = stop_tx.send(true);
        for task in background {
            let _ = task.await;
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
}

/// Every task that runs beside the accept loop, each until `stopped`: the
/// token and LAN certificate watchers and the `gateway.toml` reload, each
/// given SIGHUP by `signals`. The MQTT publisher (`[mqtt]`) is started
/// beside them in `run`, and so is stopped and awaited with the rest.
fn background_tasks(
    config: &Config,
    state: &Arc<AppState>,
    config_reload: Option<(PathBuf, LogLevel, Baseline)>,
    signals: &SignalHub,
    stopped: &Stopped,
) -> Vec<JoinHandle<()>> {
    let interval = config.upstream.token_poll_interval;
    let mut tasks = vec![tokio::spawn(state.tokens.clone().watch(
        interval,
        signals.hangups(),
        stopped.wait(),
    ))];
    if let Some(tls) = &state.lan_tls {
        tasks.push(tokio::spawn(tls.clone().watch(
            interval,
            signals.hangups(),
            stopped.wait(),
        )));
    }
    if let Some((path, log, loaded)) = config_reload {
        tasks.push(tokio::spawn(reload::watch(
            path,
            state.clone(),
            log,
            (config.access.devices_file.clone(), loaded),
            interval,
            signals.hangups(),
            stopped.wait(),
        )));
    }
    tasks
}

/// Set once the listener has drained: the background tasks end.
struct Stopped(watch::Receiver<bool>);

impl Stopped {
    /// Resolves once the gateway has stopped serving.
    fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.0.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }
}

/// The one place SIGHUP is received: each arrival is passed on to every
/// [`Hangups`] handed out.
struct SignalHub {
    /// The SIGHUP stream, when it could be set up.
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
    /// Announces each SIGHUP to the [`Hangups`].
    announce: watch::Sender<()>,
}

impl SignalHub {
    /// Takes SIGHUP over from its default action (terminating the process).
    fn install() -> SignalHub {
        #[cfg(unix)]
        let hangup = {
            use tokio::signal::unix::{SignalKind, signal};
            signal(SignalKind::hangup())
                .map_err(|e| {
                    warn!(
                        error = %e,
                        "cannot listen for SIGHUP; the token and certificate still reload on file \
                         changes, gateway.toml does not reload"
                    )
                })
                .ok()
        };
        SignalHub {
            #[cfg(unix)]
            hangup,
            announce: watch::channel(()).0,
        }
    }

    /// Every SIGHUP from now on.
    fn hangups(&self) -> Hangups {
        Hangups::new(self.announce.subscribe())
    }

    /// Passes SIGHUPs on until `shutdown` resolves.
    async fn run(self, shutdown: impl Future<Output = ()>) {
        #[cfg(unix)]
        {
            let SignalHub {
                mut hangup,
                announce,
            } = self;
            let Some(hangup) = hangup.as_mut() else {
                return shutdown.await;
            };
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    () = &mut shutdown => return,
                    received = hangup.recv() => match received {
                        Some(()) => {
                            announce.send_replace(());
                        }
                        None => return shutdown.await,
                    },
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _keep = self;
            shutdown.await
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, Docker): what ends
/// [`Gateway::serve`] in the binary. The handlers are installed when this is
/// called, not when first polled, so a stop request that arrives during
/// start-up is not lost to the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> {
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

/// The gateway's listening socket on `addr`, with room for 4,096 connections
/// not yet accepted (the kernel caps it at `net.core.somaxconn`, 4,096 by
/// default). tokio's `TcpListener::bind` leaves 1,024: 500 flooding
/// addresses opening 4,000 connections at once overflowed it, and a device's
/// SYN then waited a second for its retransmit.
pub async fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart may bind while the old
    // process's connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Connections the kernel may queue before the gateway accepts them.
const LISTEN_BACKLOG: u32 = 4096;

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One SIGHUP, received once by the hub, reaches every reload handed
    /// [`Hangups`]: the token, the certificate and `gateway.toml`.
    #[tokio::test]
    async fn one_sighup_reaches_every_reload() {
        let hub = SignalHub::install();
        let (mut token, mut certificate, mut config) =
            (hub.hangups(), hub.hangups(), hub.hangups());
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let running = tokio::spawn(hub.run(async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }));
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP)
            .unwrap();
        let all = async {
            token.next().await;
            certificate.next().await;
            config.next().await;
        };
        tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .expect("every holder saw the SIGHUP");
        let _ = stop_tx.send(true);
        running.await.unwrap();
    }

    /// The `gateway.toml` reload ends with the gateway: `serve` awaits every
    /// background task, so one left waiting on a shutdown that never comes
    /// would keep `serve` from returning.
    #[tokio::test]
    async fn serve_returns_once_drained_with_the_config_reload_running() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.toml");
        // Token-shaped, made at run time.
        let token = format!("joulo_{}", "Gw7".repeat(11).get(..32).unwrap());
        crate::files::write_private(&dir.path().join("joulo_token"), &token).unwrap();
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ntoken_file = \"joulo_token\"\n";
        std::fs::write(&config_path, text).unwrap();
        let config = Config::from_toml(text, &config_path).unwrap();
        let gateway = Gateway::build(&config)
            .unwrap()
            .reload_config_from(config_path, LogLevel::fixed());
        let listener = TcpListener::bind(config.server.listen).await.unwrap();
        let served = gateway.serve(listener, async {});
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("serve returned once drained");
    }
}
