//! The send queue of a connection: command tasks push what must be sent, and
//! the connection's writer drains everything queued in one batch, so that
//! many completions share one socket write.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

pub struct Outbox<T> {
    q: RefCell<VecDeque<T>>,
    waker: RefCell<Option<Waker>>,
    closed: Cell<bool>,
    /// The writer is waiting for items (not busy sending a batch).
    writer_idle: Cell<bool>,
    /// The writer waits for room in the socket, for as long as the peer
    /// decides.
    stalled: Cell<bool>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox {
            q: RefCell::new(VecDeque::new()),
            waker: RefCell::new(None),
            closed: Cell::new(false),
            writer_idle: Cell::new(false),
            stalled: Cell::new(false),
        }
    }
}

impl<T> Outbox<T> {
    pub fn push(&self, item: T) {
        if self.closed.get() {
            return;
        }
        self.q.borrow_mut().push_back(item);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// No more items will be accepted; the writer drains what is queued.
    pub fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Items queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.q.borrow().len()
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.set(stalled);
    }

    /// The writer waits for the peer to make room (see `set_stalled`).
    pub fn stalled(&self) -> bool {
        self.stalled.get()
    }

    /// Look at every item queued and not yet taken by the writer.
    pub fn for_each_queued(&self, f: impl Fn(&T)) {
        self.q.borrow().iter().for_each(f);
    }

    /// The writer waits for items: once it runs, it sends at once.
    pub fn writer_idle(&self) -> bool {
        self.writer_idle.get()
    }

    /// Move everything queued into `into`; waits while empty. `false` once
    /// closed and drained.
    pub async fn next_batch(&self, into: &mut Vec<T>) -> bool {
        poll_fn(|cx| {
            let mut q = self.q.borrow_mut();
            if !q.is_empty() {
                into.extend(q.drain(..));
                self.writer_idle.set(false);
                return Poll::Ready(true);
            }
            if self.closed.get() {
                return Poll::Ready(false);
            }
            self.writer_idle.set(true);
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
