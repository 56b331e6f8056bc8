//! SPDK's host (`spdk_nvme_identify`, `spdk_nvme_discover`, `spdk_nvme_perf`
//! from ../shared/spdk) against the real target: an independent reading of
//! what Identify and the discovery log say, SPDK's default options (an empty
//! Host NQN), access control, and SPDK's own load generator over every data
//! path (digests, several qpairs, 512-byte blocks, a file, H2CData and
//! C2HData split into many PDUs). Expected values are written out here from
//! the target's flags, not read from the target's code.

mod common;
use common::spdk::{field, run, trid};
use common::*;
use std::time::Duration;

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:5b0a1c2e-0000-4000-8000-00000000a001";
const OTHER: &str = "nqn.2014-08.org.nvmexpress:uuid:5b0a1c2e-0000-4000-8000-00000000a002";
const LIMIT: Duration = Duration::from_secs(60);

fn identify(t: &Target, subnqn: &str, hostnqn: Option<&str>) -> common::spdk::Run {
    run(
        "spdk_nvme_identify",
        &["-r", &trid(t.addr, Some(subnqn), hostnqn)],
        LIMIT,
    )
}

#[test]
fn identify_with_default_options_and_with_a_host_nqn() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:64M",
        "--namespace",
        "ram:8M,bs=512",
        "--serial",
        "SN-SPDK-7",
        "--model",
        "Model SPDK",
        "--max-io-size",
        "256K",
    ]);
    for host in [None, Some(HOST)] {
        let r = identify(&t, NQN, host);
        assert_eq!(r.code, Some(0), "host {host:?}:\n{}", r.out);
        let f = |k| field(&r.out, k).unwrap_or_else(|| panic!("no {k:?} in:\n{}", r.out));
        assert_eq!(f("Serial Number"), "SN-SPDK-7");
        assert_eq!(f("Model Number"), "Model SPDK");
        assert_eq!(f("Subsystem NQN"), NQN);
        assert_eq!(f("Max Data Transfer Size"), "262144");
        assert_eq!(f("Number of Namespaces"), "2");
        assert_eq!(f("Volatile Write Cache"), "Not Present");
        assert_eq!(f("Keep Alive"), "Supported");
        assert_eq!(f("Error Log Page Entries Supported"), "64");
        for cmd in [
            "Compare Command",
            "Dataset Management Command",
            "Write Zeroes Command",
        ] {
            assert_eq!(f(cmd), "Supported", "{cmd}");
        }
        // Namespace 1: 64 MiB of 4 KiB blocks; namespace 2: 8 MiB of 512 B.
        let ns: Vec<&str> = r.out.split("Namespace ID:").skip(1).collect();
        assert_eq!(ns.len(), 2, "{}", r.out);
        assert!(ns[0].starts_with('1') && ns[1].starts_with('2'));
        assert_eq!(field(ns[0], "Size (in LBAs)").unwrap(), "16384 (0GiB)");
        assert!(ns[0].contains("Data Size:  4096"), "{}", ns[0]);
        assert_eq!(field(ns[1], "Size (in LBAs)").unwrap(), "16384 (0GiB)");
        assert!(ns[1].contains("Data Size:   512"), "{}", ns[1]);
        assert!(!r.out.contains("Failed"), "{}", r.out);
    }
    // SPDK shuts each controller down (CC.SHN) when it is done, cleanly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.log().matches("shutting down").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", t.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!t.log().contains("failed"), "{}", t.log());
}

#[test]
fn discovery_lists_what_each_host_may_reach() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:8M",
        "--subsystem",
        "nqn.2026-11.io.nvmf-tpc:closed",
        "--namespace",
        "ram:8M",
        "--allow-host",
        HOST,
    ]);
    let open = format!("NVM Subsystem Qualified Name:          {NQN}");
    let closed = "nqn.2026-11.io.nvmf-tpc:closed";
    for (host, sees_closed) in [(None, false), (Some(HOST), true), (Some(OTHER), false)] {
        // spdk_nvme_discover does not exit after printing the log (against
        // SPDK's own target too): wait for the log, then stop it.
        // Its Host NQN comes from -H (a trid's hostnqn: is ignored here);
        // without -H it sends an NQN of its own making.
        let tr = trid(t.addr, None, None);
        let mut args = vec!["-r", &tr[..]];
        if let Some(h) = host {
            args.extend(["-H", h]);
        }
        let r = run("spdk_nvme_discover", &args, Duration::from_secs(10));
        assert!(r.out.contains("Discovery Log Page"), "{host:?}:\n{}", r.out);
        assert!(r.out.contains(&open), "{host:?}:\n{}", r.out);
        assert_eq!(r.out.contains(closed), sees_closed, "{host:?}:\n{}", r.out);
        let port = t.addr.port().to_string();
        assert_eq!(
            field(&r.out, "Transport Service Identifier"),
            Some(&port[..])
        );
        assert_eq!(field(&r.out, "Transport Type"), Some("3 (TCP)"));
    }
}

#[test]
fn a_host_not_allowed_is_refused() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:8M",
        "--allow-host",
        HOST,
    ]);
    assert_eq!(identify(&t, NQN, Some(HOST)).code, Some(0));
    for host in [Some(OTHER), None] {
        let r = identify(&t, NQN, host);
        assert_ne!(r.code, Some(0), "{host:?} was let in:\n{}", r.out);
        assert!(!r.out.contains("Serial Number"), "{}", r.out);
    }
    assert!(t.log().contains("not allowed"), "{}", t.log());
}

/// `spdk_nvme_perf` for 2 s: it must finish, report IOPS, and see no error.
fn perf(t: &Target, extra: &[&str]) -> f64 {
    let r = trid(t.addr, Some(NQN), None);
    let mut args = vec!["-c", "0x1", "-t", "2", "-r", &r];
    args.extend_from_slice(extra);
    let out = run("spdk_nvme_perf", &args, LIMIT);
    assert_eq!(out.code, Some(0), "perf {extra:?}:\n{}", out.out);
    let lower = out.out.to_lowercase();
    assert!(
        !lower.contains("error") && !lower.contains("fail"),
        "perf {extra:?}:\n{}",
        out.out
    );
    let total = out
        .out
        .lines()
        .find(|l| l.starts_with("Total"))
        .unwrap_or_else(|| panic!("perf {extra:?}: no Total line:\n{}", out.out));
    let iops: f64 = total
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(iops > 0.0, "perf {extra:?}: {total}");
    iops
}

#[test]
fn spdk_perf_over_every_data_path() {
    let dir = scratch_dir("spdk-perf");
    let img = dir.join("ns.img");
    sparse_file(&img, 64 << 20);
    // One namespace per run (-n picks it is not in v24.01's perf; each
    // target serves the namespace under test alone).
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "ram",
            &["--namespace", "ram:64M"],
            &["-q", "32", "-o", "4096", "-w", "randrw", "-M", "70"],
        ),
        (
            "digests",
            &["--namespace", "ram:64M"],
            &[
                "-q", "32", "-o", "4096", "-w", "randrw", "-M", "50", "-H", "-I",
            ],
        ),
        (
            "qpairs",
            &["--namespace", "ram:64M"],
            &["-q", "8", "-o", "4096", "-w", "randread", "-P", "4"],
        ),
        (
            "512",
            &["--namespace", "ram:16M,bs=512"],
            &["-q", "16", "-o", "4096", "-w", "randrw", "-M", "50"],
        ),
        (
            "file",
            &["--namespace", img.to_str().unwrap()],
            &["-q", "16", "-o", "4096", "-w", "randrw", "-M", "50"],
        ),
        // 256 KiB writes and reads with MAXH2CDATA 16 KiB: 16 H2CData PDUs
        // per R2T, C2HData split at 128 KiB, with data digests.
        (
            "split",
            &[
                "--namespace",
                "ram:64M",
                "--max-io-size",
                "1M",
                "--max-h2c-data",
                "16K",
            ],
            &["-q", "4", "-o", "262144", "-w", "randrw", "-M", "50", "-I"],
        ),
    ];
    for (name, ns, load) in cases {
        let mut args = vec!["--subsystem", NQN];
        args.extend_from_slice(ns);
        let t = Target::start(&args);
        let iops = perf(&t, load);
        let log = t.log();
        let failures: Vec<&str> = log.lines().filter(|l| l.contains("failed")).collect();
        assert!(failures.is_empty(), "{name}: {failures:?}");
        eprintln!("spdk_nvme_perf {name}: {iops:.0} IOPS");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
