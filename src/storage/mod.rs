//! Namespace backings. Each executor holds its own `Backend` per namespace:
//! its own O_DIRECT file handle on its own io_uring, or a reference to the
//! RAM disk that all cores share.

pub mod budget;
pub mod file;
pub mod ram;

use glommio::io::{DmaBuffer, ReadResult};
use std::io;
use std::rc::Rc;
use std::sync::Arc;

pub use budget::{Charge, DmaBudget};
pub use file::FileBackend;
pub use ram::RamDisk;

/// Data on its way to the host: a DMA buffer, what glommio read, or a small
/// heap buffer built by an admin command.
pub enum DataBuf {
    Dma(DmaBuffer),
    Read(ReadResult),
    Vec(Vec<u8>),
    /// The first `len` bytes of a shared buffer (the null backing's zeroes).
    Shared(Rc<DmaBuffer>, usize),
}

impl DataBuf {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            DataBuf::Dma(b) => b.as_bytes(),
            DataBuf::Read(r) => r,
            DataBuf::Vec(v) => v,
            DataBuf::Shared(b, len) => &b.as_bytes()[..*len],
        }
    }
}

/// Allocate a DMA buffer from this executor's registered memory.
pub fn dma_buffer(len: usize) -> DmaBuffer {
    glommio::allocate_dma_buffer(len.max(1))
}

pub enum Backend {
    File(Rc<FileBackend>),
    Ram(Arc<RamDisk>),
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
            Backend::File(f) => f.read(offset, len).await.map(DataBuf::Read),
            Backend::Ram(r) => {
                let mut b = dma_buffer(len);
                r.read(offset, &mut b.as_bytes_mut()[..len]);
                Ok(DataBuf::Dma(b))
            }
            Backend::Null(z) if len <= z.len() => Ok(DataBuf::Shared(z.clone(), len)),
            Backend::Null(_) => {
                let mut b = dma_buffer(len);
                b.as_bytes_mut().fill(0);
                Ok(DataBuf::Dma(b))
            }
        }
    }

    /// Write all of `buf` at byte `offset`; with `fua` it is durable on return.
    pub async fn write(&self, offset: u64, buf: DmaBuffer, fua: bool) -> io::Result<()> {
        match self {
            Backend::File(f) => f.write(offset, buf, fua).await,
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

    /// Make the range read as zeroes.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            Backend::File(f) => f.write_zeroes(offset, len).await,
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

    /// Commands on this backing complete without waiting for anything.
    pub fn is_synchronous(&self) -> bool {
        matches!(self, Backend::Ram(_) | Backend::Null(_))
    }

    pub fn thin(&self) -> bool {
        !matches!(self, Backend::Null(_))
    }
}
