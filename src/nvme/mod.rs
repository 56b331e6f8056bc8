//! The transport-independent target: controllers, admin, fabrics, discovery
//! and NVM I/O commands. Dispatch is two-phase, as in Linux nvmet: `prepare`
//! checks a command and says what data it moves (so a doomed write never gets
//! an R2T), then `execute` runs it.

pub mod admin;
pub mod controller;
pub mod discovery;
pub mod fabrics;
pub mod io;
pub mod io_ctrl;
pub mod io_start;
pub mod queue;
pub mod registry;

use crate::config::NamespaceConfig;
use crate::storage::block_lock::{self, BlockHold, BlockLocks, LocksHandle};
use crate::storage::{Backend, DataBuf, RamHold};
use crate::wire::command::Sqe;
use crate::wire::identify::NamespaceInfo;
use crate::wire::status::Status;
use glommio::io::DmaBuffer;
use std::rc::Rc;
use std::sync::Arc;

/// PSDT values that describe data by SGL (01b: SGLs, contiguous metadata;
/// 10b: SGLs, metadata by SGL too). NVMe over Fabrics carries data only by
/// SGL (NVMe-oF 1.1 §2.1); PRPs (00b) and 11b (reserved) are refused.
const PSDT_SGL: [u8; 2] = [0b01, 0b10];

/// Checks every command passes before its command set sees it, as nvmet's
/// request init does: no fused operations (Identify Controller FUSES is 0,
/// so a fused pair would run as two independent commands, NVMe Base 2.0
/// §3.4.2), and data described by SGL.
pub fn check_common(sqe: &Sqe) -> Result<(), Status> {
    if sqe.fuse() != 0 || !PSDT_SGL.contains(&sqe.psdt()) {
        return Err(Status::INVALID_FIELD);
    }
    Ok(())
}

/// Data a command moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xfer {
    None,
    /// Controller to host (reads, Identify, logs).
    ToHost(usize),
    /// Host to controller (writes, Connect data, DSM ranges).
    FromHost(usize),
}

/// The result of executing a command.
pub struct Response {
    pub status: Status,
    pub dw0: u32,
    pub dw1: u32,
    pub data: Option<DataBuf>,
    /// Close the queue once this completion is sent (Disconnect).
    pub close_after: bool,
}

impl Response {
    pub fn status(status: Status) -> Response {
        Response {
            status,
            dw0: 0,
            dw1: 0,
            data: None,
            close_after: false,
        }
    }
    pub fn ok() -> Response {
        Response::status(Status::SUCCESS)
    }
    pub fn dw0(dw0: u32) -> Response {
        Response {
            dw0,
            ..Response::ok()
        }
    }
    pub fn with_dw1(self, dw1: u32) -> Response {
        Response { dw1, ..self }
    }
    pub fn data(v: Vec<u8>) -> Response {
        Response {
            data: Some(DataBuf::Vec(v)),
            ..Response::ok()
        }
    }
}

/// What executing a command produced.
pub enum Outcome {
    Done(Response),
    /// Completes later or never (Asynchronous Event Request).
    Deferred,
}

impl From<Response> for Outcome {
    fn from(r: Response) -> Outcome {
        Outcome::Done(r)
    }
}

impl From<Status> for Outcome {
    fn from(s: Status) -> Outcome {
        Outcome::Done(Response::status(s))
    }
}

/// Blocks a Write Zeroes or Deallocate locks at a time: each block is
/// still zeroed whole, and reads and writes of other blocks go on between
/// the pieces of a large range.
const ZERO_CHUNK_BLOCKS: u64 = 1024;

/// A namespace as one core sees it: its config, this core's backend handle,
/// and the lock table every core shares for it (`block_lock`).
pub struct Namespace {
    pub cfg: NamespaceConfig,
    pub backend: Backend,
    pub block_shift: u32,
    locks: LocksHandle,
}

impl Namespace {
    pub fn new(cfg: NamespaceConfig, backend: Backend, locks: Arc<BlockLocks>) -> Namespace {
        let block_shift = cfg.block_size.trailing_zeros();
        Namespace {
            cfg,
            backend,
            block_shift,
            locks: Rc::new(locks),
        }
    }

    /// Hold the blocks of bytes `offset..offset + len` for the command's
    /// access to the backing (none for null namespaces: no data to tear).
    async fn hold(&self, offset: u64, len: u64, exclusive: bool) -> Option<BlockHold> {
        if matches!(self.backend, Backend::Null(_)) || len == 0 {
            return None;
        }
        let first = offset >> self.block_shift;
        let last = (offset + len - 1) >> self.block_shift;
        Some(block_lock::hold(&self.locks, first, last - first + 1, exclusive).await)
    }

    /// The blocks of a read or write of bytes `offset..offset + len`, held
    /// from now, where it can start without a task (`io_start`): this
    /// namespace's file or block device takes it that way next, it hits no
    /// configured bad block, and its blocks are free now.
    fn hold_to_start(&self, write: bool, offset: u64, len: u64) -> Option<BlockHold> {
        let Backend::File(f) = &self.backend else {
            return None;
        };
        if len == 0 || !f.can_start(write) || self.cfg.hits_bad_block(offset, len) {
            return None;
        }
        let first = offset >> self.block_shift;
        let last = (offset + len - 1) >> self.block_shift;
        block_lock::try_hold(&self.locks, first, last - first + 1, write)
    }

    pub fn blocks(&self) -> u64 {
        self.cfg.blocks()
    }

    /// A configured bad block fails the I/O as the medium would, with EIO.
    fn check_bad_blocks(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if self.cfg.hits_bad_block(offset, len) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// Read `len` bytes at byte `offset` from this core's backend: each
    /// block as it was at one moment. A RAM range is sent from the disk
    /// itself, so it keeps its blocks held until it is sent.
    pub async fn read(&self, offset: u64, len: usize) -> std::io::Result<DataBuf> {
        self.check_bad_blocks(offset, len as u64)?;
        let held = self.hold(offset, len as u64, false).await;
        Ok(match self.backend.read(offset, len).await? {
            DataBuf::Ram(disk, at, n, _) => DataBuf::Ram(disk, at, n, RamHold::new(held)),
            data => data,
        })
    }

    /// Make the range read as zeroes (`deallocate`: it may be released),
    /// each block whole.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        deallocate: bool,
    ) -> std::io::Result<()> {
        self.in_chunks(offset, len, |o, l| {
            self.backend.write_zeroes(o, l, deallocate)
        })
        .await
    }

    /// Release the range (Dataset Management, deallocate), each block whole.
    pub async fn deallocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.in_chunks(offset, len, |o, l| self.backend.deallocate(o, l))
            .await
    }

    async fn in_chunks<'a, F, Fut>(&'a self, offset: u64, len: u64, op: F) -> std::io::Result<()>
    where
        F: Fn(u64, u64) -> Fut,
        Fut: std::future::Future<Output = std::io::Result<()>> + 'a,
    {
        let chunk = ZERO_CHUNK_BLOCKS << self.block_shift;
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let n = (end - at).min(chunk);
            let _held = self.hold(at, n, true).await;
            op(at, n).await?;
            at += n;
        }
        Ok(())
    }

    /// Write `buf` at byte `offset`, each block whole; with `fua` it is
    /// durable on return (the flush runs after the blocks are let go).
    pub async fn write(&self, offset: u64, buf: DmaBuffer, fua: bool) -> std::io::Result<()> {
        self.check_bad_blocks(offset, buf.len() as u64)?;
        {
            let _held = self.hold(offset, buf.len() as u64, true).await;
            self.backend.write(offset, buf).await?;
        }
        if fua {
            self.backend.flush().await?;
        }
        Ok(())
    }

    pub fn info(&self) -> NamespaceInfo {
        NamespaceInfo {
            blocks: self.blocks(),
            used: self.backend.allocated(self.cfg.size_bytes) >> self.block_shift,
            lbads: self.block_shift as u8,
            nguid: self.cfg.nguid,
            eui64: self.cfg.eui64,
            uuid: self.cfg.uuid,
            dealloc_reads_zero: self.backend.dealloc_reads_zero(),
            thin: self.backend.thin(),
        }
    }
}
