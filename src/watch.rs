//! When secrets files are re-read: on SIGHUP, and when a watched file's metadata
//! changes (an atomic rename or a Kubernetes symlink swap changes it too). Polling
//! metadata needs no platform file-event API and works on every filesystem.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::warn;

/// What made a reload happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The operator sent SIGHUP.
    Hangup,
    /// A watched file changed, appeared or disappeared.
    FileChange,
}

impl Trigger {
    /// For log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Hangup => "SIGHUP",
            Trigger::FileChange => "file change",
        }
    }
}

/// Calls `reload` (on a blocking thread: it reads files) whenever `paths` change
/// or SIGHUP arrives, until `shutdown` resolves. The SIGHUP handler is installed
/// before this returns, so a reload requested right after start cannot hit the
/// default action (terminating the process).
///
/// Starts from `loaded`, the files' state taken just before they were last read:
/// comparing with it rather than with the state when the watcher first runs
/// means a change made between the initial load and the watcher's first poll (a
/// busy start-up) is not missed.
pub fn watch_files(
    paths: Vec<PathBuf>,
    loaded: Baseline,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
    reload: impl Fn(Trigger) + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let mut hangup = hangup_signal();
    let reload = Arc::new(reload);
    async move {
        let mut last = loaded.0;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let trigger = tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => Trigger::FileChange,
                () = recv_hangup(&mut hangup) => Trigger::Hangup,
            };
            let now = fingerprints(&paths).await;
            if trigger == Trigger::FileChange && now == last {
                continue;
            }
            last = now;
            let reload = reload.clone();
            if tokio::task::spawn_blocking(move || reload(trigger))
                .await
                .is_err()
            {
                warn!("a reload task panicked");
            }
        }
    }
}

/// The state of watched files just before their owner last read them: where
/// [`watch_files`] starts comparing from.
#[derive(Debug, Default)]
pub struct LoadedState(Mutex<Vec<Option<Fingerprint>>>);

impl LoadedState {
    /// Records the files' state now. Called just before reading them, so any
    /// later change shows up as a difference.
    pub fn record(&self, paths: &[&Path]) {
        let now = paths
            .iter()
            .map(|path| fingerprint_of(std::fs::metadata(path).ok()?))
            .collect();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// The recorded state, for [`watch_files`] to start from.
    pub fn baseline(&self) -> Baseline {
        Baseline(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// A copy of a [`LoadedState`].
#[derive(Debug)]
pub struct Baseline(Vec<Option<Fingerprint>>);

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64, i64, i64),
}

async fn fingerprints(paths: &[PathBuf]) -> Vec<Option<Fingerprint>> {
    let mut all = Vec::with_capacity(paths.len());
    for path in paths {
        all.push(fingerprint(path).await);
    }
    all
}

async fn fingerprint(path: &Path) -> Option<Fingerprint> {
    fingerprint_of(tokio::fs::metadata(path).await.ok()?)
}

fn fingerprint_of(meta: std::fs::Metadata) -> Option<Fingerprint> {
    Some(Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        inode: {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
        },
    })
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .map_err(|e| warn!(error = %e, "cannot listen for SIGHUP; file changes still reload"))
        .ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn recv_hangup(signal: &mut Hangup) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::UnboundedReceiver;
    use tokio::task::JoinHandle;

    /// Watches `path` every 10 ms from the `loaded` state; reloads arrive on the
    /// receiver.
    fn watching(path: &Path, loaded: &LoadedState) -> (JoinHandle<()>, UnboundedReceiver<Trigger>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = watch_files(
            vec![path.to_owned()],
            loaded.baseline(),
            Duration::from_millis(10),
            std::future::pending(),
            move |trigger| {
                let _ = tx.send(trigger);
            },
        );
        (tokio::spawn(watcher), rx)
    }

    #[tokio::test]
    async fn a_change_before_the_first_poll_is_not_missed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("joulo_token");
        std::fs::write(&path, "first").unwrap();
        // The file as it was loaded at start...
        let loaded = LoadedState::default();
        loaded.record(&[&path]);
        // ...then removed before the watcher has looked at it even once, as on a
        // start-up busy enough that the watcher task runs late.
        std::fs::remove_file(&path).unwrap();
        let (task, mut reloads) = watching(&path, &loaded);
        let trigger = tokio::time::timeout(Duration::from_secs(5), reloads.recv()).await;
        assert_eq!(trigger.ok().flatten(), Some(Trigger::FileChange));
        task.abort();
    }

    #[tokio::test]
    async fn an_unchanged_file_is_not_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("joulo_token");
        std::fs::write(&path, "same").unwrap();
        let loaded = LoadedState::default();
        loaded.record(&[&path]);
        let (task, mut reloads) = watching(&path, &loaded);
        let reloaded = tokio::time::timeout(Duration::from_millis(300), reloads.recv()).await;
        assert!(reloaded.is_err(), "reloaded without a change: {reloaded:?}");
        task.abort();
    }
}
