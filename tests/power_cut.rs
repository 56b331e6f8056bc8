//! Power cuts. The target runs in a QEMU guest (Debian's kernel, from the
//! interop harness) and serves a file on ext4 on a virtio disk with a
//! volatile write cache; QEMU logs every write and flush the guest sends to
//! that disk (`blklogwrites`, the dm-log-writes format). A host on this
//! machine writes from several queues, with FUA and with Flush barriers,
//! and from a controller that turned the volatile write cache off, and
//! records every acknowledgement. At random moments it notes what it
//! has been promised and how far the log's durable mark has moved; after
//! the run, each such moment is turned into the disk a power cut then would
//! leave (the log replayed up to its mark onto the first disk image), which
//! this machine mounts (ext4 replays its journal) and a fresh target serves.
//! Every block written with FUA, before a Flush that completed, or with
//! the cache off must read back as that write or a later one, and no block
//! may be torn.
//!
//! Killing a process cannot show a missing fdatasync (the page cache keeps
//! the data); here what was not flushed is really gone. With
//! `NVMF_TPC_FAULT_SKIP_FLUSH=1` in the guest (`POWERCUT_BREAK=1`) the test
//! must fail. `POWERCUT_CUTS` sets the number of cuts (default 10).

mod common;
use common::devices::sh;
use common::logwrites;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

const GUEST_NQN: &str = "nqn.2026-11.io.nvmf-tpc:default";
/// Blocks of the namespace the host writes (4 KiB each).
const REGION: u64 = 1024;
/// Writers on a controller with the write cache on (FUA and Flush), and on
/// one with it turned off (plain writes, durable when acknowledged).
const WRITERS: u64 = 8;
const WRITE_THROUGH_WRITERS: u64 = 2;
const ALL_WRITERS: u64 = WRITERS + WRITE_THROUGH_WRITERS;
const NS_BYTES: u64 = 16 << 20;
const BOOT_DEADLINE: Duration = Duration::from_secs(600);

/// A block of `lba` at `version`: both stamped in every 16 bytes.
fn stamped(lba: u64, version: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for c in b.chunks_exact_mut(16) {
        c[..8].copy_from_slice(&lba.to_le_bytes());
        c[8..].copy_from_slice(&version.to_le_bytes());
    }
    b
}

/// The interop harness's kernel and base initramfs (installed on demand).
struct Guest {
    kernel: PathBuf,
    initrd_base: PathBuf,
    kver: String,
}

fn interop_setup() -> Guest {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(root.join("tests/interop/setup.sh"))
        .status()
        .expect("tests/interop/setup.sh");
    assert!(st.success(), "tests/interop/setup.sh failed");
    let cache = std::env::var("INTEROP_CACHE").unwrap_or("/var/cache/nvmf-tpc-interop".into());
    let env = std::fs::read_to_string(Path::new(&cache).join("current.env")).unwrap();
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing in current.env"))
            .trim_matches('\'')
            .to_string()
    };
    Guest {
        kernel: get("KERNEL").into(),
        initrd_base: get("INITRD_BASE").into(),
        kver: get("KVER"),
    }
}

/// The initramfs: the harness's base, plus the target, its libraries, the
/// virtio disk driver and the guest script.
fn initrd(g: &Guest, work: &Path, fault: &str) -> PathBuf {
    let ov = work.join("overlay");
    let _ = std::fs::remove_dir_all(&ov);
    std::fs::create_dir_all(ov.join("etc")).unwrap();
    let copy = |from: &Path, to: &str| {
        // The base is merged-/usr (/lib is a link to usr/lib): a directory
        // of the overlay's own at /lib would replace the link.
        let to = to.trim_start_matches('/');
        let merged = ["lib/", "lib64/", "bin/", "sbin/"]
            .iter()
            .any(|d| to.starts_with(d));
        let dst = if merged {
            ov.join("usr").join(to)
        } else {
            ov.join(to)
        };
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(from, &dst).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    };
    copy(Path::new(bin()), "/nvmf-tpc");
    let libs = sh("ldd", &[bin()]).unwrap();
    for l in libs.lines() {
        if let Some(p) = l.split_whitespace().find(|w| w.starts_with('/')) {
            copy(Path::new(p), p);
        }
    }
    // virtio_blk's path as modules.dep names it (its dependencies, virtio
    // and virtio_ring, come with virtio_net in the base).
    let kdir = g.kernel.parent().unwrap().parent().unwrap();
    let moddir = kdir.join("lib/modules").join(&g.kver);
    let deps = std::fs::read_to_string(moddir.join("modules.dep")).unwrap();
    let vblk = deps
        .lines()
        .filter_map(|l| l.split(':').next())
        .find(|p| p.contains("/virtio_blk.ko"))
        .expect("virtio_blk in modules.dep")
        .to_string();
    copy(
        &moddir.join(&vblk),
        &format!("/lib/modules/{}/{vblk}", g.kver),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy(&root.join("tests/interop/init.sh"), "/init");
    copy(&root.join("tests/powercut/guest.sh"), "/test.sh");
    std::fs::write(
        ov.join("etc/interop.env"),
        format!("VIRTIO_BLK='{vblk}'\nFAULT='{fault}'\n"),
    )
    .unwrap();
    let img = work.join("initrd.img");
    let script = format!(
        "cd {ov} && find . -mindepth 1 | cpio -o -H newc --quiet -R 0:0 | gzip -1 > {w}/overlay.cpio.gz && cat {base} {w}/overlay.cpio.gz > {img}",
        ov = ov.display(),
        w = work.display(),
        base = g.initrd_base.display(),
        img = img.display()
    );
    sh("sh", &["-c", &script]).unwrap();
    img
}

/// The disk as the guest first sees it: ext4 holding a sparse ns.img.
fn base_disk(work: &Path) -> PathBuf {
    let base = work.join("base.img");
    sparse_file(&base, 64 << 20);
    let b = base.to_str().unwrap();
    // No lazy initialisation: the guest writes only what the target causes.
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            b,
        ],
    )
    .unwrap();
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    sh("mount", &["-o", "loop", b, mnt.to_str().unwrap()]).unwrap();
    sparse_file(&mnt.join("ns.img"), NS_BYTES);
    sh("umount", &[mnt.to_str().unwrap()]).unwrap();
    base
}

struct Vm {
    qemu: Child,
    serial: PathBuf,
    port: u16,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

fn boot(g: &Guest, work: &Path, initrd: &Path, disk: &Path, log: &Path) -> Vm {
    let serial = work.join("serial.log");
    let port = free_port();
    // The log's super block moves only at flushes (not every N writes).
    let drive = format!(
        "if=none,id=d0,format=blklogwrites,file.driver=file,file.filename={},log.driver=file,log.filename={},log-sector-size=512,log-super-update-interval=1000000000",
        disk.display(),
        log.display()
    );
    let qemu = Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-monitor", "none", "-no-reboot", "-machine", "pc"])
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "1024",
        ])
        .arg("-kernel")
        .arg(&g.kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(["-netdev"])
        .arg(format!(
            "user,id=n0,ipv6=off,hostfwd=tcp:127.0.0.1:{port}-10.0.2.15:4420"
        ))
        .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
        .args(["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(work.join("qemu.log")).unwrap(),
        ))
        .spawn()
        .expect("qemu-system-x86_64");
    Vm { qemu, serial, port }
}

/// What the host was promised: per LBA the versions it wrote, and the
/// newest version made durable (FUA acknowledged, or acknowledged before a
/// Flush was sent that then completed).
#[derive(Default, Clone)]
struct Promises {
    written: HashMap<u64, Vec<u64>>,
    durable: HashMap<u64, u64>,
    /// Plain writes acknowledged, in order; a Flush sent when there were
    /// `n` covers the first `n`.
    plain: Vec<(u64, u64)>,
    covered: usize,
    acks: u64,
}

impl Promises {
    fn made_durable(&mut self, lba: u64, v: u64) {
        let d = self.durable.entry(lba).or_insert(0);
        *d = (*d).max(v);
    }

    fn flushed(&mut self, upto: usize) {
        while self.covered < upto {
            let (lba, v) = self.plain[self.covered];
            self.made_durable(lba, v);
            self.covered += 1;
        }
    }
}

/// A moment of the run: what was promised, and the log's durable mark read
/// just after.
struct Cut {
    promised: Promises,
    entries: u64,
}

/// Wait for the guest's target and drive it; return the cuts taken and,
/// per LBA, every version written in the whole run.
fn run_and_cut(vm: &Vm, log: PathBuf, cuts: usize) -> (Vec<Cut>, HashMap<u64, Vec<u64>>) {
    let deadline = Instant::now() + BOOT_DEADLINE;
    loop {
        let s = std::fs::read_to_string(&vm.serial).unwrap_or_default();
        assert!(
            !s.contains("POWERCUT-FAIL") && !s.contains("INTEROP-FAIL"),
            "guest:\n{s}"
        );
        if s.contains("POWERCUT: serving") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not start its target:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let addr = format!("127.0.0.1:{}", vm.port).parse().unwrap();
    run(move || async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        let c = loop {
            match Controller::connect(HostConfig::new(addr, GUEST_NQN)).await {
                Ok(c) => break c,
                Err(e) => assert!(Instant::now() < deadline, "no target in the guest: {e:?}"),
            }
            glommio::timer::sleep(Duration::from_millis(500)).await;
        };
        c.set_number_of_queues(4).await.unwrap();
        let mut qs = Vec::new();
        for qid in 1..=4 {
            qs.push(Rc::new(c.connect_io_queue(qid).await.unwrap()));
        }
        // A second controller (its own host identity) without a write cache.
        let wt = Controller::connect(
            HostConfig::new(addr, GUEST_NQN).with_hostid(*b"powercut-wthru\0\x01"),
        )
        .await
        .unwrap();
        wt.set_features(0x06, 0, None).await.unwrap();
        let wt_q = Rc::new(wt.connect_io_queue(1).await.unwrap());
        let p = Rc::new(RefCell::new(Promises::default()));
        let next = Rc::new(std::cell::Cell::new(1u64));
        let stop = Rc::new(std::cell::Cell::new(false));
        // For the second half of the cuts only the write-through writers
        // run: a Flush from the others would make their writes durable
        // whether or not the target kept its promise to them.
        let cached_stop = Rc::new(std::cell::Cell::new(false));
        let mut tasks = Vec::new();
        // Writer w owns the LBAs ≡ w (mod ALL_WRITERS): one write at a time
        // per LBA, so versions land in the order they were acknowledged.
        for w in 0..ALL_WRITERS {
            let through = w >= WRITERS;
            let q = if through {
                wt_q.clone()
            } else {
                qs[(w % 4) as usize].clone()
            };
            let (p, next) = (p.clone(), next.clone());
            let stop = if through {
                stop.clone()
            } else {
                cached_stop.clone()
            };
            tasks.push(glommio::spawn_local(async move {
                let mut x = w * 7919 + 1;
                while !stop.get() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let lba = (x % (REGION / ALL_WRITERS)) * ALL_WRITERS + w;
                    let v = next.get();
                    next.set(v + 1);
                    p.borrow_mut().written.entry(lba).or_default().push(v);
                    let fua = !through && x % 3 == 0;
                    if q.write(1, lba, &stamped(lba, v), 4096, fua).await.is_err() {
                        return;
                    }
                    // Some(n): send a Flush covering the first n plain writes.
                    let flush = {
                        let mut pm = p.borrow_mut();
                        pm.acks += 1;
                        if fua || through {
                            pm.made_durable(lba, v);
                            None
                        } else {
                            pm.plain.push((lba, v));
                            (x % 4 == 0).then_some(pm.plain.len())
                        }
                    };
                    if let Some(upto) = flush {
                        if q.flush(1).await.is_err() {
                            return;
                        }
                        p.borrow_mut().flushed(upto);
                    }
                }
            }));
        }
        let mut taken = Vec::new();
        let mut r = 12345u64;
        while taken.len() < cuts {
            if taken.len() == cuts / 2 {
                cached_stop.set(true);
            }
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            glommio::timer::sleep(Duration::from_millis(300 + r % 1700)).await;
            let promised = p.borrow().clone();
            let (entries, _) = logwrites::durable_entries(&log).unwrap();
            taken.push(Cut { promised, entries });
        }
        stop.set(true);
        cached_stop.set(true);
        drop(tasks);
        let written = p.borrow().written.clone();
        (taken, written)
    })
}

/// Rebuild the disk of one cut and read every written block back through
/// a fresh target on this machine; the problems found.
fn check_cut(
    work: &Path,
    base: &Path,
    log: &Path,
    k: usize,
    cut: &Cut,
    written: &HashMap<u64, Vec<u64>>,
) -> Vec<String> {
    let img = work.join(format!("cut-{k}.img"));
    std::fs::copy(base, &img).unwrap();
    let replayed = logwrites::replay(log, &img, cut.entries).unwrap();
    let mnt = work.join(format!("cut-{k}"));
    std::fs::create_dir_all(&mnt).unwrap();
    // Mounting replays ext4's journal, as a boot after the cut would.
    sh(
        "mount",
        &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()],
    )
    .unwrap_or_else(|e| panic!("cut {k}: the file system does not mount: {e}"));
    let ns = mnt.join("ns.img");
    let t = Target::start(&["--subsystem", NQN, "--namespace", ns.to_str().unwrap()]);
    let addr = t.addr;
    let promised = cut.promised.clone();
    let written = written.clone();
    let problems = run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        let mut problems = Vec::new();
        for chunk in (0..REGION).step_by(32) {
            let data = q.read(1, chunk, 32, 4096).await.unwrap();
            for (i, b) in data.chunks_exact(4096).enumerate() {
                let lba = chunk + i as u64;
                let v = if b.iter().all(|&x| x == 0) {
                    0
                } else {
                    let v = u64::from_le_bytes(b[8..16].try_into().unwrap());
                    if b != stamped(lba, v).as_slice() {
                        problems.push(format!("lba {lba}: torn or foreign block"));
                        continue;
                    }
                    v
                };
                let want = promised.durable.get(&lba).copied().unwrap_or(0);
                if v < want {
                    problems.push(format!("lba {lba}: version {v}, but {want} was durable"));
                }
                // A version never written there is garbage (a later one is
                // fine: it may have reached the disk before the cut).
                if v > 0 && !written.get(&lba).is_some_and(|w| w.contains(&v)) {
                    problems.push(format!("lba {lba}: version {v} was never written there"));
                }
            }
        }
        problems
    });
    drop(t);
    let _ = sh("umount", &[mnt.to_str().unwrap()]);
    let _ = std::fs::remove_file(&img);
    eprintln!(
        "cut {k}: {} log entries replayed ({} writes, {} flushes); {} acknowledgements, {} blocks promised durable; {} problems",
        cut.entries,
        replayed.writes,
        replayed.flushes,
        cut.promised.acks,
        cut.promised.durable.len(),
        problems.len()
    );
    problems
}

#[test]
fn acknowledged_writes_survive_power_cuts() {
    let cuts: usize = std::env::var("POWERCUT_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let fault = if std::env::var("POWERCUT_BREAK").is_ok_and(|v| v == "1") {
        "NVMF_TPC_FAULT_SKIP_FLUSH=1"
    } else {
        ""
    };
    let g = interop_setup();
    let work = scratch_dir("powercut");
    let initrd = initrd(&g, &work, fault);
    let base = base_disk(&work);
    let disk = work.join("disk.img");
    std::fs::copy(&base, &disk).unwrap();
    let log = work.join("writes.log");
    std::fs::File::create(&log).unwrap();
    let vm = boot(&g, &work, &initrd, &disk, &log);
    let (taken, written) = run_and_cut(&vm, log.clone(), cuts);
    drop(vm); // the last, real, power cut
    let mut failed = Vec::new();
    for (k, cut) in taken.iter().enumerate() {
        let problems = check_cut(&work, &base, &log, k, cut, &written);
        if !problems.is_empty() {
            failed.push(format!(
                "cut {k}: {}",
                problems[..problems.len().min(5)].join("; ")
            ));
        }
    }
    assert!(
        taken.iter().any(|c| c.promised.durable.len() > 10),
        "too little was made durable to test anything"
    );
    assert!(
        failed.is_empty(),
        "{} of {cuts} cuts lost promised data:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("{cuts} power cuts, every promise kept");
    let _ = std::fs::remove_dir_all(&work);
}
