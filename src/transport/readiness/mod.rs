//! Which of a core's sockets have data: one `epoll_wait` for all of them.
//!
//! While traffic flows a connection does not sleep on io_uring (waking a
//! parked vCPU costs tens of microseconds here), so something must poll.
//! Polling each socket with its own `recv` costs a system call per
//! connection per round: with 4 connections on a core, 1.45M empty `recv`s
//! a second against 49k that returned data, and 4 queues at QD8 did half
//! the I/O of one queue at QD32. Instead a reader whose socket is empty
//! waits here, and one poller task per executor asks epoll (edge-triggered)
//! which sockets received something and wakes their readers, as SPDK's
//! sock groups do.
//!
//! When the core has received nothing for the poll window, every waiting
//! reader is told to park, and sleeps on an io_uring read of its own; an idle
//! target then uses no CPU. The poller sleeps whenever no reader polls.
//!
//! A parked reader also listens here (`wait_parked`): glommio reaps io_uring
//! only when no task is runnable or its preemption timer (100 ms) expires,
//! so while other connections of the core poll, a parked connection's
//! io_uring completion could wait that long. When the poller is running it
//! sees the parked socket's data first and wakes its reader.

use super::cpu_share::{self, CpuShare};
use crate::reply_hint;
use crate::storage::uring;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Up to this many connections on a core, all polling, poll with `recv`.
const DIRECT_POLLERS: usize = 2;
/// How often busy readers look for parked ones' data (`check_parked`).
const PARKED_CHECK: Duration = Duration::from_micros(50);
/// Events taken from epoll per `check_parked`.
const PARKED_EVENTS: usize = 16;
/// Rounds without news after which the poller yields the CPU to other
/// threads that want it (`sched_yield`), and again every as many. Every 4th
/// idle round measured as well as every 8th (every round: QD1 -4%).
const YIELD_EVERY: u32 = 4;
/// The poller reads the clock once in this many rounds.
const CLOCK_EVERY: u32 = 8;
/// Events taken from epoll per call.
const EVENTS: usize = 64;
/// Rounds in a row the poller leaves epoll alone while tasks woken with
/// replies run first (`reply_hint`): even while completions pour in every
/// round, sockets are looked at every third.
const REPLY_ROUNDS: u32 = reply_hint::HOPS;
/// What a waiting reader is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its socket received something (or closed): `recv` again.
    Ready,
    /// Nothing is coming soon: sleep on io_uring.
    Park,
}

/// Which way a task waits on its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// For data to read (a reader).
    Rx,
    /// For room to send (a writer whose socket buffer is full).
    Tx,
}

/// One waiting task's state.
#[derive(Default)]
struct Side {
    ready: Cell<bool>,
    park: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// The waker belongs to a parked task (`wait_parked`), which the poller
    /// wakes on an event but never keeps running for.
    parked: Cell<bool>,
}

#[derive(Default)]
struct Slot {
    rx: Side,
    tx: Side,
}

impl Slot {
    fn side(&self, d: Dir) -> &Side {
        match d {
            Dir::Rx => &self.rx,
            Dir::Tx => &self.tx,
        }
    }
}

/// One executor's epoll set and the readers waiting on it.
pub struct Readiness {
    epfd: OwnedFd,
    executor: usize,
    window: Cell<Duration>,
    slots: RefCell<HashMap<u64, Rc<Slot>>>,
    next_key: Cell<u64>,
    /// Readers polling (waiting in `wait`, not parked).
    waiting: Cell<usize>,
    /// The poller's waker while it sleeps (no reader waits).
    poller: RefCell<Option<Waker>>,
    poller_running: Cell<bool>,
    /// Events seen plus data received: a change means the core is busy.
    activity: Cell<u64>,
    /// When `check_parked` last looked.
    parked_check: Cell<Instant>,
    /// `epoll_wait` calls made.
    epolls: Cell<u64>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Readiness>>> = const { RefCell::new(None) };
}

impl Readiness {
    /// This executor's set (made on first use; tests run several executors
    /// one after another on a thread, each gets its own).
    fn current() -> io::Result<Rc<Readiness>> {
        let id = glommio::executor().id();
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if let Some(r) = c.as_ref().filter(|r| r.executor == id) {
                return Ok(r.clone());
            }
            // SAFETY: plain system call; the result is checked.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let r = Rc::new(Readiness {
                // SAFETY: a fresh fd we own.
                epfd: unsafe { OwnedFd::from_raw_fd(fd) },
                executor: id,
                window: Cell::new(Duration::ZERO),
                slots: RefCell::new(HashMap::new()),
                next_key: Cell::new(0),
                waiting: Cell::new(0),
                poller: RefCell::new(None),
                poller_running: Cell::new(false),
                activity: Cell::new(0),
                parked_check: Cell::new(Instant::now()),
                epolls: Cell::new(0),
            });
            *c = Some(r.clone());
            Ok(r)
        })
    }

    fn ctl(&self, op: i32, fd: RawFd, key: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: key,
        };
        // SAFETY: valid epoll fd and event.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ask epoll which sockets are ready (without waiting) and wake their
    /// tasks.
    fn ask_epoll(&self, events: &mut [libc::epoll_event]) {
        self.epolls.set(self.epolls.get() + 1);
        // SAFETY: `events` is writable for its length; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                0,
            )
        };
        if n <= 0 {
            return;
        }
        let slots = self.slots.borrow();
        const RX: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        const TX: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        for ev in &events[..n as usize] {
            if let Some(slot) = slots.get(&{ ev.u64 }) {
                if ev.events & RX != 0 {
                    wake(self, &slot.rx, false);
                }
                if ev.events & TX != 0 {
                    wake(self, &slot.tx, false);
                }
            }
        }
        self.activity.set(self.activity.get().wrapping_add(1));
    }

    /// Called as data arrives. While the poller sleeps (no reader found its
    /// socket empty: each is busy with data), a parked task's socket is seen
    /// by nobody: the executor reaps io_uring only when no task is runnable,
    /// and busy readers keep it runnable, so a parked connection waited for
    /// the 100 ms preemption timer (4 queues x QD32 x 128 KiB reads: one in
    /// a few runs). So busy readers look for parked ones now and then.
    fn check_parked(&self) {
        if self.poller.borrow().is_none() {
            // The poller runs (and asks epoll every round) or has not started.
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.parked_check.get()) < PARKED_CHECK {
            return;
        }
        self.parked_check.set(now);
        let parked = self.slots.borrow().values().any(|s| {
            [&s.rx, &s.tx]
                .iter()
                .any(|d| d.parked.get() && d.waker.borrow().is_some())
        });
        if parked {
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; PARKED_EVENTS];
            self.ask_epoll(&mut events);
        }
    }

    /// Moves whenever the core receives data or its storage ring queues or
    /// completes an operation.
    fn busyness(&self) -> u64 {
        self.activity.get().wrapping_add(uring::events())
    }

    /// How long the core may see no news before its readers park: the
    /// poll window, or while storage I/O is in flight, at least as long as
    /// the ring itself polls it (a host waiting for a read sends its next
    /// command right after the reply; parked, its reader would wake late).
    fn quiet_after(&self) -> Duration {
        if uring::in_flight() > 0 {
            self.window.get().max(uring::IO_POLL)
        } else {
            self.window.get()
        }
    }

    /// Tell every polling task to park.
    fn park_all(&self) {
        for slot in self.slots.borrow().values() {
            for side in [&slot.rx, &slot.tx] {
                if side.waker.borrow().is_some() && !side.parked.get() {
                    wake(self, side, true);
                }
            }
        }
    }

    /// One look at the sockets: wake the readers whose sockets may have
    /// data. With few connections, all polling, their readers' own `recv`s
    /// are as cheap as one `epoll_wait`, and data found there saves a hop
    /// through here (a QD1 round trip was 0.6 µs slower through epoll).
    /// Parked readers need epoll: only it sees their data.
    fn look(&self, events: &mut [libc::epoll_event]) {
        let polling = self.waiting.get();
        let slots = self.slots.borrow();
        let all_reading = || {
            slots
                .values()
                .all(|s| s.rx.waker.borrow().is_some() && !s.rx.parked.get())
        };
        if polling <= DIRECT_POLLERS && polling == slots.len() && all_reading() {
            for slot in slots.values() {
                wake(self, &slot.rx, false);
            }
        } else {
            drop(slots);
            self.ask_epoll(events);
        }
    }

    fn wake_poller(self: &Rc<Self>) {
        if !self.poller_running.replace(true) {
            glommio::spawn_local(poll_loop(self.clone())).detach();
        } else if let Some(w) = self.poller.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Make this executor's epoll set (otherwise made by its first connection).
pub fn prepare() -> io::Result<()> {
    Readiness::current().map(drop)
}

/// A socket in its executor's epoll set, for as long as this lives.
pub struct Registration {
    r: Rc<Readiness>,
    fd: RawFd,
    key: u64,
    slot: Rc<Slot>,
}

impl Registration {
    /// Watch `fd` (open for as long as this lives). `window`: how long the
    /// core may receive nothing before readers park (`--idle-poll`).
    pub fn new(fd: RawFd, window: Duration) -> io::Result<Registration> {
        let r = Readiness::current()?;
        r.window.set(r.window.get().max(window));
        let key = r.next_key.get();
        r.next_key.set(key + 1);
        r.ctl(libc::EPOLL_CTL_ADD, fd, key)?;
        let slot = Rc::new(Slot::default());
        r.slots.borrow_mut().insert(key, slot.clone());
        Ok(Registration { r, fd, key, slot })
    }

    /// The reader received data.
    pub fn received(&self) {
        self.r.activity.set(self.r.activity.get().wrapping_add(1));
        self.r.check_parked();
    }

    /// Wait until the socket may be ready (`d`: data to read, or room to
    /// send), or until it is time to park. Call after a non-blocking call
    /// found it not ready.
    pub async fn wait(&self, d: Dir) -> Verdict {
        self.unpark(d);
        let side = self.slot.side(d);
        poll_fn(|cx| {
            if side.ready.replace(false) {
                return Poll::Ready(Verdict::Ready);
            }
            if side.park.replace(false) {
                return Poll::Ready(Verdict::Park);
            }
            if side.waker.replace(Some(cx.waker().clone())).is_none() {
                self.r.waiting.set(self.r.waiting.get() + 1);
            }
            self.r.wake_poller();
            Poll::Pending
        })
        .await
    }

    /// While parked on io_uring: resolves if the poller, running for other
    /// connections, sees this socket become ready. Call `unpark` when the
    /// parked operation ends either way.
    pub async fn wait_parked(&self, d: Dir) {
        let side = self.slot.side(d);
        poll_fn(|cx| {
            if side.ready.replace(false) {
                self.unpark(d);
                return Poll::Ready(());
            }
            if !side.parked.replace(true) && side.waker.borrow_mut().take().is_some() {
                // The waker of a `wait` that was dropped unfinished.
                self.r.waiting.set(self.r.waiting.get() - 1);
            }
            *side.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The parked operation is over.
    pub fn unpark(&self, d: Dir) {
        let side = self.slot.side(d);
        if side.parked.replace(false) {
            side.waker.borrow_mut().take();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for d in [Dir::Rx, Dir::Tx] {
            self.unpark(d);
            if self.slot.side(d).waker.borrow_mut().take().is_some() {
                self.r.waiting.set(self.r.waiting.get() - 1);
            }
        }
        self.r.slots.borrow_mut().remove(&self.key);
        // The fd is still open (see `new`); a failure only means it is not.
        let _ = self.r.ctl(libc::EPOLL_CTL_DEL, self.fd, self.key);
    }
}

fn wake(r: &Readiness, slot: &Side, park: bool) {
    if park {
        slot.park.set(true);
    } else {
        slot.ready.set(true);
    }
    if let Some(w) = slot.waker.borrow_mut().take() {
        if !slot.parked.replace(false) {
            r.waiting.set(r.waiting.get() - 1);
        }
        w.wake();
    }
}

/// The executor's poller: runs while readers wait.
async fn poll_loop(r: Rc<Readiness>) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut mark = (r.busyness(), Instant::now());
    let mut rounds = 0u32;
    let (mut last_activity, mut idle_rounds) = (r.activity.get(), 0u32);
    let mut deferred = 0u32;
    let (mut share, mut idle_total) = (CpuShare::new(), 0u32);
    loop {
        if r.waiting.get() == 0 {
            // Nobody waits: sleep until a reader does.
            poll_fn(|cx| {
                if r.waiting.get() > 0 {
                    return Poll::Ready(());
                }
                *r.poller.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            mark = (r.busyness(), Instant::now());
            continue;
        }
        // The clock is read every few rounds only (it was 3-5% of a core
        // read every round); the window is tens of microseconds or more.
        rounds = rounds.wrapping_add(1);
        let quiet = if rounds.is_multiple_of(CLOCK_EVERY) {
            let (now, busy) = (Instant::now(), r.busyness());
            if busy != mark.0 {
                mark = (busy, now);
            }
            now.duration_since(mark.1) >= r.quiet_after()
        } else {
            false
        };
        // Glommio submits and reaps io_uring only when no task is runnable
        // (or on preemption, every 100 ms), and this task is runnable while
        // any reader polls: so while anything waits on glommio's io_uring
        // (`IoWait`), nobody polls, and the executor sleeps on it. (Namespace
        // I/O is on the storage ring, which a task polls: `storage::uring`.)
        if crate::io_wait::waiting() || quiet {
            // The core is quiet (or waits on io_uring): every polling reader
            // parks, and this task sleeps (nobody waits any more).
            r.park_all();
            continue;
        }
        // Replies just woken go first; a few rounds at most, so that
        // sockets are still looked at while completions pour in. The ring
        // is looked at here too, so that a completion that landed since
        // the reaper's turn counts (`uring::reap_now`).
        uring::reap_now();
        if deferred < REPLY_ROUNDS && reply_hint::take() {
            deferred += 1;
            futures_lite::future::yield_now().await;
            continue;
        }
        deferred = 0;
        r.look(&mut events);
        // Nothing for a few rounds: let another thread on this CPU run, if
        // one wants it (`cpu_share`). A host on the same machine sharing
        // the CPU, polling too, otherwise waits for the scheduler's time
        // slice: ~300 µs a round trip.
        if r.activity.get() == last_activity {
            idle_rounds = idle_rounds.wrapping_add(1);
            // Counted apart from `idle_rounds`, which a busy queue resets
            // before it reaches a check.
            idle_total = idle_total.wrapping_add(1);
            if idle_total.is_multiple_of(cpu_share::CHECK_EVERY) {
                share.check();
            }
            if idle_rounds.is_multiple_of(YIELD_EVERY) && share.shared() {
                let at = Instant::now();
                if share.may_yield(at) {
                    // SAFETY: plain system call.
                    unsafe { libc::sched_yield() };
                    share.yielded(at, at.elapsed());
                }
            }
        } else {
            (last_activity, idle_rounds) = (r.activity.get(), 0);
        }
        // Let the woken readers and the other tasks run.
        futures_lite::future::yield_now().await;
    }
}

#[cfg(test)]
mod tests;
