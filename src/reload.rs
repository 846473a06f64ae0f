//! Re-reading `gateway.toml` without a restart: on SIGHUP (`systemctl
//! reload`), the file is read and validated again and, if valid, its device
//! keys, access rules, limits, cache settings, routes and log level apply to
//! new requests at once; a config that fails validation changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::config::Config;
use crate::logging::LogLevel;
use crate::state::AppState;
use crate::watch::Hangups;

/// What one reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// Applied; these changed keys need a restart and were not.
    Applied {
        /// The changed keys that take effect only after a restart.
        restart_needed: Vec<&'static str>,
    },
    /// The file did not validate: nothing changed. The problem, as logged.
    Refused(String),
}

/// Reads and applies the config at `path`, logging the result: one INFO line
/// when applied (and a WARN naming settings that need a restart), one ERROR
/// line naming the file, key and problem when refused.
pub fn reload_once(path: &std::path::Path, state: &AppState, log: &LogLevel) -> Reloaded {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            state.count_reload(false);
            error!(error = %e, "config reload refused; the previous settings stay in force");
            return Reloaded::Refused(e.to_string());
        }
    };
    let restart_needed = state.reload(&config);
    state.count_reload(true);
    let level = match log.apply(&config.log.level) {
        Ok(true) => "applied",
        Ok(false) => "kept (RUST_LOG is set)",
        Err(e) => {
            warn!(error = %e, "log.level not applied");
            "not applied"
        }
    };
    info!(
        file = %path.display(),
        devices = config.access.clients.len(),
        log_level = level,
        "config reloaded: device keys, access, limits, cache and routes apply to new requests"
    );
    if !restart_needed.is_empty() {
        warn!(
            keys = %restart_needed.join(", "),
            "these settings changed but need a restart; the running values stay"
        );
    }
    Reloaded::Applied { restart_needed }
}

/// Reloads the config at `path` on every SIGHUP (`hangups`) until `shutdown`
/// resolves.
pub(crate) async fn watch(
    path: PathBuf,
    state: Arc<AppState>,
    log: LogLevel,
    mut hangups: Hangups,
    shutdown: impl Future<Output = ()>,
) {
    let log = Arc::new(log);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = hangups.next() => {}
        }
        let (path, state, log) = (path.clone(), state.clone(), log.clone());
        // Reading the file blocks; the event loop does not.
        if tokio::task::spawn_blocking(move || reload_once(&path, &state, &log))
            .await
            .is_err()
        {
            warn!("the config reload task panicked");
        }
    }
}
