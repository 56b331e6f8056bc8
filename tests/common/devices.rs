//! Real block devices for tests: loop devices over files, and a blkio
//! cgroup that makes one device slow for the target's process (a real slow
//! backing, throttled by the kernel, not a hope that the machine is slow).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
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
pub struct Loop(pub String);

impl Loop {
    pub fn attach(file: &Path) -> Loop {
        let dev = sh("losetup", &["-f", "--show", file.to_str().unwrap()])
            .expect("loop devices are needed (run as root)");
        Loop(dev)
    }

    /// "major:minor" of the device.
    pub fn dev_t(&self) -> String {
        let rdev = std::fs::metadata(&self.0).unwrap().rdev();
        format!("{}:{}", libc::major(rdev), libc::minor(rdev))
    }

    /// Sectors written to the device so far, counted as writes complete
    /// (field 7 of /sys/block/DEV/stat).
    pub fn sectors_written(&self) -> u64 {
        let name = self.0.trim_start_matches("/dev/");
        let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
        stat.split_whitespace().nth(6).unwrap().parse().unwrap()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = sh("losetup", &["-d", &self.0]);
    }
}

/// A block device a test made: its "major:minor".
pub trait Device {
    fn dev_t(&self) -> String;
}

impl Device for Loop {
    fn dev_t(&self) -> String {
        Loop::dev_t(self)
    }
}

impl<T: Device> Device for std::sync::Arc<T> {
    fn dev_t(&self) -> String {
        (**self).dev_t()
    }
}

const ZRAM_CONTROL: &str = "/sys/class/zram-control";

/// A zram device (compressed RAM, bio-based: its driver cannot take I/O
/// without blocking), removed on drop.
pub struct Zram(pub String, u32);

impl Zram {
    /// A new device of `bytes`; `None` where this kernel has no zram.
    pub fn add(bytes: u64) -> Option<Zram> {
        if !Path::new(ZRAM_CONTROL).exists() {
            let _ = sh("modprobe", &["zram", "num_devices=0"]);
        }
        let id: u32 = std::fs::read_to_string(Path::new(ZRAM_CONTROL).join("hot_add"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let z = Zram(format!("/dev/zram{id}"), id);
        std::fs::write(format!("/sys/block/zram{id}/disksize"), bytes.to_string()).unwrap();
        Some(z)
    }
}

impl Device for Zram {
    fn dev_t(&self) -> String {
        let rdev = std::fs::metadata(&self.0).unwrap().rdev();
        format!("{}:{}", libc::major(rdev), libc::minor(rdev))
    }
}

impl Drop for Zram {
    fn drop(&mut self) {
        let _ = std::fs::write(
            Path::new(ZRAM_CONTROL).join("hot_remove"),
            self.1.to_string(),
        );
    }
}

/// A mount at a directory of the test's, unmounted on drop.
pub struct Mount(pub PathBuf);

impl Mount {
    /// `mount ARGS... AT`.
    pub fn new(args: &[&str], at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let mut a = args.to_vec();
        a.push(at.to_str().unwrap());
        sh("mount", &a).expect("mount");
        Mount(at.to_owned())
    }

    /// A fresh ext4 file system of `mib` MiB in `dir`, loop-mounted at dir/mnt.
    pub fn small_ext4(dir: &Path, mib: u64) -> Mount {
        let img = dir.join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        sh("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]).expect("mkfs.ext4");
        Mount::new(&["-o", "loop", img.to_str().unwrap()], &dir.join("mnt"))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = sh("umount", &[self.0.to_str().unwrap()]);
    }
}

const BLKIO: &str = "/sys/fs/cgroup/blkio";

/// A blkio cgroup (v1) holding one process, whose writes (or reads) to one
/// device are throttled to a byte rate. The process leaves it on drop.
pub struct Throttle {
    dir: PathBuf,
    dev: String,
    pid: u32,
}

impl Throttle {
    pub fn new(name: &str, dev: &impl Device, write_bps: u64, pid: u32) -> Throttle {
        Throttle::limit(name, dev, "write", write_bps, pid)
    }

    /// Reads throttled instead.
    pub fn reads(name: &str, dev: &impl Device, read_bps: u64, pid: u32) -> Throttle {
        Throttle::limit(name, dev, "read", read_bps, pid)
    }

    fn limit(name: &str, dev: &impl Device, way: &str, bps: u64, pid: u32) -> Throttle {
        assert!(
            Path::new(BLKIO).join("cgroup.procs").exists(),
            "the blkio cgroup controller is needed at {BLKIO}"
        );
        let dir = Path::new(BLKIO).join(format!("nvmf-tpc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        let dev = dev.dev_t();
        std::fs::write(
            dir.join(format!("blkio.throttle.{way}_bps_device")),
            format!("{dev} {bps}"),
        )
        .unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        Throttle { dir, dev, pid }
    }

    /// Writes the process has submitted to the device (counted when they
    /// enter the throttle, before they are let through).
    pub fn writes_submitted(&self) -> u64 {
        let s = std::fs::read_to_string(self.dir.join("blkio.throttle.io_serviced")).unwrap();
        s.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3 && f[0] == self.dev && f[1] == "Write").then(|| f[2].parse().unwrap())
            })
            .unwrap_or(0)
    }
}

impl Throttle {
    /// Wait (in a glommio task) until the process has submitted more
    /// writes to the device than `before`: a write is then held there.
    pub async fn write_reached_device(&self, before: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.writes_submitted() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the write never reached the device"
            );
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        let _ = std::fs::write(Path::new(BLKIO).join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}
