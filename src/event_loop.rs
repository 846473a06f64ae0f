//! The server's event loops: the extra single-threaded runtimes connections
//! are shared out to, and which of them the current thread runs, so per-loop
//! resources (the upstream connection pools) can be picked without passing an
//! index down every call. Below both the server, which starts the loops, and
//! the upstream client, which picks its pool.

use std::cell::Cell;
use std::io;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's event loop; 0 on any thread that is not one of the extra
    /// loops, such as the one the server is started on.
    static EVENT_LOOP: Cell<usize> = const { Cell::new(0) };
}

/// The index of the event loop running on this thread. Any index would still
/// work, only slower.
pub(crate) fn current() -> usize {
    EVENT_LOOP.with(Cell::get)
}

/// Marks this thread as running event loop `index`; called once, by the
/// thread the server starts for that loop.
pub(crate) fn enter(index: usize) {
    EVENT_LOOP.with(|current| current.set(index));
}

/// The event loops connections are shared out to: the one `run` is called on
/// and `server.worker_threads - 1` more, each a single-threaded tokio runtime
/// on a thread of its own. A connection stays on one loop for its life, as on
/// one of nginx's worker processes, so a request never wakes another thread.
/// One work-stealing runtime with two threads was measured no faster than one
/// thread (docs/performance.md); separate loops were.
pub(crate) struct EventLoops {
    /// The loops besides the caller's.
    others: Vec<Handle>,
    /// Where the next connection goes: 0 is the caller's loop.
    next: usize,
    /// Dropping one ends that loop.
    stops: Vec<oneshot::Sender<()>>,
    /// Joined at the end, so the loops are gone when `stop` returns.
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EventLoops {
    /// Starts `count - 1` loops beside the caller's.
    pub(crate) fn start(count: usize) -> io::Result<EventLoops> {
        let mut loops = EventLoops {
            others: Vec::new(),
            next: 0,
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for index in 1..count {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("joulo-loop-{index}"))
                .spawn(move || {
                    enter(index);
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => return drop(handle_tx.send(Err(e))),
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stop_rx.await;
                    });
                    // Connections still open after the grace period end here,
                    // as they do on the caller's loop when its runtime goes; a
                    // blocking task (an upstream DNS lookup) is not waited for.
                    runtime.shutdown_background();
                })?;
            loops.stops.push(stop_tx);
            loops.threads.push(thread);
            let handle = handle_rx
                .recv()
                .map_err(|_| io::Error::other("event loop thread ended at start"))??;
            loops.others.push(handle);
        }
        Ok(loops)
    }

    /// The loop for the next connection, round-robin, by index (0 is the
    /// caller's) and handle (`None` for the caller's).
    pub(crate) fn next_loop(&mut self) -> (usize, Option<&Handle>) {
        let index = self.next;
        self.next = (index + 1) % (self.others.len() + 1);
        (index, index.checked_sub(1).map(|i| &self.others[i]))
    }

    /// Ends the other loops, dropping whatever connections they still hold.
    pub(crate) async fn stop(self) {
        drop(self.stops);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
