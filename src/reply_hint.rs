//! A hint between the tasks of one executor: the storage ring just
//! completed operations, so tasks were woken with replies on their way to
//! hosts. Such a reply takes up to two hops to its socket (the ring wakes
//! the command's task, which wakes its connection's writer unless it sends
//! the reply itself: `writer::send_inline`), and the socket
//! poller (transport/readiness.rs) lets both run before its next
//! `epoll_wait`. glommio runs woken tasks in order, and the poller, which
//! yields every round, was nearly always ahead of them: a file read at QD1
//! waited for two `epoll_wait`s between its io_uring completion and its
//! `sendmsg` (a kernel trace: 4.9 µs from completion to send, 2.2 µs once
//! the poller let them go first). Replies of RAM and null namespaces leave
//! no hint: with several connections on a core the poller's own look
//! matters more (4 queues x QD8 on RAM: 146.6k IOPS without skips, 129.4k
//! with the writer's hop hinted too). Below storage and transport.

use std::cell::Cell;

/// The hops from a storage completion to its socket.
pub const HOPS: u32 = 2;

thread_local! {
    /// Poller rounds still to leave to woken replies.
    static ROUNDS: Cell<u32> = const { Cell::new(0) };
}

/// The storage ring of this executor completed operations.
pub fn storage_completed() {
    ROUNDS.set(HOPS);
}

/// Whether the poller should leave this round to woken replies (one of
/// the rounds a completion left is used up).
pub fn take() -> bool {
    let n = ROUNDS.get();
    if n > 0 {
        ROUNDS.set(n - 1);
    }
    n > 0
}
