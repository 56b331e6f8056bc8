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
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox {
            q: RefCell::new(VecDeque::new()),
            waker: RefCell::new(None),
            closed: Cell::new(false),
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

    /// Move everything queued into `into`; waits while empty. `false` once
    /// closed and drained.
    pub async fn next_batch(&self, into: &mut Vec<T>) -> bool {
        poll_fn(|cx| {
            let mut q = self.q.borrow_mut();
            if !q.is_empty() {
                into.extend(q.drain(..));
                return Poll::Ready(true);
            }
            if self.closed.get() {
                return Poll::Ready(false);
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
