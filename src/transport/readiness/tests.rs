//! The poller against real sockets on one executor.

use super::*;
use std::io::Write;

#[test]
fn wakes_the_reader_whose_socket_has_data_and_parks_when_quiet() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let mut peers = Vec::new();
            let mut regs = Vec::new();
            for _ in 0..3 {
                let (c, a) = crate::transport::loopback_pair();
                regs.push(Registration::new(a.as_raw_fd(), Duration::from_millis(5)).unwrap());
                peers.push((c, a));
            }
            // Data on the second socket only: its reader wakes Ready.
            peers[1].0.write_all(b"x").unwrap();
            assert_eq!(regs[1].wait(Dir::Rx).await, Verdict::Ready);
            regs[1].received();
            // Nothing anywhere: after the window every waiter parks.
            let t = Instant::now();
            assert_eq!(regs[0].wait(Dir::Rx).await, Verdict::Park);
            assert!(t.elapsed() >= Duration::from_millis(5));
            // A parked socket's data is seen while another reader polls
            // (glommio would reap its io_uring read only much later).
            regs[0].unpark(Dir::Rx);
            peers[0].0.write_all(b"y").unwrap();
            let rescued = async {
                futures_lite::future::or(
                    async {
                        regs[0].wait_parked(Dir::Rx).await;
                        true
                    },
                    async {
                        glommio::timer::sleep(Duration::from_secs(2)).await;
                        false
                    },
                )
                .await
            };
            let (rescued, _) = futures_lite::future::zip(rescued, regs[2].wait(Dir::Rx)).await;
            assert!(rescued, "parked reader not woken by the poller");
            regs[0].unpark(Dir::Rx);
            // Dropping registrations leaves nobody waiting.
            drop(regs);
            let r = Readiness::current().unwrap();
            assert_eq!(r.waiting.get(), 0);
            assert!(r.slots.borrow().is_empty());
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_task_woken_with_a_reply_runs_before_the_next_epoll_wait() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            // Three idle sockets, their readers waiting: more than
            // `DIRECT_POLLERS`, so the poller asks epoll every round.
            let mut socks = Vec::new();
            for _ in 0..3 {
                let (c, a) = crate::transport::loopback_pair();
                let reg = Registration::new(a.as_raw_fd(), Duration::from_secs(60)).unwrap();
                // (A fresh socket's first event wakes its reader once.)
                glommio::spawn_local(async move {
                    loop {
                        reg.wait(Dir::Rx).await;
                    }
                })
                .detach();
                socks.push((c, a));
            }
            let r = Readiness::current().unwrap();
            // A task that notes how many epoll_waits it saw when it ran.
            let waker = Rc::new(RefCell::new(None::<Waker>));
            let ran_at = Rc::new(Cell::new(None::<u64>));
            let woken = |waker: Rc<RefCell<Option<Waker>>>, ran_at: Rc<Cell<Option<u64>>>| {
                let r = r.clone();
                let mut first = true;
                glommio::spawn_local(poll_fn(move |cx| {
                    if std::mem::take(&mut first) {
                        *waker.borrow_mut() = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    ran_at.set(Some(r.epolls.get()));
                    Poll::Ready(())
                }))
            };
            for hint in [false, true] {
                let t = woken(waker.clone(), ran_at.clone());
                for _ in 0..10 {
                    futures_lite::future::yield_now().await;
                }
                assert!(r.epolls.get() > 0, "the poller runs");
                // The poller runs every round, ahead of a task woken now.
                let before = r.epolls.get();
                if hint {
                    reply_hint::storage_completed();
                }
                waker.borrow_mut().take().unwrap().wake();
                t.await;
                let seen = ran_at.get().unwrap() - before;
                assert_eq!(seen, if hint { 0 } else { 1 }, "hint {hint}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_wait_dropped_unfinished_leaves_no_polling_waiter() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let (mut c, a) = crate::transport::loopback_pair();
            let reg = Registration::new(a.as_raw_fd(), Duration::from_secs(60)).unwrap();
            // A second, idle socket: the poller asks epoll (with every
            // socket waiting it lets readers `recv` themselves instead).
            let (_c1, idle) = crate::transport::loopback_pair();
            let _idle = Registration::new(idle.as_raw_fd(), Duration::from_secs(60)).unwrap();
            let r = Readiness::current().unwrap();
            // A `wait` given up before it resolved (its task raced it).
            let gave_up =
                futures_lite::future::or(async { Some(reg.wait(Dir::Rx).await) }, async {
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                    None
                })
                .await;
            assert_eq!(gave_up, None);
            assert_eq!(r.waiting.get(), 1);
            // Parking takes over its place: nobody polls any more, and
            // the parked task is still woken by data.
            let parked = async {
                reg.wait_parked(Dir::Rx).await;
                true
            };
            let poke = async {
                assert_eq!(r.waiting.get(), 0);
                c.write_all(b"z").unwrap();
                // Someone must poll for the poller to run.
                let (_c2, b) = crate::transport::loopback_pair();
                let other = Registration::new(b.as_raw_fd(), Duration::from_secs(60)).unwrap();
                futures_lite::future::or(
                    async {
                        other.wait(Dir::Rx).await;
                    },
                    async {
                        glommio::timer::sleep(Duration::from_secs(2)).await;
                    },
                )
                .await;
            };
            let woken = futures_lite::future::or(parked, async {
                poke.await;
                false
            })
            .await;
            assert!(woken, "parked task not woken");
            reg.unpark(Dir::Rx);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_parked_socket_is_seen_while_other_readers_stay_busy() {
    // A long preemption timer: glommio's own reaping cannot rescue the
    // parked task within the test.
    glommio::LocalExecutorBuilder::default()
        .preempt_timer(Duration::from_secs(30))
        .spawn(|| async {
            let mut socks = Vec::new();
            let mut regs = Vec::new();
            for _ in 0..2 {
                let (c, a) = crate::transport::loopback_pair();
                regs.push(Rc::new(
                    Registration::new(a.as_raw_fd(), Duration::from_secs(60)).unwrap(),
                ));
                socks.push((c, a));
            }
            // The busy socket's reader waits once (the poller starts),
            // then always finds data, so the poller goes to sleep.
            socks[1].0.write_all(b"b").unwrap();
            assert_eq!(regs[1].wait(Dir::Rx).await, Verdict::Ready);
            futures_lite::future::yield_now().await;
            futures_lite::future::yield_now().await;
            let r = Readiness::current().unwrap();
            assert!(r.poller.borrow().is_some(), "the poller should sleep");
            // The other socket's task is parked when its data comes.
            let woken = Rc::new(Cell::new(false));
            let parked = {
                let (reg, woken) = (regs[0].clone(), woken.clone());
                glommio::spawn_local(async move {
                    reg.wait_parked(Dir::Rx).await;
                    woken.set(true);
                })
            };
            futures_lite::future::yield_now().await;
            socks[0].0.write_all(b"a").unwrap();
            // Busy: the executor never idles, so only the busy reader
            // can notice.
            let t = Instant::now();
            while !woken.get() && t.elapsed() < Duration::from_secs(2) {
                regs[1].received();
                futures_lite::future::yield_now().await;
            }
            assert!(woken.get(), "parked task not woken while others were busy");
            parked.await;
            regs[0].unpark(Dir::Rx);
        })
        .unwrap()
        .join()
        .unwrap();
}
