//! The DMA memory budget of one executor. Every data buffer a command needs
//! (in-capsule data, R2T data, read data) is charged here before it is
//! allocated and released when the command's completion has been sent.
//!
//! When the budget is spent a connection stops reading from its socket until
//! memory comes back, so TCP flow control pushes back on the host instead of
//! commands failing or buffers spilling into unbounded heap memory. A
//! connection that waits for H2CData of its own R2Ts must not stop reading
//! (the data it waits for is behind it in the stream); it is charged over the
//! limit instead, which its queue depth and MDTS bound.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Smallest charge: glommio hands out at least a page.
const MIN_CHARGE: usize = 4096;

pub struct DmaBudget {
    limit: usize,
    used: Cell<usize>,
    peak: Cell<usize>,
    /// Times a connection had to wait for memory.
    stalls: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

/// Memory charged to one command; returned when dropped.
pub struct Charge {
    budget: Rc<DmaBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl DmaBudget {
    pub fn new(limit: usize) -> Rc<DmaBudget> {
        Rc::new(DmaBudget {
            limit: limit.max(MIN_CHARGE),
            used: Cell::new(0),
            peak: Cell::new(0),
            stalls: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
        })
    }

    /// What a buffer of `len` bytes really takes: glommio rounds DMA
    /// allocations up to a power of two. A single charge never exceeds the
    /// whole budget, so it can always be met once memory is back.
    fn cost(&self, len: usize) -> usize {
        len.max(MIN_CHARGE)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
            .min(self.limit)
    }

    fn take(self: &Rc<Self>, bytes: usize) -> Charge {
        let used = self.used.get() + bytes;
        self.used.set(used);
        self.peak.set(self.peak.get().max(used));
        Charge {
            budget: self.clone(),
            bytes,
        }
    }

    fn release(&self, bytes: usize) {
        self.used.set(self.used.get() - bytes);
        // Few connections wait at once; each re-checks when woken.
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Charge `len` bytes at once, over the limit if need be.
    pub fn force(self: &Rc<Self>, len: usize) -> Charge {
        self.take(self.cost(len))
    }

    /// Charge `len` bytes if they fit now.
    pub fn try_acquire(self: &Rc<Self>, len: usize) -> Option<Charge> {
        let bytes = self.cost(len);
        (self.used.get() + bytes <= self.limit).then(|| self.take(bytes))
    }

    /// Charge `len` bytes, waiting until they fit.
    pub async fn acquire(self: &Rc<Self>, len: usize) -> Charge {
        if let Some(c) = self.try_acquire(len) {
            return c;
        }
        self.stalls.set(self.stalls.get() + 1);
        if self.stalls.get().is_power_of_two() {
            log::info!(
                "DMA memory of this core spent ({} of {} bytes in use): commands and reads wait for it ({} waits so far)",
                self.used.get(),
                self.limit,
                self.stalls.get()
            );
        }
        poll_fn(|cx| match self.try_acquire(len) {
            Some(c) => Poll::Ready(c),
            None => {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    pub fn peak(&self) -> usize {
        self.peak.get()
    }

    pub fn stalls(&self) -> u64 {
        self.stalls.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_round_up_and_return() {
        let b = DmaBudget::new(64 * 1024);
        let c = b.try_acquire(4168).unwrap();
        assert_eq!(b.used(), 8192);
        let d = b.try_acquire(1).unwrap();
        assert_eq!(b.used(), 8192 + 4096);
        drop(c);
        drop(d);
        assert_eq!(b.used(), 0);
        assert_eq!(b.peak(), 8192 + 4096);
    }

    #[test]
    fn full_budget_refuses_but_force_goes_over() {
        let b = DmaBudget::new(16 * 1024);
        let a = b.try_acquire(16 * 1024).unwrap();
        assert!(b.try_acquire(1).is_none());
        let f = b.force(4096);
        assert_eq!(b.used(), 20 * 1024);
        drop(a);
        drop(f);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_charge_larger_than_the_budget_is_capped() {
        let b = DmaBudget::new(16 * 1024);
        let c = b.try_acquire(1 << 20).unwrap();
        assert_eq!(b.used(), 16 * 1024);
        drop(c);
    }

    #[test]
    fn waiter_wakes_when_memory_returns() {
        glommio::LocalExecutor::default().run(async {
            let b = DmaBudget::new(8192);
            let held = b.try_acquire(8192).unwrap();
            let b2 = b.clone();
            let t = glommio::spawn_local(async move {
                let _c = b2.acquire(4096).await;
                b2.used()
            });
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
            assert_eq!(b.stalls(), 1);
            drop(held);
            assert_eq!(t.await, 4096);
            assert_eq!(b.used(), 0);
        });
    }
}
