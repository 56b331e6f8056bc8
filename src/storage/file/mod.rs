//! Files and block devices, opened O_DIRECT, read and written through the
//! executor's own storage ring (`uring`), Linux AIO first where `route`
//! says so.

use super::aio;
use super::in_call::{self, InCall, ReadWay};
use super::route::{would_block, Backoff, Route};
use super::uring::{Ring, Submit, Then};
use glommio::io::DmaBuffer;
use std::cell::Cell;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

// Linux ioctls (include/uapi/linux/fs.h).
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127F;

/// What probing a path found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub is_block: bool,
    pub size: u64,
    /// Smallest O_DIRECT unit: the device's logical block size.
    pub logical_block: u32,
    /// The device's physical block: the largest unit the kernel says it
    /// writes atomically (what survives a power cut whole). 0 if unknown.
    pub physical_block: u32,
}

/// The physical block size of the device behind `dev` (a block device
/// number: the device itself, or the one a file's file system is on).
fn physical_block(dev: u64) -> u32 {
    let base = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    // A partition has no queue/ of its own: its disk's is one level up.
    ["queue/physical_block_size", "../queue/physical_block_size"]
        .iter()
        .find_map(|q| std::fs::read_to_string(format!("{base}/{q}")).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Check at start that `path` exists, opens read-write with O_DIRECT and is
/// no other process's; claim it for this one, and learn its size and
/// logical block size.
pub fn probe(path: &Path) -> Result<Probe, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let is_block = meta.file_type().is_block_device();
    if !is_block && !meta.is_file() {
        return Err(format!(
            "{}: not a regular file or block device",
            path.display()
        ));
    }
    // Claimed before anything reads or writes it (see `claim`).
    let f = super::claim::claim(path, is_block)?;
    let fd = f.as_raw_fd();
    if is_block {
        let mut bs: libc::c_int = 0;
        let mut size: u64 = 0;
        // SAFETY: both ioctls write one integer of the given type.
        let ok = unsafe {
            libc::ioctl(fd, BLKSSZGET, &mut bs) == 0
                && libc::ioctl(fd, BLKGETSIZE64, &mut size) == 0
        };
        if !ok {
            return Err(format!(
                "{}: cannot read block device geometry: {}",
                path.display(),
                io::Error::last_os_error()
            ));
        }
        Ok(Probe {
            is_block,
            size,
            logical_block: bs as u32,
            physical_block: physical_block(meta.rdev()),
        })
    } else {
        // Files: O_DIRECT needs the underlying device's logical block alignment;
        // 512 is the common case; a real read at 512 proves it.
        let mut align = 512u32;
        let mut buf = AlignedBuf::new(4096);
        // SAFETY: buf is 4096 bytes, 4096-aligned.
        let r = unsafe { libc::pread(fd, buf.ptr() as *mut libc::c_void, 512, 0) };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            align = 4096;
        }
        Ok(Probe {
            is_block,
            size: meta.len(),
            logical_block: align,
            physical_block: physical_block(meta.dev()),
        })
    }
}

/// Zeroed memory aligned for O_DIRECT, outside an executor's DMA pool.
pub(super) struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    pub(super) fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        AlignedBuf { ptr, layout }
    }
    fn ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    #[cfg(test)]
    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `layout.size()` bytes allocated in `new`, borrowed with `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Whether the kernel can start I/O on `fd` without blocking
/// (`FMODE_NOWAIT`), which io_uring needs to issue it inline: a read with
/// `RWF_NOWAIT` fails with EOPNOTSUPP before any I/O where it cannot.
pub fn takes_nowait(fd: RawFd) -> bool {
    let mut buf = AlignedBuf::new(4096);
    let iov = libc::iovec {
        iov_base: buf.ptr().cast(),
        iov_len: 4096,
    };
    // SAFETY: one iovec over 4096 bytes we own.
    let r = unsafe { libc::preadv2(fd, &iov, 1, 0, libc::RWF_NOWAIT) };
    !(r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP))
}

/// The route a backing at `path` would take (`Ring` if it cannot be
/// opened now; `open` then reports why).
pub fn route_of(path: &Path, is_block: bool) -> Route {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
        .map_or(Route::Ring, |f| {
            Route::of(is_block, takes_nowait(f.as_raw_fd()))
        })
}

/// Create the embedded default's sparse backing file if it is missing.
pub fn create_sparse(path: &Path, size: u64) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if path.exists() {
        return Ok(());
    }
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(size)
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub struct FileBackend {
    file: Rc<OwnedFd>,
    ring: Rc<Ring>,
    pub is_block: bool,
    /// A block device whose driver may work in a thread of its own: the
    /// core yields to it once reads and writes went (`storage::threaded`).
    hand_over: bool,
    /// How reads and writes reach the kernel.
    pub route: Route,
    /// When reads and writes on `Route::AioFirst` try AIO.
    pub reads: Backoff,
    pub writes: Backoff,
    /// On `Route::Aio`: whether the device completes in the submitting
    /// call, so that plain calls serve it (`in_call`).
    pub in_call: InCall,
    pub path: PathBuf,
    /// A flush of this handle failed once. The kernel reports a write-back
    /// error once per file handle and may drop the data it could not write,
    /// so a later flush would succeed over lost data: every later flush
    /// (and FUA write) fails too, until the target restarts.
    flush_failed: Cell<bool>,
}

impl FileBackend {
    /// Open `path` O_DIRECT for this executor's ring.
    pub fn open(path: &Path, is_block: bool) -> io::Result<FileBackend> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)?;
        let route = Route::of(is_block, takes_nowait(file.as_raw_fd()));
        let hand_over = is_block && super::threaded::wakes_a_thread(file.metadata()?.rdev());
        Ok(FileBackend {
            file: Rc::new(file.into()),
            ring: Ring::current()?,
            is_block,
            hand_over,
            route,
            path: path.to_owned(),
            reads: Backoff::default(),
            writes: Backoff::default(),
            in_call: InCall::default(),
            flush_failed: Cell::new(false),
        })
    }

    /// The device completes reads and writes in the submitting call
    /// (`in_call`): run them where the command is parsed.
    pub fn completes_in_call(&self) -> bool {
        self.route == Route::Aio && self.in_call.on()
    }

    pub async fn read(&self, offset: u64, len: usize) -> io::Result<DmaBuffer> {
        let mut buf = super::dma_buffer(len);
        let ring = &self.ring;
        let (r, buf) = match self.route {
            Route::Aio if self.in_call.read_way() == ReadWay::Call => {
                let t = std::time::Instant::now();
                let r = in_call::read(self.file.as_raw_fd(), buf.as_bytes_mut(), offset);
                self.in_call.call_took(t.elapsed(), len);
                (r, buf)
            }
            Route::Aio => {
                let mut f = std::pin::pin!(ring.aio_read(
                    &self.file,
                    offset,
                    buf,
                    false,
                    self.read_submit()
                ));
                match futures_lite::future::poll_once(f.as_mut()).await {
                    Some(done) => {
                        self.in_call.aio_read(true);
                        done
                    }
                    None => {
                        self.in_call.aio_read(false);
                        f.await
                    }
                }
            }
            Route::AioFirst if self.reads.try_aio() => {
                match ring
                    .aio_read(&self.file, offset, buf, true, self.read_submit())
                    .await
                {
                    (r, buf) if would_block(&r, len) => {
                        self.reads.refused();
                        ring.read(&self.file, offset, buf).await
                    }
                    done => {
                        self.reads.went_through();
                        done
                    }
                }
            }
            Route::Ring | Route::AioFirst => ring.read(&self.file, offset, buf).await,
        };
        if r? < len {
            // Reading past the end of a file that shrank under us.
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
        }
        Ok(buf)
    }

    pub async fn write(&self, offset: u64, buf: DmaBuffer) -> io::Result<()> {
        let len = buf.len();
        let how = self.write_submit();
        let ring = &self.ring;
        let (written, _) = match self.route {
            Route::Aio => ring.aio_write(&self.file, offset, buf, false, how).await,
            Route::AioFirst if self.writes.try_aio() => {
                match ring.aio_write(&self.file, offset, buf, true, how).await {
                    // The whole write again: a block is written whole
                    // either way, and its lock is held throughout
                    // (`block_lock`).
                    (r, buf) if would_block(&r, len) => {
                        self.writes.refused();
                        ring.write(&self.file, offset, buf, how).await
                    }
                    done => {
                        self.writes.went_through();
                        done
                    }
                }
            }
            Route::Ring | Route::AioFirst => ring.write(&self.file, offset, buf, how).await,
        };
        if written? < len {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        Ok(())
    }

    /// Whether a read (or a write) can start now without a future
    /// (`start`): the AIO attempt with `RWF_NOWAIT` is what this backing
    /// tries next. Others (the ring's way, in-call reads) take the awaited
    /// way.
    pub fn can_start(&self, write: bool) -> bool {
        let tries = if write { &self.writes } else { &self.reads };
        self.route == Route::AioFirst && tries.will_try()
    }

    /// Start the AIO attempt of a read into `buf` (or a write of it) at
    /// `offset`, where `can_start` says so: `then` gets `finish`'s input.
    pub fn start(&self, write: bool, offset: u64, buf: DmaBuffer, then: Then) {
        debug_assert!(self.can_start(write));
        let (kind, how, tries) = if write {
            (aio::Kind::Write, self.write_submit(), &self.writes)
        } else {
            (aio::Kind::Read, self.read_submit(), &self.reads)
        };
        assert!(tries.try_aio(), "started only when AIO is tried next");
        self.ring
            .aio_then(kind, &self.file, offset, buf, true, how, then);
    }

    /// A started read's or write's result: `None` where the attempt would
    /// have blocked (to be done again through the ring, `again`), else its
    /// end, a short one an error.
    pub fn finish(&self, write: bool, r: io::Result<usize>, len: usize) -> Option<io::Result<()>> {
        let tries = if write { &self.writes } else { &self.reads };
        if would_block(&r, len) {
            tries.refused();
            return None;
        }
        tries.went_through();
        Some(whole(r, len, write))
    }

    /// A started read or write that the AIO attempt refused, done again
    /// through the ring (whose worker may block), as `read` and `write` do.
    pub async fn again(
        &self,
        write: bool,
        offset: u64,
        buf: DmaBuffer,
    ) -> (io::Result<()>, DmaBuffer) {
        let len = buf.len();
        let (r, buf) = if write {
            self.ring
                .write(&self.file, offset, buf, self.write_submit())
                .await
        } else {
            self.ring.read(&self.file, offset, buf).await
        };
        (whole(r, len, write), buf)
    }

    /// When a write goes to the kernel, while others are in flight: a
    /// file's (or a disk's without a thread) with the rest of its burst of
    /// commands (one `io_submit`, block plug and doorbell for several); a
    /// threaded block device's until the reaper looks, and the core then
    /// yields to the device's thread (`uring::handover`). `uring`'s module
    /// comment has the figures.
    fn write_submit(&self) -> Submit {
        if self.hand_over {
            Submit::GatherHandOver
        } else {
            Submit::Gather
        }
    }

    /// When a read goes: a file's (or a disk's without a thread) now, as it
    /// leaves the core idle for the disk (gathered with its burst it
    /// measured the same, perf/README.md); a threaded block device's as its
    /// writes go, until the reaper looks, then yielding to the device's
    /// thread (`uring::handover` has the figures).
    fn read_submit(&self) -> Submit {
        if self.hand_over {
            Submit::GatherHandOver
        } else {
            Submit::Now
        }
    }

    pub async fn flush(&self) -> io::Result<()> {
        if self.flush_failed.get() {
            // EIO, as the failed flush itself most likely was.
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if crate::fault::skip_flush() {
            return Ok(());
        }
        let r = self.ring.fdatasync(&self.file).await;
        if let Err(e) = &r {
            log::error!(
                "{}: flush failed ({e}); every later flush fails too",
                self.path.display()
            );
            self.flush_failed.set(true);
        }
        r
    }

    /// Run `op` on a duplicate of the file's descriptor in the executor's
    /// blocking pool: ioctls that may take long (zeroing or discarding a
    /// large range of a block device) must not stall the other queues of
    /// this core, nor its control messages (keep-alive queries from other
    /// cores time out). The duplicate keeps the file open even if the
    /// command is dropped.
    async fn off_executor(
        &self,
        op: impl FnOnce(RawFd) -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        let owned = self.file.try_clone()?;
        // Its completion comes through glommio's ring: see `IoWait`.
        let _io = crate::io_wait::IoWait::new();
        glommio::executor()
            .spawn_blocking(move || op(owned.as_raw_fd()))
            .await
    }

    /// Make the range read as zeroes. With `deallocate` (the host set DEAC)
    /// a file's range becomes a hole; without, it is zeroed in place and
    /// stays allocated, so a later write there cannot fail for want of
    /// space (NVM Command Set 1.0 §3.2.8).
    pub async fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool) -> io::Result<()> {
        if self.is_block {
            return self
                .off_executor(move |fd| ioctl_range(fd, BLKZEROOUT, offset, len))
                .await;
        }
        let mode = if deallocate { PUNCH_HOLE } else { ZERO_RANGE };
        match self.ring.fallocate(&self.file, mode, offset, len).await {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && !deallocate => {
                self.write_zero_buffers(offset, len).await
            }
            r => r,
        }
    }

    /// Zeroes written as data, for file systems without FALLOC_FL_ZERO_RANGE.
    async fn write_zero_buffers(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(ZERO_CHUNK as u64) as usize;
            let mut b = super::dma_buffer(n);
            b.as_bytes_mut().fill(0);
            self.write(offset, b).await?;
            offset += n as u64;
        }
        Ok(())
    }

    pub async fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.is_block {
            // Advisory: a device that cannot discard keeps its data.
            let _ = self
                .off_executor(move |fd| ioctl_range(fd, BLKDISCARD, offset, len))
                .await;
            Ok(())
        } else {
            self.ring
                .fallocate(&self.file, PUNCH_HOLE, offset, len)
                .await
        }
    }

    /// Bytes the backing really holds: a sparse file's allocated blocks,
    /// or `size` (a block device is all there).
    pub fn allocated(&self, size: u64) -> u64 {
        if self.is_block {
            return size;
        }
        // SAFETY: fstat fills the zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(self.file.as_raw_fd(), &mut st) } != 0 {
            return size;
        }
        (st.st_blocks as u64 * 512).min(size)
    }
}

/// A read's or write's result as all of its `len` bytes done or an error
/// (a read short of them: past the end of a file that shrank under us).
fn whole(r: io::Result<usize>, len: usize, write: bool) -> io::Result<()> {
    match r {
        Ok(n) if n == len => Ok(()),
        Ok(_) if write => Err(io::Error::new(io::ErrorKind::WriteZero, "short write")),
        Ok(_) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read")),
        Err(e) => Err(e),
    }
}

/// Zeroes written per command where a file system cannot zero a range.
const ZERO_CHUNK: usize = 1 << 20;
const ZERO_RANGE: libc::c_int = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
const PUNCH_HOLE: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

fn ioctl_range(fd: RawFd, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD/BLKZEROOUT read two u64s.
    if unsafe { libc::ioctl(fd, req, range.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
