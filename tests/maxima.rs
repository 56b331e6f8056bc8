//! The README's limits at their edges: each maximum starts and serves, one
//! past it is refused at start; the error log keeps the newest 64 entries;
//! no log line per I/O at the default level. Offsets and values are the
//! NVMe Base specification's, written out here.

mod common;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig};
use std::time::Duration;

const MAX_NAMESPACES: usize = 1024;
const MAX_SUBSYSTEMS: usize = 256;

fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Flags for `subsystems` subsystems, the first with `namespaces` null
/// namespaces and a RAM one, the others with one null namespace each.
fn many(subsystems: usize, namespaces: usize) -> Vec<String> {
    let mut a: Vec<String> = ["--subsystem", NQN, "--namespace", "ram:64M"]
        .map(String::from)
        .to_vec();
    for _ in 1..namespaces {
        a.extend(["--namespace".into(), "null:1M".into()]);
    }
    for i in 1..subsystems {
        a.extend([
            "--subsystem".into(),
            format!("{NQN}-{i}"),
            "--namespace".into(),
            "null:1M".into(),
        ]);
    }
    a
}

#[test]
fn every_maximum_starts_and_serves() {
    let mut args = many(MAX_SUBSYSTEMS, MAX_NAMESPACES);
    args.extend(
        [
            "--queue-depth",
            "1024",
            "--max-io-size",
            "8M",
            "--in-capsule-data",
            "128K",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Target::start(&args);
    let addr = t.addr;
    run(move || async move {
        let d = Controller::connect_discovery(addr).await.unwrap();
        assert_eq!(d.discovery_log().await.unwrap().len(), MAX_SUBSYSTEMS);
        let mut cfg = HostConfig::new(addr, NQN);
        cfg.queue_size = 1024;
        let c = Controller::connect(cfg).await.unwrap();
        let ns = c.active_namespaces().await.unwrap();
        assert_eq!(ns, (1..=MAX_NAMESPACES as u32).collect::<Vec<_>>());
        // CAP.MQES (bits 15:0, 0's based) = 1023; MDTS (byte 77, a power
        // of two of 4 KiB pages) = 11: 8 MiB; IOCCSZ (bytes 1792..1795, in
        // 16-byte units, SQE included) = (64 + 128 KiB) / 16.
        let cap = c
            .property_get(nvmf_tpc::wire::fabrics::property::CAP, true)
            .await
            .unwrap();
        assert_eq!(cap & 0xFFFF, 1023);
        let id = c.identify(1, 0).await.unwrap();
        assert_eq!(id[77], 11);
        let ioccsz = u32::from_le_bytes(id[1792..1796].try_into().unwrap());
        assert_eq!(ioccsz, (64 + (128 << 10)) / 16);
        // A queue of 1024 entries; an 8 MiB transfer each way; a 128 KiB
        // write in the capsule (the host library sends data up to IOCCSZ
        // in-capsule).
        let q = c.connect_io_queue(1).await.unwrap();
        let big = pattern(8 << 20, 1);
        q.write(1, 0, &big, 4096, false).await.unwrap();
        assert!(q.read(1, 0, 2048, 4096).await.unwrap() == big);
        let icd = pattern(128 << 10, 2);
        q.write(1, 4096, &icd, 4096, false).await.unwrap();
        assert!(q.read(1, 4096, 32, 4096).await.unwrap() == icd);
        // Namespace 1024 serves too.
        assert_eq!(
            q.read(MAX_NAMESPACES as u32, 0, 1, 4096).await.unwrap(),
            vec![0u8; 4096]
        );
    });
    assert_eq!(t.stop().code(), Some(0));
}

#[test]
fn one_past_each_maximum_is_refused_at_start() {
    let past: Vec<(Vec<String>, &str)> = vec![
        (many(1, MAX_NAMESPACES + 1), "namespace"),
        (many(MAX_SUBSYSTEMS + 1, 1), "subsystem"),
    ];
    let flags: [(&[&str], &str); 3] = [
        (&["--queue-depth", "1025"], "--queue-depth"),
        (&["--max-io-size", "16M"], "--max-io-size"),
        (&["--in-capsule-data", "256K"], "--in-capsule-data"),
    ];
    let mut cases = past;
    for (f, needle) in flags {
        let mut a = many(1, 1);
        a.extend(f.iter().map(|s| s.to_string()));
        cases.push((a, needle));
    }
    for (args, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        match Target::try_start(&a) {
            Ok(t) => panic!("started one past the {needle} limit:\n{}", t.output()),
            Err((st, out)) => {
                assert!(!st.expect("exited").success());
                assert!(out.contains(needle), "{needle}: {out}");
            }
        }
    }
}

/// NVMe Base 2.0 §5.16.1.2: the Error Information log holds the newest
/// entries, newest first, each with its Error Count (bytes 0..7); SMART
/// (bytes 176..191) counts every error ever logged.
#[test]
fn the_error_log_keeps_the_newest_64_entries() {
    const ERRORS: u64 = 70;
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:1M"]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        for n in 1..=ERRORS {
            assert!(q.read(1, 1 << 20, 1, 4096).await.is_err());
            // Logged before its completion: the newest entry is this one,
            // though the I/O queue may live on another core than the log.
            if n % 8 == 1 {
                let newest = c.get_log_page(0x01, 0, 0, 64).await.unwrap();
                assert_eq!(u64le(&newest, 0), n, "error {n} not yet in the log");
            }
        }
        // Asking for more than 64 entries returns 64 and zeroes after them.
        let el = c.get_log_page(0x01, 0, 0, 80 * 64).await.unwrap();
        let counts: Vec<u64> = el.chunks(64).map(|e| u64le(e, 0)).collect();
        let newest: Vec<u64> = (ERRORS - 63..=ERRORS).rev().collect();
        assert_eq!(&counts[..64], &newest[..]);
        assert!(counts[64..].iter().all(|&n| n == 0), "{counts:?}");
        let smart = c.get_log_page(0x02, 0xFFFF_FFFF, 0, 512).await.unwrap();
        let n = u128::from_le_bytes(smart[176..192].try_into().unwrap());
        assert_eq!(n, ERRORS as u128);
    });
}

/// At the default level (no RUST_LOG, no --log-level) a thousand I/Os add
/// no line to the log; a connection and a controller add a few.
#[test]
fn no_log_line_per_io_at_the_default_level() {
    let t = Target::start_env(
        &["--subsystem", NQN, "--namespace", "ram:16M"],
        &[("RUST_LOG", "")],
    );
    let addr = t.addr;
    let before = t.log().lines().count();
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        for i in 0..500u64 {
            q.write(1, i, &pattern(4096, i), 4096, false).await.unwrap();
            q.read(1, i, 1, 4096).await.unwrap();
        }
        c.shutdown().await.unwrap();
    });
    assert!(
        t.wait_log("destroyed", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    let added = t.log().lines().count() - before;
    assert!(
        // One line per I/O would be 1000; a session's own lines are ~10.
        (1..100).contains(&added),
        "{added} log lines for one session of 1000 I/Os:\n{}",
        t.log()
    );
}
