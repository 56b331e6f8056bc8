//! A one-shot, executor-local event: once fired it stays fired, and every
//! task waiting on it wakes. Used to stop connections and listeners.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Trigger {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Trigger {
    pub fn new() -> Trigger {
        Trigger::default()
    }

    pub fn fire(&self) {
        if !self.fired.replace(true) {
            for w in self.waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once `fire` has been called.
    pub fn wait(&self) -> Wait<'_> {
        Wait { t: self }
    }
}

pub struct Wait<'a> {
    t: &'a Trigger,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.t.fired.get() {
            return Poll::Ready(());
        }
        let mut w = self.t.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
