//! Real block devices and real backing errors, through loop devices: a
//! loop device served as a namespace (its logical block size, BLKZEROOUT,
//! BLKDISCARD), and a sparse file on a full file system, whose ENOSPC must
//! become an NVMe status while the target keeps serving.

mod common;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig, HostError};
use nvmf_tpc::wire::identify::cns;
use nvmf_tpc::wire::log_page::lid;
use nvmf_tpc::wire::status::Status;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A loop device over `file`, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let dev = sh("losetup", &["-f", "--show", file.to_str().unwrap()])
            .expect("loop devices are needed (run as root)");
        Loop(dev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = sh("losetup", &["-d", &self.0]);
    }
}

#[test]
fn block_device_namespace() {
    let dir = scratch_dir("blk");
    let img = dir.join("blk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let lo = Loop::attach(&img);
    let t = Target::start(&["--subsystem", NQN, "--namespace", &lo.0]);
    assert!(t.output().contains("block device"), "{}", t.output());
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        // The device's logical block size (512 for a loop device).
        assert_eq!(
            c.namespace_geometry(1).await.unwrap(),
            ((32 << 20) / 512, 512)
        );
        let ns = c.identify(cns::NAMESPACE, 1).await.unwrap();
        assert_eq!(
            ns[33] & 0x7,
            0,
            "block devices do not promise zeroes after deallocate"
        );
        let q = c.connect_io_queue(1).await.unwrap();
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 13 % 256) as u8).collect();
        q.write(1, 1000, &data, 512, true).await.unwrap();
        assert_eq!(q.read(1, 1000, 128, 512).await.unwrap(), data);
        q.write_zeroes(1, 1001, 2).await.unwrap();
        let back = q.read(1, 1000, 4, 512).await.unwrap();
        assert_eq!(&back[..512], &data[..512]);
        assert!(back[512..1536].iter().all(|&b| b == 0));
        assert_eq!(&back[1536..], &data[1536..2048]);
        q.deallocate(1, &[(2000, 64)]).await.unwrap();
        q.flush(1).await.unwrap();
    });
    assert_eq!(t.stop().code(), Some(0));
    // The data went to the device.
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(on_disk[1000 * 512], 0);
    assert_eq!(on_disk[1000 * 512 + 1], 13);
    drop(lo);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A block device served by one target is claimed (O_EXCL and a lock): a
/// second target refuses it and names the holder; so is a mounted device.
#[test]
fn a_claimed_or_mounted_block_device_is_refused() {
    let dir = scratch_dir("blkclaim");
    let img = dir.join("blk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let lo = Loop::attach(&img);
    let a = Target::start(&["--subsystem", NQN, "--namespace", &lo.0]);
    match Target::try_start(&["--subsystem", NQN, "--namespace", &lo.0]) {
        Ok(t) => panic!("a second target started on {}:\n{}", lo.0, t.output()),
        Err((_, out)) => assert!(
            out.contains(&format!("in use by process {}", a.pid())),
            "{out}"
        ),
    }
    drop(a);
    sh("mkfs.ext4", &["-q", "-F", &lo.0]).expect("mkfs.ext4");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    sh("mount", &[&lo.0, mnt.to_str().unwrap()]).expect("mount");
    let refused = Target::try_start(&["--subsystem", NQN, "--namespace", &lo.0]);
    let _ = sh("umount", &[mnt.to_str().unwrap()]);
    match refused {
        Ok(t) => panic!("served a mounted device:\n{}", t.output()),
        Err((_, out)) => assert!(out.contains("mounted"), "{out}"),
    }
    drop(lo);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn enospc_becomes_a_status_and_the_target_keeps_serving() {
    let dir = scratch_dir("enospc");
    let fs_img = dir.join("fs.img");
    std::fs::File::create(&fs_img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    sh("mkfs.ext4", &["-q", "-F", fs_img.to_str().unwrap()]).expect("mkfs.ext4");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    sh(
        "mount",
        &[
            "-o",
            "loop",
            fs_img.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
    )
    .expect("mount");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = sh("umount", &[self.0.to_str().unwrap()]);
        }
    }
    let _mounted = Unmount(mnt.clone());
    // A 64 MiB sparse file on a 16 MiB file system.
    let backing = mnt.join("thin.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let t = Target::start(&["--subsystem", NQN, "--namespace", backing.to_str().unwrap()]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        let chunk = vec![0xABu8; 128 * 1024];
        let mut failed = None;
        for i in 0..(64 << 20) / chunk.len() as u64 {
            match q.write(1, i * 32, &chunk, 4096, false).await {
                Ok(_) => {}
                Err(HostError::Status(s, _)) => {
                    failed = Some((i, s));
                    break;
                }
                Err(e) => panic!("transport failed instead of a status: {e:?}"),
            }
        }
        let (at, s) = failed.expect("a 16 MiB file system took 64 MiB");
        assert_eq!(s, Status::CAPACITY_EXCEEDED, "after {at} chunks");
        // Earlier data is intact and the queue still works.
        assert_eq!(q.read(1, 0, 32, 4096).await.unwrap(), chunk);
        let el = c.get_log_page(lid::ERROR, 0, 0, 64).await.unwrap();
        assert_ne!(el[0], 0, "error log entry");
        q.read(1, 0, 1, 4096).await.unwrap();
    });
    assert_eq!(t.stop().code(), Some(0));
}
