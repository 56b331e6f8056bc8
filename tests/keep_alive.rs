//! A controller's lifetime over loopback: keep-alive expiry tears down every
//! queue, I/O traffic keeps the controller alive, Disconnect closes a queue.

mod common;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig};
use nvmf_tpc::wire::command::{admin, fctype, Sqe};
use std::time::{Duration, Instant};

#[test]
fn keep_alive_expiry_tears_down_every_queue() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:1M", "--cores", "2"]);
    let addr = t.addr;
    run(move || async move {
        let mut cfg = HostConfig::new(addr, NQN);
        cfg.kato_ms = 1000;
        let c = Controller::connect(cfg).await.unwrap();
        c.set_number_of_queues(8).await.unwrap();
        let mut qs = Vec::new();
        for qid in 1..=8 {
            qs.push(c.connect_io_queue(qid).await.unwrap());
        }
        // Then one Keep Alive, and nothing more: the target has seen the
        // host last after `start`, so a target that keeps the timeout cannot
        // expire the controller before start + KATO, whatever the machine's speed.
        let start = Instant::now();
        c.keep_alive().await.unwrap();
        while !c.admin.is_closed() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "controller not expired"
            );
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(1000),
            "expired early: {:?}",
            start.elapsed()
        );
        // Teardown crosses cores: wait for it, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !qs.iter().all(|q| q.queue.is_closed()) {
            assert!(
                Instant::now() < deadline,
                "I/O queues outlived their controller"
            );
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        // A new controller for the same host: a fresh cntlid, nothing of
        // the old one's state (the queue count it negotiated, its queues).
        let c2 = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        assert_ne!(c2.cntlid, 0);
        assert_ne!(c2.cntlid, c.cntlid, "cntlid reused");
        let nq = c2
            .get_features(0x07, 0) // Number of Queues
            .await
            .unwrap();
        assert_ne!(
            nq.cqe.dw0,
            7 | (7 << 16),
            "old Number of Queues carried over"
        );
        for qid in 1..=8 {
            let q = c2.connect_io_queue(qid).await.unwrap();
            q.read(1, 0, 1, 4096).await.unwrap();
        }
    });
    assert!(
        t.wait_log("keep alive expired", Duration::from_secs(5)),
        "{}",
        t.log()
    );
    // Once everything closed, nothing is left on the cores.
    assert!(
        t.wait_log(
            "0 connections, 0 controllers, DMA memory in use 0 bytes",
            Duration::from_secs(5)
        ),
        "{}",
        t.log()
    );
}

#[test]
fn io_traffic_keeps_the_controller_alive() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:1M", "--cores", "2"]);
    let addr = t.addr;
    run(move || async move {
        let mut cfg = HostConfig::new(addr, NQN);
        cfg.kato_ms = 1500;
        let c = Controller::connect(cfg).await.unwrap();
        c.set_number_of_queues(4).await.unwrap();
        let mut qs = Vec::new();
        for qid in 1..=4 {
            qs.push(c.connect_io_queue(qid).await.unwrap());
        }
        // 3 KATO of I/O only (traffic based keep alive), spread over the
        // queues, a read every 50 ms: a stall of the whole machine for a
        // KATO (1.5 s) would be needed to expire it falsely.
        let start = Instant::now();
        let mut i = 0;
        while start.elapsed() < Duration::from_millis(4500) {
            qs[i % 4].read(1, 0, 1, 4096).await.unwrap();
            i += 1;
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        assert!(!c.admin.is_closed(), "expired despite I/O traffic");
        c.keep_alive().await.unwrap();
    });
}

#[test]
fn disconnect_closes_an_io_queue() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:1M"]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        let mut s = Sqe::default();
        s.set_opcode(admin::FABRICS).set_fctype(fctype::DISCONNECT);
        q.queue.submit(s, None, 0).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while !q.queue.is_closed() {
            assert!(Instant::now() < deadline);
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        // The qid is free again.
        let q = c.connect_io_queue(1).await.unwrap();
        q.read(1, 0, 1, 4096).await.unwrap();
    });
}
