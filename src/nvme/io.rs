//! NVM command set I/O commands (NVM Command Set 1.0 §3): Read, Write, Flush,
//! Write Zeroes, Dataset Management (deallocate), Compare.

use super::{Namespace, Response, Xfer};
use crate::wire::command::{io, Sqe};
use crate::wire::status::Status;
use glommio::io::DmaBuffer;
use std::rc::Rc;

/// DSM: at most 256 ranges of 16 bytes (§3.2.3).
pub const DSM_MAX_RANGES: usize = 256;
const DSM_RANGE_LEN: usize = 16;
/// DSM attribute: deallocate (CDW11 bit 2).
const DSM_AD: u32 = 1 << 2;

/// Phase one: find the namespace, check the LBA range and the transfer size.
pub fn prepare(sqe: &Sqe, ns: Option<&Rc<Namespace>>, max_io_size: u32) -> Result<Xfer, Status> {
    let op = sqe.opcode();
    if !matches!(
        op,
        io::FLUSH | io::WRITE | io::READ | io::COMPARE | io::WRITE_ZEROES | io::DATASET_MANAGEMENT
    ) {
        return Err(Status::INVALID_OPCODE);
    }
    let ns = ns.ok_or(Status::INVALID_NAMESPACE)?;
    match op {
        io::FLUSH => Ok(Xfer::None),
        io::DATASET_MANAGEMENT => {
            // Hosts may send more than the ranges in use: Linux always sends
            // the full 4 KiB range buffer (256 ranges) whatever NR says.
            let need = ((sqe.cdw(10) & 0xFF) as usize + 1) * DSM_RANGE_LEN;
            let sent = sqe.sgl().length as usize;
            if sent < need || sent > DSM_MAX_RANGES * DSM_RANGE_LEN {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            Ok(Xfer::FromHost(sent))
        }
        _ => {
            let blocks = sqe.nlb() as u64 + 1;
            check_range(ns, sqe.slba(), blocks)?;
            if op == io::WRITE_ZEROES {
                return Ok(Xfer::None);
            }
            let len = blocks << ns.block_shift;
            if len > max_io_size as u64 {
                return Err(Status::INVALID_FIELD);
            }
            let len = len as usize;
            Ok(if op == io::READ {
                Xfer::ToHost(len)
            } else {
                Xfer::FromHost(len)
            })
        }
    }
}

fn check_range(ns: &Namespace, slba: u64, blocks: u64) -> Result<(), Status> {
    match slba.checked_add(blocks) {
        Some(end) if end <= ns.blocks() => Ok(()),
        _ => Err(Status::LBA_OUT_OF_RANGE),
    }
}

/// The status of a failed backing I/O. A failed write, flush or zeroing
/// is never to be retried (DNR): the kernel reports a write-back error once
/// per file handle, so a retried Flush could succeed over data that was
/// lost, and a retried write would hide that its first attempt may have
/// landed in part (nvmet answers such errors with DNR too). A failed read
/// changes nothing and may be retried.
pub fn io_status(e: &std::io::Error, write: bool) -> Status {
    log::warn!("backing I/O error: {e}");
    let s = match e.raw_os_error() {
        Some(libc::ENOSPC) => Status::CAPACITY_EXCEEDED,
        Some(libc::EIO) if write => Status::WRITE_FAULT,
        Some(libc::EIO) => Status::UNRECOVERED_READ_ERROR,
        _ => Status::INTERNAL_ERROR,
    };
    if write {
        s.with_dnr()
    } else {
        s
    }
}

/// Phase two: run the command on this core's backend. With
/// `write_through` (the host turned the volatile write cache off) every
/// write is durable before it completes, as if it had FUA.
pub async fn execute(
    sqe: &Sqe,
    ns: &Namespace,
    data: Option<DmaBuffer>,
    write_through: bool,
) -> Response {
    let fua = sqe.fua() || write_through;
    let offset = sqe.slba() << ns.block_shift;
    let len = ((sqe.nlb() as u64) + 1) << ns.block_shift;
    match sqe.opcode() {
        io::READ => match ns.read(offset, len as usize).await {
            Ok(buf) => Response {
                data: Some(buf),
                ..Response::ok()
            },
            Err(e) => Response::status(io_status(&e, false)),
        },
        io::WRITE => {
            let Some(buf) = data else {
                return Response::status(Status::DATA_TRANSFER_ERROR);
            };
            match ns.write(offset, buf, fua).await {
                Ok(()) => Response::ok(),
                Err(e) => Response::status(io_status(&e, true)),
            }
        }
        io::FLUSH => match ns.backend.flush().await {
            Ok(()) => Response::ok(),
            Err(e) => Response::status(io_status(&e, true)),
        },
        // Rare commands with large futures are boxed: an inline await makes
        // every command's future as large as its largest branch (dsm 1,200
        // bytes, write_zeroes 1,016 against a read's 368), and each command
        // moves its future into a task or a box (with the fabrics, admin and
        // failure paths boxed too, a command's 1,928 bytes became 1,280:
        // zram 4 KiB reads and writes at QD32 +3-5%, perf/README.md).
        io::WRITE_ZEROES => match Box::pin(ns.write_zeroes(offset, len, sqe.deac())).await {
            Ok(()) => {
                if fua {
                    if let Err(e) = ns.backend.flush().await {
                        return Response::status(io_status(&e, true));
                    }
                }
                Response::ok()
            }
            Err(e) => Response::status(io_status(&e, true)),
        },
        io::DATASET_MANAGEMENT => Box::pin(dsm(sqe, ns, data, write_through)).await,
        io::COMPARE => {
            let Some(expect) = data else {
                return Response::status(Status::DATA_TRANSFER_ERROR);
            };
            let have = match ns.read(offset, len as usize).await {
                Ok(have) => have.owned(),
                Err(e) => return Response::status(io_status(&e, false)),
            };
            let n = len as usize;
            if have.bytes().map(|b| &b[..n]) == Some(&expect.as_bytes()[..n]) {
                Response::ok()
            } else {
                Response::status(Status::COMPARE_FAILURE)
            }
        }
        _ => Response::status(Status::INVALID_OPCODE),
    }
}

async fn dsm(sqe: &Sqe, ns: &Namespace, data: Option<DmaBuffer>, write_through: bool) -> Response {
    // Only deallocate does anything; the integral-read/write hints are advisory.
    if sqe.cdw(11) & DSM_AD == 0 {
        return Response::ok();
    }
    let Some(ranges) = data else {
        return Response::status(Status::DATA_TRANSFER_ERROR);
    };
    let nr = (sqe.cdw(10) & 0xFF) as usize + 1;
    let b = ranges.as_bytes();
    // Check every range before touching any.
    let mut todo = Vec::with_capacity(nr.min(DSM_MAX_RANGES));
    for r in b.chunks_exact(DSM_RANGE_LEN).take(nr) {
        let nlb = u32::from_le_bytes(r[4..8].try_into().unwrap()) as u64;
        let slba = u64::from_le_bytes(r[8..16].try_into().unwrap());
        if nlb == 0 {
            continue;
        }
        if let Err(s) = check_range(ns, slba, nlb) {
            return Response::status(s);
        }
        todo.push((slba << ns.block_shift, nlb << ns.block_shift));
    }
    for (off, len) in todo {
        if let Err(e) = ns.deallocate(off, len).await {
            return Response::status(io_status(&e, true));
        }
    }
    // Without a write cache, a deallocation is durable when it completes.
    if write_through {
        if let Err(e) = ns.backend.flush().await {
            return Response::status(io_status(&e, true));
        }
    }
    Response::ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Error;

    #[test]
    fn failed_writes_and_flushes_are_not_retried() {
        for errno in [libc::EIO, libc::ENOSPC, libc::EROFS, libc::EINVAL] {
            let e = Error::from_raw_os_error(errno);
            assert!(io_status(&e, true).dnr(), "errno {errno}");
        }
        let eio = Error::from_raw_os_error(libc::EIO);
        assert_eq!(io_status(&eio, false), Status::UNRECOVERED_READ_ERROR);
        assert!(!io_status(&eio, false).dnr());
    }
}
