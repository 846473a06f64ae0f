//! Re-reading `gateway.toml` without a restart: on SIGHUP (`systemctl
//! reload`) and when the devices file changes, the file is read and validated again and, if valid, its device
//! keys, access rules, limits, cache settings, routes and log level apply to
//! new requests at once; a config that fails validation changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::config::Config;
use crate::logging::LogLevel;
use crate::state::AppState;
use crate::watch::{Baseline, Hangups};

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
    // Under `keyless = true`, no keys means every allowed address is served
    // without one. A devices file truncated by an editor, deleted, or a bind
    // mount gone looks just like "the last key removed": a reload does not
    // open the gateway that way (outside review, 23); a restart does, on
    // purpose.
    let keys_now = state.policy.load().access.key_count();
    if config.access.keyless && config.access.clients.is_empty() && keys_now > 0 {
        state.count_reload(false);
        let why = format!(
            "this reload would remove the last device key while [access] keyless = true, which \
             would serve every allowed address without a key; the {keys_now} key(s) stay. If the \
             devices file ({}) was emptied or removed by mistake, restore it; to run keyless on \
             purpose, restart the gateway",
            config.access.devices_file.display()
        );
        error!(reason = %why, "config reload refused; the previous settings stay in force");
        return Reloaded::Refused(why);
    }
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
    if config.access.keyless {
        warn!(
            "[access] keyless = true: while there are no device keys, every allowed address is \
             served without one"
        );
    }
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

/// Reloads the config at `path` on every SIGHUP (`hangups`) and whenever
/// the devices file changes (the same change notification as the token
/// file's, starting from `loaded`, its state when the config was read),
/// until `shutdown` resolves.
pub(crate) async fn watch(
    path: PathBuf,
    state: Arc<AppState>,
    log: LogLevel,
    devices: (PathBuf, Baseline),
    interval: std::time::Duration,
    hangups: Hangups,
    shutdown: impl Future<Output = ()>,
) {
    let (devices_file, loaded) = devices;
    crate::watch::watch_files(
        vec![devices_file],
        loaded,
        interval,
        hangups,
        shutdown,
        move |trigger| {
            info!(
                trigger = trigger.as_str(),
                "re-reading the config and the devices file"
            );
            reload_once(&path, &state, &log);
        },
    )
    .await;
}
