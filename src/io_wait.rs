//! Operations of this executor that wait on glommio's own io_uring (a
//! write to a full socket, the blocking pool). While any does, the socket
//! poller parks its readers instead of polling, so that glommio runs its
//! loop and submits and reaps its rings. Below storage and transport, which
//! both hold `IoWait`s; the poller (transport/readiness.rs) reads it.

use std::cell::Cell;

thread_local! {
    /// Operations of this executor that wait on io_uring (`IoWait`).
    static IO_WAITS: Cell<usize> = const { Cell::new(0) };
}

/// Held while a task waits on glommio's io_uring (a write to a full
/// socket, the blocking pool): readers then park instead of polling, so
/// that the executor runs its loop. Letting it run every 20 µs while
/// polling went on instead cost RAM and null namespaces 15% of their 4 KiB
/// reads, and file reads at QD32 half their speed.
pub struct IoWait(());

impl IoWait {
    #[allow(clippy::new_without_default)]
    pub fn new() -> IoWait {
        IO_WAITS.set(IO_WAITS.get() + 1);
        IoWait(())
    }
}

impl Drop for IoWait {
    fn drop(&mut self) {
        IO_WAITS.set(IO_WAITS.get() - 1);
    }
}

/// Does any operation of this executor wait on glommio's ring?
pub fn waiting() -> bool {
    IO_WAITS.get() > 0
}
