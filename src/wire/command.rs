//! Submission and completion queue entries, opcodes and SGL descriptors
//! (NVMe Base 2.0 §4.2, §4.6, §4.3.2; NVMe over Fabrics 1.1 §2, §3).

use byteorder::{ByteOrder, LittleEndian as LE};

pub const SQE_LEN: usize = 64;
pub const CQE_LEN: usize = 16;

/// Admin command opcodes.
pub mod admin {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const FABRICS: u8 = 0x7F;
}

/// NVM command set opcodes.
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Fabrics command types (FCTYPE, SQE byte 4).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const DISCONNECT: u8 = 0x08;
}

/// SGL descriptor identifiers (type << 4 | subtype) used over TCP.
pub mod sgl {
    /// Data Block, Offset: the data is in the capsule, at `addr` from its start.
    pub const DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Transport Data Block: moved by R2T/H2CData or C2HData.
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5A;
}

/// A submission queue entry, kept as its wire bytes; accessors decode fields.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u8; SQE_LEN]);

impl std::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sqe(opc {:#04x} cid {} nsid {} cdw10 {:#x})",
            self.opcode(),
            self.cid(),
            self.nsid(),
            self.cdw(10)
        )
    }
}

impl Default for Sqe {
    fn default() -> Self {
        Sqe([0; SQE_LEN])
    }
}

impl Sqe {
    pub fn from_slice(b: &[u8]) -> Sqe {
        let mut s = [0u8; SQE_LEN];
        s.copy_from_slice(&b[..SQE_LEN]);
        Sqe(s)
    }
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    /// Byte 1: fused operation bits 1:0, PSDT bits 7:6.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    /// Fused operation (CDW0 bits 9:8): 0 for a normal command.
    pub fn fuse(&self) -> u8 {
        self.0[1] & 0x3
    }
    /// PRP or SGL for Data Transfer (CDW0 bits 15:14).
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }
    pub fn cid(&self) -> u16 {
        LE::read_u16(&self.0[2..4])
    }
    pub fn nsid(&self) -> u32 {
        LE::read_u32(&self.0[4..8])
    }
    /// Fabrics command type (opcode 0x7F), which overlays NSID byte 0.
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
    /// Command dword `n` (0..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        LE::read_u32(&self.0[n * 4..n * 4 + 4])
    }
    pub fn sgl(&self) -> SglDescriptor {
        SglDescriptor::decode(&self.0[24..40])
    }

    pub fn set_opcode(&mut self, v: u8) -> &mut Self {
        self.0[0] = v;
        self
    }
    pub fn set_flags(&mut self, v: u8) -> &mut Self {
        self.0[1] = v;
        self
    }
    pub fn set_cid(&mut self, v: u16) -> &mut Self {
        LE::write_u16(&mut self.0[2..4], v);
        self
    }
    pub fn set_nsid(&mut self, v: u32) -> &mut Self {
        LE::write_u32(&mut self.0[4..8], v);
        self
    }
    pub fn set_fctype(&mut self, v: u8) -> &mut Self {
        self.0[4] = v;
        self
    }
    pub fn set_cdw(&mut self, n: usize, v: u32) -> &mut Self {
        LE::write_u32(&mut self.0[n * 4..n * 4 + 4], v);
        self
    }
    pub fn set_sgl(&mut self, d: SglDescriptor) -> &mut Self {
        d.encode(&mut self.0[24..40]);
        self
    }
    /// Starting LBA of an NVM command (CDW10/11).
    pub fn slba(&self) -> u64 {
        LE::read_u64(&self.0[40..48])
    }
    /// Number of logical blocks, 0's based (CDW12 bits 15:0).
    pub fn nlb(&self) -> u16 {
        self.cdw(12) as u16
    }
    /// Deallocate (Write Zeroes CDW12 bit 25): the range may be released.
    pub fn deac(&self) -> bool {
        self.cdw(12) & (1 << 25) != 0
    }
    /// Force Unit Access (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw(12) & (1 << 30) != 0
    }
}

/// An SGL descriptor (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SglDescriptor {
    pub addr: u64,
    pub length: u32,
    /// Type in bits 7:4, subtype in bits 3:0.
    pub id: u8,
}

impl SglDescriptor {
    pub fn decode(b: &[u8]) -> SglDescriptor {
        SglDescriptor {
            addr: LE::read_u64(&b[0..8]),
            length: LE::read_u32(&b[8..12]),
            id: b[15],
        }
    }
    pub fn encode(&self, b: &mut [u8]) {
        LE::write_u64(&mut b[0..8], self.addr);
        LE::write_u32(&mut b[8..12], self.length);
        b[12..15].fill(0);
        b[15] = self.id;
    }
}

/// A completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: super::status::Status,
}

impl Cqe {
    pub fn encode(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        LE::write_u32(&mut b[0..4], self.dw0);
        LE::write_u32(&mut b[4..8], self.dw1);
        LE::write_u16(&mut b[8..10], self.sqhd);
        LE::write_u16(&mut b[10..12], self.sqid);
        LE::write_u16(&mut b[12..14], self.cid);
        LE::write_u16(&mut b[14..16], self.status.to_cqe_word());
        b
    }
    pub fn decode(b: &[u8]) -> Cqe {
        Cqe {
            dw0: LE::read_u32(&b[0..4]),
            dw1: LE::read_u32(&b[4..8]),
            sqhd: LE::read_u16(&b[8..10]),
            sqid: LE::read_u16(&b[10..12]),
            cid: LE::read_u16(&b[12..14]),
            status: super::status::Status::from_cqe_word(LE::read_u16(&b[14..16])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::status::Status;

    #[test]
    fn sqe_fields() {
        let mut s = Sqe::default();
        s.set_opcode(io::WRITE)
            .set_cid(0xBEEF)
            .set_nsid(1)
            .set_cdw(10, 0x1234_5678)
            .set_cdw(11, 0x9)
            .set_cdw(12, (1 << 30) | 7)
            .set_sgl(SglDescriptor {
                addr: 0,
                length: 4096,
                id: sgl::TRANSPORT_DATA_BLOCK,
            });
        assert_eq!(s.opcode(), 1);
        assert_eq!(s.cid(), 0xBEEF);
        assert_eq!(s.slba(), 0x9_1234_5678);
        assert_eq!(s.nlb(), 7);
        assert!(s.fua());
        assert_eq!(s.sgl().length, 4096);
        assert_eq!(s.sgl().id, 0x5A);
        assert_eq!(s.0[39], 0x5A);
    }

    #[test]
    fn cqe_round_trip() {
        let c = Cqe {
            dw0: 5,
            dw1: 6,
            sqhd: 7,
            sqid: 1,
            cid: 99,
            status: Status::LBA_OUT_OF_RANGE,
        };
        assert_eq!(Cqe::decode(&c.encode()), c);
    }
}
