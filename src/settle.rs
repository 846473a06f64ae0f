//! Gives the memory of closed connections back to the system: a nudge to the
//! allocator on an event loop's thread shortly after connections close there.
//!
//! mimalloc (the binary's allocator, main.rs) returns freed pages to the
//! system only when the thread that freed them allocates again after its
//! purge delay (10 ms). A gateway that falls quiet after a burst, such as a
//! hostile device's stuck streams being dropped, does not, and kept
//! 5-18 MB above its idle RSS for as long as it stayed quiet
//! (bench/hostile). `mi_collect` would do it directly, but needs `unsafe`,
//! which this crate forbids; allocations past mimalloc's small-object size
//! each take its slow path, and every 10,000 of those it collects the
//! thread's heap, purging what is due. The nudge costs about 0.12 ms, at
//! most once per [`AFTER`] per event loop, and only after a connection has
//! closed, so an idle gateway still never wakes for it. With it, RSS after
//! the stuck-stream attack came back to 2.5-3.9 MB above idle.

use std::cell::Cell;
use std::time::Duration;

/// How long after a connection closes the allocator is nudged: connections
/// closing together are nudged for once.
const AFTER: Duration = Duration::from_millis(500);

/// Allocations on mimalloc's slow path that make it collect the heap once
/// (its `generic_collect` option, 10,000, plus one round of 100).
const SLOW_ALLOCATIONS: usize = 10_100;

/// Past mimalloc's small-object size (1 KiB), so never on its fast path.
const SLOW_SIZE: usize = 2048;

thread_local! {
    /// Whether a nudge is already due on this thread's event loop.
    static DUE: Cell<bool> = const { Cell::new(false) };
    /// Nudges made on this thread, for the tests.
    #[cfg(test)]
    static NUDGES: Cell<usize> = const { Cell::new(0) };
}

/// Called when a connection has ended, on its event loop's thread (within
/// its tokio runtime): nudges the allocator [`AFTER`] from now unless a
/// nudge is already due.
pub(crate) fn connection_closed() {
    if DUE.with(|due| due.replace(true)) {
        return;
    }
    // Each event loop is a single-threaded runtime, so the nudge runs on
    // the thread that freed.
    drop(tokio::spawn(async {
        tokio::time::sleep(AFTER).await;
        DUE.with(|due| due.set(false));
        nudge();
    }));
}

/// Makes this thread's heap collect once.
fn nudge() {
    for _ in 0..SLOW_ALLOCATIONS {
        // black_box: an allocation never used may be optimised away.
        std::hint::black_box(Vec::<u8>::with_capacity(SLOW_SIZE));
    }
    #[cfg(test)]
    NUDGES.with(|n| n.set(n.get() + 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn connections_closing_together_cost_one_nudge() {
        let before = NUDGES.with(Cell::get);
        for _ in 0..1000 {
            connection_closed();
        }
        tokio::time::sleep(AFTER / 2).await;
        assert_eq!(NUDGES.with(Cell::get), before, "not before AFTER");
        tokio::time::sleep(AFTER).await;
        assert_eq!(NUDGES.with(Cell::get), before + 1);
        // The next close is nudged for again.
        connection_closed();
        tokio::time::sleep(2 * AFTER).await;
        assert_eq!(NUDGES.with(Cell::get), before + 2);
    }
}
