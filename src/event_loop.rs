//! Which of the server's event loops the current thread runs, so per-loop
//! resources (the upstream connection pools) can be picked without passing an
//! index down every call. Below both the server, which starts the loops, and
//! the upstream client, which picks its pool.

use std::cell::Cell;

thread_local! {
    /// This thread's event loop; 0 on any thread that is not one of the extra
    /// loops, such as the one the server is started on.
    static EVENT_LOOP: Cell<usize> = const { Cell::new(0) };
}

/// The index of the event loop running on this thread. Any index would still
/// work, only slower.
pub fn current() -> usize {
    EVENT_LOOP.with(Cell::get)
}

/// Marks this thread as running event loop `index`; called once, by the
/// thread the server starts for that loop.
pub fn enter(index: usize) {
    EVENT_LOOP.with(|current| current.set(index));
}
