//! Connections spread over the cores: whichever core the kernel's
//! SO_REUSEPORT hash gives a new connection, the core with the fewest I/O
//! queues serves it (a hand-over through the control plane), and the queues
//! work there. Admin queues do not count, so where controllers land does
//! not skew their I/O queues.

mod common;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig, IoQueue};
use std::rc::Rc;

const NQN: &str = "nqn.2026-12.io.nvmf-tpc:balance";
const BS: u32 = 4096;

/// I/O queues connected per core so far, from the target's log lines
/// "controller C: I/O queue Q connected on core K (N entries)".
fn io_queues_per_core(log: &str, cores: usize) -> Vec<usize> {
    let mut n = vec![0; cores];
    for l in log.lines().filter(|l| l.contains(": I/O queue ")) {
        let Some((_, tail)) = l.split_once(" connected on core ") else {
            continue;
        };
        let core: usize = tail.split(' ').next().unwrap().parse().unwrap();
        n[core] += 1;
    }
    n
}

/// A controller with `queues` I/O queues, each checked with a write and a
/// read of its own block.
async fn controller(cfg: HostConfig, queues: u16, base: u64) -> (Controller, Vec<Rc<IoQueue>>) {
    let c = Controller::connect(cfg).await.unwrap();
    assert_eq!(c.set_number_of_queues(queues).await.unwrap(), queues);
    let mut qs = Vec::new();
    for qid in 1..=queues {
        let q = Rc::new(c.connect_io_queue(qid).await.unwrap());
        let lba = base + qid as u64;
        let data = pattern(BS as usize, lba);
        q.write(1, lba, &data, BS, false).await.unwrap();
        assert_eq!(q.read(1, lba, 1, BS).await.unwrap(), data);
        qs.push(q);
    }
    (c, qs)
}

#[test]
fn io_queues_spread_evenly_over_cores() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:4M",
        "--cores",
        "2",
        "--max-io-queues",
        "8",
        "--log-level",
        "info",
    ]);
    let addr = t.addr;
    let settled = |want: &[usize]| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let got = io_queues_per_core(&t.log(), 2);
            if got == want || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let host = std::thread::spawn(move || {
        run(move || async move {
            // One host with 8 queues.
            let one = controller(HostConfig::new(addr, NQN), 8, 0).await;
            tx.send(()).unwrap();
            wait.recv().unwrap();
            // Two more hosts with 4 queues each.
            let b = HostConfig::new(addr, NQN).with_hostid(*b"balance-host-b\0\x02");
            let c = HostConfig::new(addr, NQN).with_hostid(*b"balance-host-c\0\x03");
            let two = controller(b, 4, 100).await;
            let three = controller(c, 4, 200).await;
            tx.send(()).unwrap();
            wait.recv().unwrap();
            drop((one, two, three));
        })
    });
    rx.recv().unwrap();
    assert_eq!(
        settled(&[4, 4]),
        [4, 4],
        "one controller's 8 I/O queues per core"
    );
    go.send(()).unwrap();
    rx.recv().unwrap();
    assert_eq!(
        settled(&[8, 8]),
        [8, 8],
        "16 I/O queues of 3 controllers per core"
    );
    go.send(()).unwrap();
    host.join().unwrap();
    assert_eq!(t.stop().code(), Some(0));
}
