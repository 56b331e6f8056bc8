//! A hint between the tasks of one executor: a task was just woken with a
//! reply on its way to a host (the storage ring completed an operation for
//! a command; a command queued its completion for its connection's writer).
//! The socket poller (transport/readiness.rs) lets those tasks run before
//! its next `epoll_wait`. glommio runs woken tasks in order, and the poller,
//! which yields every round, was nearly always ahead of them: a file read
//! at QD1 waited for two `epoll_wait`s between its io_uring completion and
//! its `sendmsg` (a kernel trace: 4.9 µs from completion to send, 2.2 µs
//! once the poller let them go first). Below storage and transport, which
//! both set it.

use std::cell::Cell;

thread_local! {
    static WOKEN: Cell<bool> = const { Cell::new(false) };
}

/// A task of this executor was just woken with a reply to send.
pub fn reply_woken() {
    WOKEN.set(true);
}

/// Whether a reply was woken since the last call (and forget it).
pub fn take() -> bool {
    WOKEN.replace(false)
}
