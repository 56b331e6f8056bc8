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

    /// Sleep for `d`, or less if the trigger fires meanwhile: `true` when it
    /// fired (a timer must not outlive what it watches).
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        futures_lite::future::or(
            async {
                glommio::timer::sleep(d).await;
                false
            },
            async {
                self.wait().await;
                true
            },
        )
        .await
    }

    /// Tasks waiting now (for leak checks).
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }

    /// Resolves once `fire` has been called.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            t: self,
            registered: None,
        }
    }
}

pub struct Wait<'a> {
    t: &'a Trigger,
    registered: Option<Waker>,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.t.fired.get() {
            return Poll::Ready(());
        }
        // Polled again by the same task (the common case on a hot path):
        // already registered, nothing to do.
        if self
            .registered
            .as_ref()
            .is_some_and(|r| r.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let mut w = self.t.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        drop(w);
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A wait given up before the trigger fired (it lost a race, its task
/// ended) takes its waker back, so that waiting many times on a long-lived
/// trigger does not grow its list.
impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.registered.take() {
            if !self.t.fired.get() {
                self.t.waiters.borrow_mut().retain(|x| !x.will_wake(&r));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_given_up_leave_no_waker_behind() {
        glommio::LocalExecutor::default().run(async {
            let t = std::rc::Rc::new(Trigger::new());
            for _ in 0..100 {
                let t2 = t.clone();
                let lost = futures_lite::future::or(
                    async move {
                        t2.wait().await;
                        false
                    },
                    async { true },
                );
                assert!(lost.await);
                // A task that waited, then ended through another branch.
                let t3 = t.clone();
                glommio::spawn_local(async move {
                    futures_lite::future::or(
                        t3.wait(),
                        glommio::timer::sleep(std::time::Duration::ZERO),
                    )
                    .await;
                })
                .await;
            }
            assert_eq!(t.waiting(), 0);
            let t4 = t.clone();
            let w = glommio::spawn_local(async move { t4.wait().await });
            glommio::executor().yield_task_queue_now().await;
            assert_eq!(t.waiting(), 1);
            t.fire();
            w.await;
        });
    }
}
