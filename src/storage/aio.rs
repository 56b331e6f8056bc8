//! Linux AIO (`io_submit`) for block devices that io_uring cannot drive
//! without a worker thread, and first for files (`route` says which, and
//! why files).
//!
//! io_uring first issues a read or write without blocking, and a file that
//! cannot promise that (no `FMODE_NOWAIT`: bio-based devices such as zram,
//! and others whose driver never declared it) has every operation handed to
//! an io-wq worker thread. That worker is pinned to the submitting core,
//! where the executor polls, so each operation costs two context switches
//! and waits for the scheduler: on zram, 4 KiB random reads measured 0.72
//! of SPDK's AIO bdev at QD1 and 0.70 at QD32, with an io-wq hand-over per
//! read (`io_uring:io_uring_queue_async_work` 0.93 per I/O). `io_submit`
//! issues in the caller, as SPDK's AIO bdev does, and a block device's
//! O_DIRECT path only queues the bio there; its completion is written into
//! a ring mapped in this process, which the reaper reads without a system
//! call (fs/aio.c keeps `head` in that ring for user space to advance).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

// include/uapi/linux/aio_abi.h
const IOCB_CMD_PREAD: u16 = 0;
const IOCB_CMD_PWRITE: u16 = 1;
const IOCB_FLAG_RESFD: u32 = 1 << 0;
const AIO_RING_MAGIC: u32 = 0xa10a_10a1;
/// The most operations given to the kernel in one `io_submit`.
pub const SUBMIT_BATCH: usize = 32;

// The layout below is the little-endian one (`aio_key` before `aio_rw_flags`).
const _: () = assert!(cfg!(target_endian = "little"));

#[repr(C)]
#[derive(Default)]
struct Iocb {
    aio_data: u64,
    aio_key: u32,
    aio_rw_flags: i32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}
const _: () = assert!(std::mem::size_of::<Iocb>() == 64);

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// The head of the completion ring the kernel maps at the context's address.
#[repr(C)]
struct RingHeader {
    id: u32,
    nr: u32,
    head: u32,
    tail: u32,
    magic: u32,
    compat_features: u32,
    incompat_features: u32,
    header_length: u32,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

/// One operation for `submit`.
pub struct Request {
    pub kind: Kind,
    pub fd: RawFd,
    pub buf: *const u8,
    pub len: usize,
    pub offset: u64,
    /// Fail with EAGAIN (or stop short) where the operation would block
    /// (`RWF_NOWAIT`: a file system's allocation, a full device queue).
    pub nowait: bool,
    /// Comes back with the completion.
    pub data: u64,
}

/// One AIO context.
pub struct Context {
    ctx: libc::c_ulong,
    /// The kernel's ring is readable in place (else `io_getevents`).
    mapped: bool,
    /// Signalled on every completion, if any.
    resfd: Option<RawFd>,
}

impl Context {
    /// A context for up to `depth` operations in flight.
    pub fn new(depth: u32, resfd: Option<RawFd>) -> io::Result<Context> {
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the context id into `ctx`.
        if unsafe { libc::syscall(libc::SYS_io_setup, depth as libc::c_long, &mut ctx) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a context id is the address of its ring, mapped for as
        // long as the context lives.
        let h = unsafe { &*(ctx as *const RingHeader) };
        let mapped = h.magic == AIO_RING_MAGIC
            && h.incompat_features == 0
            && h.header_length as usize == std::mem::size_of::<RingHeader>();
        Ok(Context { ctx, mapped, resfd })
    }

    /// Give the kernel the first `SUBMIT_BATCH` of `reqs` at most, in one
    /// call (one block plug: a device woken once for all). Returns how many
    /// it took; an error only if it took none (`EAGAIN`: no room now, try
    /// later; any other: the first request's own).
    ///
    /// # Safety
    /// Each request's `buf` must stay valid for `len` bytes (and writable
    /// for a read), and its `fd` open, until its completion is reaped.
    pub unsafe fn submit(&self, reqs: &[Request]) -> io::Result<usize> {
        let n = reqs.len().min(SUBMIT_BATCH);
        // Only the first `n` are filled and given (no 2 KiB of zeroes per call).
        let mut iocbs = [const { MaybeUninit::<Iocb>::uninit() }; SUBMIT_BATCH];
        let mut list = [std::ptr::null_mut::<Iocb>(); SUBMIT_BATCH];
        for (i, req) in reqs[..n].iter().enumerate() {
            list[i] = iocbs[i].write(self.iocb(req));
        }
        // SAFETY: `n` valid iocbs; the kernel copies them during the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                self.ctx,
                n as libc::c_long,
                list.as_mut_ptr(),
            )
        };
        match r {
            0 => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            r if r > 0 => Ok(r as usize),
            _ => Err(io::Error::last_os_error()),
        }
    }

    fn iocb(&self, req: &Request) -> Iocb {
        let mut iocb = Iocb {
            aio_data: req.data,
            aio_lio_opcode: match req.kind {
                Kind::Read => IOCB_CMD_PREAD,
                Kind::Write => IOCB_CMD_PWRITE,
            },
            aio_fildes: req.fd as u32,
            aio_buf: req.buf as u64,
            aio_nbytes: req.len as u64,
            aio_offset: req.offset as i64,
            aio_rw_flags: if req.nowait { libc::RWF_NOWAIT } else { 0 },
            ..Default::default()
        };
        if let Some(fd) = self.resfd {
            iocb.aio_flags = IOCB_FLAG_RESFD;
            iocb.aio_resfd = fd as u32;
        }
        iocb
    }

    /// Hand every completion the kernel has posted to `f` (its `data` and
    /// its result: bytes, or a negative errno). Returns how many.
    pub fn reap(&self, mut f: impl FnMut(u64, i64)) -> usize {
        if !self.mapped {
            return self.reap_syscall(f);
        }
        let h = self.ctx as *mut RingHeader;
        // SAFETY: the ring is mapped while the context lives; the kernel
        // writes an event, then (after a write barrier) `tail`; only this
        // thread reads events and moves `head`.
        unsafe {
            let nr = (*h).nr;
            let head_at = AtomicU32::from_ptr(std::ptr::addr_of_mut!((*h).head));
            let tail =
                AtomicU32::from_ptr(std::ptr::addr_of_mut!((*h).tail)).load(Ordering::Acquire);
            let events = h.add(1) as *const IoEvent;
            let mut head = head_at.load(Ordering::Relaxed);
            let mut n = 0;
            while head != tail {
                let ev = std::ptr::read_volatile(events.add(head as usize));
                f(ev.data, ev.res);
                head = (head + 1) % nr;
                n += 1;
            }
            // The slots may be reused once `head` has passed them.
            head_at.store(head, Ordering::Release);
            n
        }
    }

    fn reap_syscall(&self, mut f: impl FnMut(u64, i64)) -> usize {
        let mut evs = [IoEvent::default(); 64];
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut total = 0;
        loop {
            // SAFETY: room for `evs.len()` events; a zero timeout never blocks.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.ctx,
                    0 as libc::c_long,
                    evs.len() as libc::c_long,
                    evs.as_mut_ptr(),
                    &zero,
                )
            };
            if n <= 0 {
                return total;
            }
            for ev in &evs[..n as usize] {
                f(ev.data, ev.res);
            }
            total += n as usize;
            if (n as usize) < evs.len() {
                return total;
            }
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // Waits for operations still in flight (fs/aio.c `io_destroy`); the
        // ring drains them before this.
        // SAFETY: our context, destroyed once.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
    }
}
