//! Namespace backings. Each executor holds its own `Backend` per namespace:
//! its own O_DIRECT file handle on its own io_uring (Linux AIO for block
//! devices that cannot take I/O without blocking), or a reference to the
//! RAM disk that all cores share.

pub mod aio;
pub mod block_lock;
pub mod budget;
pub mod claim;
pub mod file;
pub mod in_call;
pub mod ram;
pub mod route;
pub mod threaded;
pub mod uring;

use glommio::io::DmaBuffer;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

pub use budget::{Charge, DmaBudget};

pub use file::FileBackend;
pub use ram::RamDisk;

use block_lock::BlockHold;

/// Data on its way to the host: a DMA buffer (what a file read), a small
/// heap buffer built by an admin command, or a range of a RAM disk.
pub enum DataBuf {
    Dma(DmaBuffer),
    Vec(Vec<u8>),
    /// The first `len` bytes of a shared buffer (the null backing's zeroes).
    Shared(Rc<DmaBuffer>, usize),
    /// `len` bytes at `offset` of a RAM disk, sent from the disk itself: the
    /// kernel copies them into the socket, with no copy of ours before.
    /// Its blocks are held (shared) until this is dropped, after the send:
    /// no write changes them meanwhile, so each goes out as it was at one
    /// moment (`block_lock`).
    Ram(Rc<Arc<RamDisk>>, u64, usize, RamHold),
}

/// The blocks a RAM range keeps held until it is sent, and the copy that
/// stands in for the range once its send has to wait for room in the
/// socket: a host that stops reading must not keep other hosts' writes to
/// those blocks waiting (`DataBuf::release_hold`).
#[derive(Default)]
pub struct RamHold {
    hold: std::cell::RefCell<Option<BlockHold>>,
    copy: std::cell::OnceCell<Box<[u8]>>,
}

impl RamHold {
    pub fn new(hold: Option<BlockHold>) -> RamHold {
        RamHold {
            hold: std::cell::RefCell::new(hold),
            copy: std::cell::OnceCell::new(),
        }
    }

    pub fn is_held(&self) -> bool {
        self.hold.borrow().is_some()
    }
}

impl DataBuf {
    pub fn len(&self) -> usize {
        match self {
            DataBuf::Dma(b) => b.len(),
            DataBuf::Vec(v) => v.len(),
            DataBuf::Shared(_, len) | DataBuf::Ram(_, _, len, _) => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, for code that reads them here. `None` for a RAM disk
    /// range, which other cores may be writing: call `owned` first.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            DataBuf::Dma(b) => Some(b.as_bytes()),
            DataBuf::Vec(v) => Some(v),
            DataBuf::Shared(b, len) => Some(&b.as_bytes()[..*len]),
            DataBuf::Ram(_, _, _, h) => h.copy.get().map(|c| &c[..]),
        }
    }

    /// Let go of the blocks a RAM range holds, keeping a copy of them taken
    /// while still held (called when its send must wait for the socket).
    pub fn release_hold(&self) {
        if let DataBuf::Ram(disk, offset, len, h) = self {
            if h.is_held() && h.copy.get().is_none() {
                let mut copy = vec![0u8; *len].into_boxed_slice();
                disk.read(*offset, &mut copy);
                let _ = h.copy.set(copy);
            }
            h.hold.borrow_mut().take();
        }
    }

    /// The same data in memory of this command's own: a RAM disk range is
    /// copied (for a digest or a comparison over stable bytes).
    pub fn owned(self) -> DataBuf {
        match self {
            DataBuf::Ram(disk, offset, len, h) => {
                let mut b = dma_buffer(len);
                if let Some(c) = h.copy.get() {
                    b.as_bytes_mut()[..len].copy_from_slice(c);
                    return DataBuf::Dma(b);
                }
                disk.read(offset, &mut b.as_bytes_mut()[..len]);
                DataBuf::Dma(b)
            }
            other => other,
        }
    }

    /// CRC32C data digest of bytes `range`. Connections with data digests
    /// send owned copies (see `owned`), so the RAM case here is a fallback.
    pub fn digest(&self, range: std::ops::Range<usize>) -> u32 {
        match self {
            DataBuf::Ram(disk, offset, _, h) if h.copy.get().is_none() => {
                let mut copy = vec![0u8; range.len()];
                disk.read(offset + range.start as u64, &mut copy);
                crate::wire::pdu::digest(&copy)
            }
            other => crate::wire::pdu::digest(&other.bytes().unwrap_or(&[])[range]),
        }
    }

    /// Bytes `range` as a piece of a socket send.
    pub fn part(&self, range: std::ops::Range<usize>) -> SendPart<'_> {
        match self {
            DataBuf::Ram(disk, offset, _, h) if h.copy.get().is_none() => {
                SendPart::Ram(disk, offset + range.start as u64, range.len())
            }
            other => SendPart::Bytes(&other.bytes().unwrap_or(&[])[range]),
        }
    }
}

/// A piece of a vectored socket send.
pub enum SendPart<'a> {
    Bytes(&'a [u8]),
    /// A RAM disk range: its address goes to the kernel, which copies it;
    /// no Rust reference to it is made, since other cores write it through
    /// atomics meanwhile.
    Ram(&'a RamDisk, u64, usize),
}

impl SendPart<'_> {
    pub fn len(&self) -> usize {
        match self {
            SendPart::Bytes(b) => b.len(),
            SendPart::Ram(_, _, len) => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Warm the cache for the kernel's copy of bytes `from..` (see
    /// `RamDisk::prefetch_head`); called for a whole iovec list before the
    /// send, so that the misses overlap.
    pub fn prefetch(&self, from: usize) {
        if let SendPart::Ram(disk, offset, len) = self {
            disk.prefetch_head(*offset + from as u64, len - from);
        }
    }

    /// Address and length of bytes `from..` for an iovec.
    pub fn iov(&self, from: usize) -> (*const u8, usize) {
        match self {
            SendPart::Bytes(b) => (b[from..].as_ptr(), b.len() - from),
            SendPart::Ram(disk, offset, len) => {
                (disk.address(*offset + from as u64, len - from), len - from)
            }
        }
    }
}

/// Allocate a DMA buffer from this executor's registered memory.
pub fn dma_buffer(len: usize) -> DmaBuffer {
    glommio::allocate_dma_buffer(len.max(1))
}

pub enum Backend {
    File(Rc<FileBackend>),
    /// This core's handle to a RAM disk all cores share (an `Rc`, so that
    /// reads lent to the socket do not bounce a shared count between cores).
    Ram(Rc<Arc<RamDisk>>),
    /// Reads are served from one zeroed buffer of the largest transfer size.
    Null(Rc<DmaBuffer>),
}

/// A zeroed DMA buffer that null namespaces of one core share for reads.
pub fn zero_buffer(len: usize) -> Rc<DmaBuffer> {
    let mut b = dma_buffer(len);
    b.as_bytes_mut().fill(0);
    Rc::new(b)
}

impl Backend {
    /// Read `len` bytes at byte `offset` (both block aligned).
    pub async fn read(&self, offset: u64, len: usize) -> io::Result<DataBuf> {
        match self {
            Backend::File(f) => f.read(offset, len).await.map(DataBuf::Dma),
            Backend::Ram(r) => Ok(DataBuf::Ram(r.clone(), offset, len, RamHold::default())),
            Backend::Null(z) if len <= z.len() => Ok(DataBuf::Shared(z.clone(), len)),
            Backend::Null(_) => {
                let mut b = dma_buffer(len);
                b.as_bytes_mut().fill(0);
                Ok(DataBuf::Dma(b))
            }
        }
    }

    /// Write all of `buf` at byte `offset` (durable after `flush`).
    pub async fn write(&self, offset: u64, buf: DmaBuffer) -> io::Result<()> {
        match self {
            Backend::File(f) => f.write(offset, buf).await,
            Backend::Ram(r) => {
                r.write(offset, buf.as_bytes());
                Ok(())
            }
            Backend::Null(_) => Ok(()),
        }
    }

    pub async fn flush(&self) -> io::Result<()> {
        match self {
            Backend::File(f) => f.flush().await,
            _ => Ok(()),
        }
    }

    /// Make the range read as zeroes; `deallocate` lets the backing
    /// release it (the host set DEAC).
    pub async fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool) -> io::Result<()> {
        match self {
            Backend::File(f) => f.write_zeroes(offset, len, deallocate).await,
            Backend::Ram(r) => {
                r.zero(offset, len);
                Ok(())
            }
            Backend::Null(_) => Ok(()),
        }
    }

    /// Release the range (Dataset Management, deallocate). Reads of it return
    /// zeroes afterwards where `dealloc_reads_zero` says so.
    pub async fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            Backend::File(f) => f.deallocate(offset, len).await,
            Backend::Ram(r) => {
                r.zero(offset, len);
                Ok(())
            }
            Backend::Null(_) => Ok(()),
        }
    }

    pub fn dealloc_reads_zero(&self) -> bool {
        match self {
            Backend::File(f) => !f.is_block,
            _ => true,
        }
    }

    /// Does a read of `len` bytes take a new data buffer (charged to the
    /// core's DMA memory)? Files: yes. RAM disks lend their own memory;
    /// null reads share one zeroed buffer up to its size.
    pub fn reads_into_buffer(&self, len: usize) -> bool {
        match self {
            Backend::File(_) => true,
            Backend::Ram(_) => false,
            Backend::Null(z) => len > z.len(),
        }
    }

    /// Commands on this backing complete without waiting for anything, so
    /// they run where they are parsed: RAM and null always; a device
    /// while it completes reads in the submitting call (`in_call`), whose
    /// command that still has to wait (a gathered write, a FUA flush) goes
    /// on in a task of its own.
    pub fn is_synchronous(&self) -> bool {
        match self {
            Backend::Ram(_) | Backend::Null(_) => true,
            Backend::File(f) => f.completes_in_call(),
        }
    }

    /// Bytes of `size` the backing really holds (NUSE).
    pub fn allocated(&self, size: u64) -> u64 {
        match self {
            Backend::File(f) => f.allocated(size),
            _ => size,
        }
    }

    pub fn thin(&self) -> bool {
        !matches!(self, Backend::Null(_))
    }
}
