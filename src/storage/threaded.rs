//! Whether a block device's driver does its reads and writes in a kernel
//! thread that the submission wakes, so that the core should hand it the
//! CPU once they went (`uring::handover`).
//!
//! A loop device's worker does (and dm-crypt's, md's raid5, rbd's and
//! drbd's threads, and a ublk server's); NVMe, SCSI and virtio disks take
//! a submission straight to the hardware's queue, zram and pmem do the work
//! in the submitting call. Where no thread waits, a yield only costs: on a
//! file on the virtio disk (which no thread serves), a yield after every
//! read and write submission measured, in 5 alternated pairs of 4 s
//! against none (2026-12-07), 4 KiB random reads at QD32 0.967 of the IOPS
//! (0.93-1.07, p99 1.10 times), writes at QD32 0.933 (0.80-1.24, p99 1.24
//! times), reads at QD1 0.976. Where a thread waits, not yielding cost up
//! to a third of the IOPS (`uring::handover`). So a device whose driver
//! is known to take I/O without a thread does not yield, and any other
//! does: a wrong yield costs a few percent, a missed one far more.
//!
//! Known by the disk's name alone, so a disk of these drivers that does
//! send through a thread is missed: NVMe over a fabric (nvme-tcp's
//! `io_work` when the submitting CPU is not the queue's), iSCSI and USB
//! disks (named as SCSI disks). They do not yield.

use std::io;

/// Kernel names' prefixes of the disks whose drivers take a submission
/// without a thread of their own: NVMe, SCSI, virtio, Xen, MMC, zram,
/// pmem, null_blk and RAM disks. A partition has its disk's prefix.
const DIRECT: &[&str] = &[
    "nvme", "sd", "vd", "xvd", "mmcblk", "zram", "pmem", "nullb", "ram",
];

/// Whether the block device `rdev` (its device number) may have a kernel
/// thread to hand the CPU to (see the module comment). A device whose name
/// cannot be read counts as one that may.
pub fn wakes_a_thread(rdev: u64) -> bool {
    match name(rdev) {
        Ok(name) => !direct(&name),
        Err(e) => {
            log::warn!("block device {rdev:#x}: no name in sysfs ({e}); yields to its thread");
            true
        }
    }
}

/// Whether the disk named `name` (a kernel name: "nvme0n1p2", "loop3")
/// takes I/O without a thread.
fn direct(name: &str) -> bool {
    DIRECT
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p))
}

/// The kernel's name of block device `rdev`, from its uevent in sysfs.
fn name(rdev: u64) -> io::Result<String> {
    let path = format!(
        "/sys/dev/block/{}:{}/uevent",
        libc::major(rdev),
        libc::minor(rdev)
    );
    let uevent = std::fs::read_to_string(path)?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::to_owned)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no DEVNAME"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_that_take_io_directly_are_known_by_name() {
        for n in [
            "nvme0n1",
            "nvme1n1p3",
            "sda",
            "sdab2",
            "vda",
            "vdb1",
            "xvda",
        ] {
            assert!(direct(n), "{n}");
        }
        for n in ["mmcblk0p1", "zram0", "pmem1", "nullb0", "ram15"] {
            assert!(direct(n), "{n}");
        }
        for n in ["loop0", "dm-3", "md127", "rbd0", "drbd1", "ublkb0", "nbd2"] {
            assert!(!direct(n), "{n}");
        }
        // A bare prefix names no disk.
        assert!(!direct("sd") && !direct("nvme"));
    }

    #[test]
    fn an_unknown_device_counts_as_having_a_thread() {
        // Device number 0:0 is never a block device.
        assert!(wakes_a_thread(0));
    }
}
