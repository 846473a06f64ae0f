//! When secrets files are re-read: on SIGHUP (passed on by the gateway's signal
//! hub as [`Hangups`]), and when a watched file's metadata
//! changes (an atomic rename or a Kubernetes symlink swap changes it too). On
//! Linux the kernel says when something in the files' folders changed
//! (inotify), so an idle gateway is never woken to look; where that is not
//! available, the metadata is polled instead.

use crate::sync::lock_unpoisoned;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::warn;

/// What made a reload happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The operator sent SIGHUP.
    Hangup,
    /// A watched file changed, appeared or disappeared.
    FileChange,
}

impl Trigger {
    /// For log fields.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Hangup => "SIGHUP",
            Trigger::FileChange => "file change",
        }
    }
}

/// Calls `reload` (on a blocking thread: it reads files) whenever `paths` change
/// or a SIGHUP comes through `hangups`, until `shutdown` resolves.
///
/// Starts from `loaded`, the files' state taken just before they were last read:
/// comparing with it rather than with the state when the watcher first runs
/// means a change made between the initial load and the watcher's first poll (a
/// busy start-up) is not missed.
pub(crate) fn watch_files(
    paths: Vec<PathBuf>,
    loaded: Baseline,
    interval: Duration,
    mut hangups: Hangups,
    shutdown: impl Future<Output = ()>,
    reload: impl Fn(Trigger) + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let reload = Arc::new(reload);
    async move {
        let mut last = loaded.0;
        let mut notified = FolderEvents::watch(&paths);
        // Polling only where change notification could not be set up.
        let mut ticker = notified.is_none().then(|| {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        tokio::pin!(shutdown);
        // Looked at once straight away: a change made between the initial
        // load and now would raise no event later.
        let mut first = true;
        loop {
            let trigger = if std::mem::take(&mut first) {
                Trigger::FileChange
            } else {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = next_tick(&mut ticker) => Trigger::FileChange,
                    changed = next_event(&mut notified) => {
                        if !changed {
                            // The event stream failed: poll from now on.
                            warn!("file change notification stopped; polling the token and certificate files instead");
                            notified = None;
                            let mut polling = tokio::time::interval(interval);
                            polling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            ticker = Some(polling);
                        }
                        Trigger::FileChange
                    }
                    () = hangups.next() => Trigger::Hangup,
                }
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

/// The next poll, or never when not polling.
async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Waits for a change in a watched folder: true for an event, false when the
/// stream ended or failed; never returns without a stream.
async fn next_event(events: &mut Option<FolderEvents>) -> bool {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// Change notification for the folders the watched files are in. The folder,
/// not the file, is watched: an atomic rename replaces the file (a watch on
/// the old inode would see nothing), and Kubernetes swaps a `..data` symlink
/// beside it.
#[cfg(target_os = "linux")]
struct FolderEvents(inotify::EventStream<Vec<u8>>);

#[cfg(target_os = "linux")]
impl FolderEvents {
    /// Notification for the folders of `paths`, or `None` (with a debug line
    /// saying why) when it cannot be set up: then the caller polls.
    fn watch(paths: &[PathBuf]) -> Option<FolderEvents> {
        use inotify::{Inotify, WatchMask};
        let set_up = || -> std::io::Result<FolderEvents> {
            let inotify = Inotify::init()?;
            // The folder of the path, and of the file a link leads to: a token
            // kept elsewhere and linked in changes where it really lies.
            let folders = paths.iter().flat_map(|path| {
                let own = match path.parent() {
                    Some(folder) if !folder.as_os_str().is_empty() => folder.to_owned(),
                    _ => PathBuf::from("."),
                };
                let target = std::fs::canonicalize(path)
                    .ok()
                    .and_then(|real| real.parent().map(Path::to_owned));
                std::iter::once(own).chain(target)
            });
            for folder in folders {
                inotify.watches().add(
                    &folder,
                    WatchMask::CREATE
                        | WatchMask::DELETE
                        | WatchMask::MOVED_FROM
                        | WatchMask::MOVED_TO
                        | WatchMask::CLOSE_WRITE
                        | WatchMask::MODIFY
                        | WatchMask::ATTRIB
                        | WatchMask::DELETE_SELF
                        | WatchMask::MOVE_SELF,
                )?;
            }
            Ok(FolderEvents(inotify.into_event_stream(vec![0u8; 4096])?))
        };
        set_up()
            .map_err(
                |e| tracing::debug!(error = %e, "no file change notification; polling instead"),
            )
            .ok()
    }

    async fn next(&mut self) -> bool {
        use futures_util::StreamExt;
        matches!(self.0.next().await, Some(Ok(_)))
    }
}

/// Without inotify there is no notification: always polled.
#[cfg(not(target_os = "linux"))]
struct FolderEvents;

#[cfg(not(target_os = "linux"))]
impl FolderEvents {
    fn watch(_paths: &[PathBuf]) -> Option<FolderEvents> {
        None
    }

    async fn next(&mut self) -> bool {
        std::future::pending().await
    }
}

/// The state of watched files just before their owner last read them: where
/// [`watch_files`] starts comparing from.
#[derive(Debug, Default)]
pub(crate) struct LoadedState(Mutex<Vec<Option<Fingerprint>>>);

impl LoadedState {
    /// Records the files' state now. Called just before reading them, so any
    /// later change shows up as a difference.
    pub(crate) fn record(&self, paths: &[&Path]) {
        let now = paths
            .iter()
            .map(|path| fingerprint_of(std::fs::metadata(path).ok()?))
            .collect();
        *lock_unpoisoned(&self.0) = now;
    }

    /// The recorded state, for [`watch_files`] to start from.
    pub(crate) fn baseline(&self) -> Baseline {
        Baseline(lock_unpoisoned(&self.0).clone())
    }
}

/// A copy of a [`LoadedState`].
#[derive(Debug)]
pub(crate) struct Baseline(Vec<Option<Fingerprint>>);

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

/// SIGHUPs as the gateway's one signal hub passes them on (see
/// [`crate::gateway`]): each copy sees every hangup that arrives after it was
/// made; several close together may be seen as one, as with signals themselves.
#[derive(Debug, Clone)]
pub struct Hangups(Option<tokio::sync::watch::Receiver<()>>);

impl Hangups {
    /// The hangups announced on `receiver`'s channel, one `send` each.
    pub fn new(receiver: tokio::sync::watch::Receiver<()>) -> Hangups {
        Hangups(Some(receiver))
    }

    /// No hangup ever: for a watcher that follows file changes only.
    pub fn none() -> Hangups {
        Hangups(None)
    }

    /// Waits for the next hangup; never resolves once the hub is gone.
    pub async fn next(&mut self) {
        if let Some(receiver) = &mut self.0 {
            if receiver.changed().await.is_ok() {
                return;
            }
            self.0 = None;
        }
        std::future::pending().await
    }
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
            Hangups::none(),
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
    async fn a_change_is_seen_by_notification_without_polling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("joulo_token");
        std::fs::write(&path, "first").unwrap();
        let loaded = LoadedState::default();
        loaded.record(&[&path]);
        let (tx, mut reloads) = tokio::sync::mpsc::unbounded_channel();
        // An hour between polls: only a notification can be this quick.
        let task = tokio::spawn(watch_files(
            vec![path.clone()],
            loaded.baseline(),
            Duration::from_secs(3600),
            Hangups::none(),
            std::future::pending(),
            move |trigger| {
                let _ = tx.send(trigger);
            },
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Replaced atomically, as Docker and Kubernetes secret updates do.
        let staged = dir.path().join(".joulo_token.new");
        std::fs::write(&staged, "second").unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let trigger = tokio::time::timeout(Duration::from_secs(5), reloads.recv()).await;
        assert_eq!(trigger.ok().flatten(), Some(Trigger::FileChange));
        // An unrelated file in the same folder wakes the watcher but is not a reload.
        std::fs::write(dir.path().join("gateway.toml"), "x").unwrap();
        let extra = tokio::time::timeout(Duration::from_millis(300), reloads.recv()).await;
        assert!(extra.is_err(), "reloaded for another file: {extra:?}");
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
