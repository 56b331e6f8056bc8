//! NVM command set I/O on one I/O queue.

use super::queue::Queue;
use super::HostError;
use crate::wire::command::{io, Cqe, Sqe};
use byteorder::{ByteOrder, LittleEndian as LE};

/// Largest block count of one command (NLB is a 16-bit 0's based field).
pub const NLB_MAX: u32 = 1 << 16;
/// Largest number of ranges in one Dataset Management command.
pub const DSM_RANGES_MAX: usize = 256;
/// Dataset Management CDW11 bit 2: deallocate.
const DSM_AD: u32 = 1 << 2;
/// CDW12 bit 30: force unit access.
const FUA: u32 = 1 << 30;

/// An I/O queue: NVM read, write, flush, write zeroes, deallocate and compare.
/// Cheap to clone; any number of tasks may use it at once.
#[derive(Clone, Debug)]
pub struct IoQueue {
    /// The queue, for commands not wrapped here.
    pub queue: Queue,
    /// The controller's maximum data transfer size (informational: not
    /// enforced here, so that tests can send larger commands).
    pub mdts_bytes: Option<u32>,
}

/// Block count → NLB (0's based), checking 1..=65536.
fn nlb0(blocks: u32) -> Result<u32, HostError> {
    if blocks == 0 || blocks > NLB_MAX {
        return Err(HostError::Invalid(format!(
            "{blocks} blocks (1..={NLB_MAX} per command)"
        )));
    }
    Ok(blocks - 1)
}

/// Block count of `len` bytes of `block_size`-byte blocks.
fn blocks_of(len: usize, block_size: u32) -> Result<u32, HostError> {
    if block_size == 0 || len == 0 || !len.is_multiple_of(block_size as usize) {
        return Err(HostError::Invalid(format!(
            "{len} bytes is not a whole number of {block_size}-byte blocks"
        )));
    }
    u32::try_from(len / block_size as usize)
        .map_err(|_| HostError::Invalid(format!("{len} bytes: too many blocks")))
}

fn rw_sqe(opcode: u8, nsid: u32, slba: u64, nlb0: u32) -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(opcode)
        .set_nsid(nsid)
        .set_cdw(10, slba as u32)
        .set_cdw(11, (slba >> 32) as u32)
        .set_cdw(12, nlb0);
    sqe
}

impl IoQueue {
    /// Wraps a connected I/O queue.
    pub fn new(queue: Queue, mdts_bytes: Option<u32>) -> IoQueue {
        IoQueue { queue, mdts_bytes }
    }

    /// Reads `blocks` blocks of `block_size` bytes from `slba`.
    pub async fn read(
        &self,
        nsid: u32,
        slba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<Vec<u8>, HostError> {
        let sqe = rw_sqe(io::READ, nsid, slba, nlb0(blocks)?);
        let len = blocks as usize * block_size as usize;
        if len == 0 {
            return Err(HostError::Invalid("block size 0".into()));
        }
        Ok(self.queue.submit(sqe, None, len).await?.data)
    }

    /// Reads `buf.len()` bytes (whole blocks) from `slba` into `buf`, which
    /// is returned filled (no allocation when it is reused).
    pub async fn read_into(
        &self,
        nsid: u32,
        slba: u64,
        buf: Vec<u8>,
        block_size: u32,
    ) -> Result<Vec<u8>, HostError> {
        let sqe = rw_sqe(
            io::READ,
            nsid,
            slba,
            nlb0(blocks_of(buf.len(), block_size)?)?,
        );
        Ok(self.queue.submit_into(sqe, buf).await?.data)
    }

    /// Writes `data` (whole blocks) at `slba`, with Force Unit Access when `fua`.
    pub async fn write(
        &self,
        nsid: u32,
        slba: u64,
        data: &[u8],
        block_size: u32,
        fua: bool,
    ) -> Result<Cqe, HostError> {
        let mut sqe = rw_sqe(
            io::WRITE,
            nsid,
            slba,
            nlb0(blocks_of(data.len(), block_size)?)?,
        );
        if fua {
            sqe.set_cdw(12, sqe.cdw(12) | FUA);
        }
        Ok(self.queue.submit(sqe, Some(data), 0).await?.cqe)
    }

    /// Flush (`nsid` 0xFFFFFFFF: every namespace).
    pub async fn flush(&self, nsid: u32) -> Result<Cqe, HostError> {
        let mut sqe = Sqe::default();
        sqe.set_opcode(io::FLUSH).set_nsid(nsid);
        Ok(self.queue.submit(sqe, None, 0).await?.cqe)
    }

    /// Write Zeroes over `blocks` blocks from `slba`.
    pub async fn write_zeroes(&self, nsid: u32, slba: u64, blocks: u32) -> Result<Cqe, HostError> {
        let sqe = rw_sqe(io::WRITE_ZEROES, nsid, slba, nlb0(blocks)?);
        Ok(self.queue.submit(sqe, None, 0).await?.cqe)
    }

    /// Write Zeroes with DEAC set: the target may release the blocks.
    pub async fn write_zeroes_deallocate(
        &self,
        nsid: u32,
        slba: u64,
        blocks: u32,
    ) -> Result<Cqe, HostError> {
        let sqe = rw_sqe(io::WRITE_ZEROES, nsid, slba, nlb0(blocks)? | (1 << 25));
        Ok(self.queue.submit(sqe, None, 0).await?.cqe)
    }

    /// Dataset Management with the deallocate attribute over `ranges` of
    /// (starting LBA, block count); 1 to 256 ranges.
    pub async fn deallocate(&self, nsid: u32, ranges: &[(u64, u32)]) -> Result<Cqe, HostError> {
        if ranges.is_empty() || ranges.len() > DSM_RANGES_MAX {
            return Err(HostError::Invalid(format!(
                "{} ranges (1..={DSM_RANGES_MAX})",
                ranges.len()
            )));
        }
        // Each range: context attributes u32, length in blocks u32 (not 0's
        // based), starting LBA u64.
        let mut data = vec![0u8; ranges.len() * 16];
        for (d, &(slba, nlb)) in data.chunks_exact_mut(16).zip(ranges) {
            LE::write_u32(&mut d[4..8], nlb);
            LE::write_u64(&mut d[8..16], slba);
        }
        let mut sqe = Sqe::default();
        sqe.set_opcode(io::DATASET_MANAGEMENT)
            .set_nsid(nsid)
            .set_cdw(10, ranges.len() as u32 - 1)
            .set_cdw(11, DSM_AD);
        Ok(self.queue.submit(sqe, Some(&data), 0).await?.cqe)
    }

    /// Compare `data` (whole blocks) with the blocks at `slba`; a mismatch is
    /// `Err(HostError::Status(Status::COMPARE_FAILURE, _))`.
    pub async fn compare(
        &self,
        nsid: u32,
        slba: u64,
        data: &[u8],
        block_size: u32,
    ) -> Result<Cqe, HostError> {
        let sqe = rw_sqe(
            io::COMPARE,
            nsid,
            slba,
            nlb0(blocks_of(data.len(), block_size)?)?,
        );
        Ok(self.queue.submit(sqe, Some(data), 0).await?.cqe)
    }
}
