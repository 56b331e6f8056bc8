//! The Volatile Write Cache: what Identify and Get Features say matches what
//! reaches stable storage. The oracle is the kernel's own: the ext4
//! tracepoint `ext4_sync_file_enter` counts every fsync/fdatasync of the
//! backing file's inode, including those io_uring issues.

mod common;
use common::trace::Trace;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig, IoQueue};
use nvmf_tpc::wire::identify::cns;
use nvmf_tpc::wire::status::Status;
use std::os::unix::fs::MetadataExt;

const VWC: u8 = 0x06;
const SYNC: &str = "ext4_sync_file_enter";

/// A file namespace and a trace of its inode's syncs.
fn file_backing(name: &str) -> (std::path::PathBuf, Trace) {
    let dir = scratch_dir(name);
    let img = dir.join("ns.img");
    sparse_file(&img, 16 << 20);
    let ino = std::fs::metadata(&img).unwrap().ino();
    let trace = Trace::start(name, &[(&format!("ext4/{SYNC}"), &format!("ino == {ino}"))]);
    (img, trace)
}

async fn plain_writes(qs: &[IoQueue], n: u64) {
    for i in 0..n {
        let q = &qs[i as usize % qs.len()];
        q.write(1, i, &pattern(4096, i), 4096, false).await.unwrap();
    }
}

/// Syncs seen since the last look.
fn syncs(t: &Trace) -> usize {
    let n = t.count(SYNC);
    t.clear();
    n
}

#[test]
fn turning_the_write_cache_off_makes_every_write_durable_on_every_core() {
    let (img, trace) = file_backing("vwc");
    let path = img.to_str().unwrap().to_string();
    let t = Target::start(&["--subsystem", NQN, "--namespace", &path, "--cores", "2"]);
    let addr = t.addr;
    let trace = std::sync::Arc::new(trace);
    let tr = trace.clone();
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let id = c.identify(cns::CONTROLLER, 0).await.unwrap();
        assert_eq!(
            id[525] & 1,
            1,
            "a file namespace has a volatile write cache"
        );
        assert_eq!(c.get_features(VWC, 0).await.unwrap().cqe.dw0, 1);
        c.set_number_of_queues(4).await.unwrap();
        let mut qs = Vec::new();
        for qid in 1..=4 {
            qs.push(c.connect_io_queue(qid).await.unwrap());
        }
        // The oracle works: FUA writes are synced, one each at least.
        syncs(&tr);
        for (i, q) in qs.iter().enumerate() {
            q.write(1, 100 + i as u64, &pattern(4096, 1), 4096, true)
                .await
                .unwrap();
        }
        assert!(
            syncs(&tr) >= 4,
            "the tracepoint does not see the target's syncs"
        );
        // With the cache on, plain writes are not synced.
        plain_writes(&qs, 20).await;
        assert_eq!(syncs(&tr), 0, "plain writes synced with the cache on");
        // Turning it off flushes what is cached, then writes go through.
        c.set_features(VWC, 0, None).await.unwrap();
        assert!(syncs(&tr) >= 1, "the cache was not flushed when turned off");
        assert_eq!(c.get_features(VWC, 0).await.unwrap().cqe.dw0, 0);
        plain_writes(&qs, 20).await;
        let n = syncs(&tr);
        assert!(n >= 20, "20 writes with the cache off made {n} syncs");
        // Queues connected after the change write through as well.
        c.set_features(VWC, 1, None).await.unwrap();
        c.set_features(VWC, 0, None).await.unwrap();
        syncs(&tr);
        drop(qs);
        // The closed queues give their qids back once the target has seen
        // them close (as a host does, try again until then).
        let mut qs = Vec::new();
        for qid in 1..=4 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match c.connect_io_queue(qid).await {
                    Ok(q) => break qs.push(q),
                    Err(e) if std::time::Instant::now() < deadline => {
                        assert_eq!(e.status(), Some(Status::CONNECT_INVALID_PARAMETERS));
                        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    Err(e) => panic!("qid {qid} never came back: {e:?}"),
                }
            }
        }
        plain_writes(&qs, 8).await;
        assert!(syncs(&tr) >= 8);
        // And back on: no syncs again.
        c.set_features(VWC, 1, None).await.unwrap();
        syncs(&tr);
        plain_writes(&qs, 20).await;
        assert_eq!(syncs(&tr), 0);
        // A shutdown notification completes only after a flush.
        c.shutdown().await.unwrap();
        assert!(syncs(&tr) >= 1, "shutdown completed without a flush");
    });
    assert_eq!(t.stop().code(), Some(0));
}

/// RAM and null namespaces have no cache to flush: Identify says so, and
/// the feature cannot be set.
#[test]
fn namespaces_without_a_cache_say_so() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:4M",
        "--namespace",
        "null:4M",
    ]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let id = c.identify(cns::CONTROLLER, 0).await.unwrap();
        assert_eq!(id[525] & 1, 0);
        assert_eq!(c.get_features(VWC, 0).await.unwrap().cqe.dw0, 0);
        assert_eq!(
            status_of(c.set_features(VWC, 0, None).await),
            Status::INVALID_FIELD
        );
    });
}
