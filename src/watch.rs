//! When secrets files are re-read: on SIGHUP, and when a watched file's metadata
//! changes (an atomic rename or a Kubernetes symlink swap changes it too). Polling
//! metadata needs no platform file-event API and works on every filesystem.

use std::path::{Path, PathBuf};
use std::sync::Arc;
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
pub fn watch_files(
    paths: Vec<PathBuf>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
    reload: impl Fn(Trigger) + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let mut hangup = hangup_signal();
    let reload = Arc::new(reload);
    async move {
        let mut last = fingerprints(&paths).await;
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

/// What identifies one version of a file without reading it.
#[derive(Debug, PartialEq, Eq)]
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
    let meta = tokio::fs::metadata(path).await.ok()?;
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
