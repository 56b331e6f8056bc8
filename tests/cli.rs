//! The `serve` command line: bad flags and unusable backings fail at start
//! with a message naming the problem; the embedded default serves; signals stop it.

mod common;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig};
use std::process::Command;
use std::time::Duration;

fn fails_with(args: &[&str], needle: &str) {
    match Target::try_start(args) {
        Ok(t) => panic!("started with {args:?}:\n{}", t.output()),
        Err((status, out)) => {
            let status = status.expect("exited");
            assert!(!status.success(), "{args:?}: exit status {status:?}");
            assert!(
                out.contains(needle),
                "{args:?}: output lacks '{needle}':\n{out}"
            );
            assert!(!out.contains("listening on"), "half-started:\n{out}");
        }
    }
}

#[test]
fn bad_flags_are_refused() {
    fails_with(&["--queue-depth", "1"], "--queue-depth");
    fails_with(&["--max-io-size", "100K"], "--max-io-size");
    fails_with(&["--in-capsule-data", "1M"], "--in-capsule-data");
    fails_with(&["--cores", "0"], "--cores");
    fails_with(&["--cores", "999"], "--cores");
    fails_with(&["--cpus", "x"], "CPU list");
    fails_with(&["--subsystem", "notannqn"], "NQN");
    fails_with(&["--namespace", "ram:1G,bs=1000"], "block size");
    fails_with(&["--namespace", "ram:banana"], "size");
    fails_with(&["--namespace", "ram:1G,zz=1"], "unknown namespace option");
    fails_with(&["--nonsense"], "--nonsense");
    fails_with(&["--listen", "127.0.0.1:0"], "port");
}

#[test]
fn unusable_backings_are_refused() {
    let dir = std::env::temp_dir().join(format!("nvmf-tpc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.img");
    fails_with(&["--namespace", missing.to_str().unwrap()], "missing.img");
    let odd = dir.join("odd.img");
    sparse_file(&odd, 4096 * 10 + 512);
    fails_with(&["--namespace", odd.to_str().unwrap()], "not a multiple");
    let empty = dir.join("empty.img");
    std::fs::File::create(&empty).unwrap();
    fails_with(&["--namespace", empty.to_str().unwrap()], "zero");
    fails_with(
        &["--namespace", dir.to_str().unwrap()],
        "not a regular file",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn non_loopback_needs_an_explicit_host_choice() {
    let port = free_port();
    let l = format!("0.0.0.0:{port}");
    fails_with(&["--listen", &l, "--namespace", "null:1M"], "--allow-host");
    let t = Target::start(&["--listen", &l, "--namespace", "null:1M", "--allow-any-host"]);
    assert_eq!(t.stop().code(), Some(0));
}

#[test]
fn port_in_use_is_refused() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    fails_with(&["--listen", &a, "--namespace", "null:1M"], "cannot listen");
}

#[test]
fn embedded_default_serves_and_stops_cleanly() {
    let dir = std::env::temp_dir().join(format!("nvmf-tpc-default-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t = Target::start_in(&dir, &[]);
    let out = t.output();
    assert!(out.contains("nqn.2026-11.io.nvmf-tpc:default"), "{out}");
    assert!(out.contains("nvme connect -t tcp -a 127.0.0.1"), "{out}");
    assert!(out.contains("namespace 1: file"), "{out}");
    let img = dir.join("nvmf-tpc-data/default.img");
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    // Data persists: written (no FUA) before a stop, read after a second
    // start on the same file.
    let nqn = "nqn.2026-11.io.nvmf-tpc:default";
    let addr = t.addr;
    let data = pattern(3 * 4096, 42);
    let d = data.clone();
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, nqn))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        q.write(1, 1000, &d, 4096, false).await.unwrap();
    });
    assert_eq!(t.stop().code(), Some(0));
    let t = Target::start_in(&dir, &[]);
    let addr = t.addr;
    let back = run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, nqn))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        q.read(1, 1000, 3, 4096).await.unwrap()
    });
    assert!(back == data, "data written before the stop is gone");
    assert_eq!(t.stop().code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_speaks_to_admins() {
    let out = Command::new(bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--cores",
        "--cpus",
        "--listen",
        "--subsystem",
        "--namespace",
        "--allow-host",
        "--allow-any-host",
        "--queue-depth",
        "--max-io-size",
        "--in-capsule-data",
        "--serial",
        "--model",
        "--log-level",
    ] {
        assert!(s.contains(flag), "help lacks {flag}:\n{s}");
    }
}

/// A backing served by one target is claimed: a second target on it (on
/// another port, so nothing else stops it) refuses to start, names the
/// holder, and writes nothing (the file's mtime and data stay as they were;
/// before claims, the second start rewrote block 0 before any check).
#[test]
fn a_claimed_backing_refuses_a_second_target() {
    use nvmf_tpc::host::{Controller, HostConfig};
    use std::os::unix::fs::MetadataExt;
    let dir = scratch_dir("claim");
    let img = dir.join("shared.img");
    sparse_file(&img, 16 << 20);
    let path = img.to_str().unwrap().to_string();
    let a = Target::start(&["--subsystem", NQN, "--namespace", &path, "--cores", "1"]);
    let addr = a.addr;
    let data = pattern(4096, 7);
    let d = data.clone();
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        q.write(1, 0, &d, 4096, true).await.unwrap();
    });
    let before = std::fs::metadata(&img).unwrap();
    fails_with(
        &["--subsystem", NQN, "--namespace", &path],
        &format!("in use by process {}", a.pid()),
    );
    let after = std::fs::metadata(&img).unwrap();
    assert_eq!(
        (before.mtime(), before.mtime_nsec()),
        (after.mtime(), after.mtime_nsec()),
        "the refused target wrote the backing"
    );
    assert_eq!(&std::fs::read(&img).unwrap()[..4096], &data[..]);
    // One target cannot name the same backing twice either.
    drop(a);
    fails_with(
        &["--namespace", &path, "--namespace", &path],
        "in use by process",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Backings the target cannot serve safely are refused at start with the
/// reason: a file on a file system without O_DIRECT (ramfs; tmpfs has had
/// it since Linux 6.6), whose acknowledged writes would sit in the page
/// cache, and a block size below a block device's logical block (its
/// O_DIRECT unit).
#[test]
fn backings_without_o_direct_or_with_too_small_blocks_are_refused() {
    use common::devices::{sh, Mount};
    let dir = scratch_dir("unservable");
    let rf = dir.join("ramfs");
    let mnt = Mount::new(&["-t", "ramfs", "ramfs"], &rf);
    let on_ramfs = rf.join("ns.img");
    sparse_file(&on_ramfs, 4 << 20);
    fails_with(
        &[
            "--subsystem",
            NQN,
            "--namespace",
            on_ramfs.to_str().unwrap(),
        ],
        "O_DIRECT",
    );
    drop(mnt);
    // tmpfs takes O_DIRECT on this kernel: served, with a warning that its
    // data is memory.
    let tm = dir.join("tmpfs");
    let mnt = Mount::new(&["-t", "tmpfs", "-o", "size=8M", "tmpfs"], &tm);
    let on_tmpfs = tm.join("ns.img");
    sparse_file(&on_tmpfs, 4 << 20);
    if let Ok(t) = Target::try_start(&[
        "--subsystem",
        NQN,
        "--namespace",
        on_tmpfs.to_str().unwrap(),
    ]) {
        assert!(
            t.wait_log("on tmpfs: its data lives in memory", Duration::from_secs(5)),
            "{}",
            t.output()
        );
    }
    drop(mnt);
    let img = dir.join("4k.img");
    sparse_file(&img, 8 << 20);
    let dev = sh(
        "losetup",
        &[
            "-f",
            "--show",
            "--sector-size",
            "4096",
            img.to_str().unwrap(),
        ],
    )
    .expect("losetup");
    let lo = common::devices::Loop(dev);
    fails_with(
        &[
            "--subsystem",
            NQN,
            "--namespace",
            &format!("{},bs=512", lo.0),
        ],
        "smaller than the device's 4096-byte",
    );
    // Its own block size serves.
    let t = Target::start(&["--subsystem", NQN, "--namespace", &lo.0]);
    assert!(t.output().contains("4096-byte blocks"), "{}", t.output());
    drop(t);
    drop(lo);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Hosts given before any subsystem apply to every subsystem, the embedded
/// default included: `serve --allow-host X` serves the default file to X only.
#[test]
fn global_hosts_bind_the_embedded_default_too() {
    let host = "nqn.2014-08.org.nvmexpress:uuid:0c0c0c0c-0000-4000-8000-000000000001";
    let dir = scratch_dir("default-hosts");
    let t = Target::start_in(&dir, &["--allow-host", host]);
    assert!(
        t.output().contains(&format!("allowed: {host}")),
        "{}",
        t.output()
    );
    drop(t);
    let t = Target::start(&[
        "--allow-host",
        host,
        "--subsystem",
        NQN,
        "--namespace",
        "null:1M",
    ]);
    assert!(
        t.output().contains(&format!("allowed: {host}")),
        "{}",
        t.output()
    );
    drop(t);
    std::fs::remove_dir_all(&dir).unwrap();
}
