//! NVMe completion status values (NVMe Base 2.0, §4.6.1.2; Fabrics 1.1, §4.3).
//!
//! A status is kept as the 15-bit Status Field (SF) of the CQE: DNR bit 14,
//! More bit 13, SCT bits 10:8, SC bits 7:0. The phase bit is added on encode.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u16);

const DNR: u16 = 1 << 14;

const fn sf(sct: u16, sc: u16, dnr: bool) -> Status {
    Status((sct << 8) | sc | if dnr { DNR } else { 0 })
}

impl Status {
    pub const SUCCESS: Status = Status(0);
    // Generic command status (SCT 0).
    pub const INVALID_OPCODE: Status = sf(0, 0x01, true);
    pub const INVALID_FIELD: Status = sf(0, 0x02, true);
    pub const CID_CONFLICT: Status = sf(0, 0x03, true);
    pub const DATA_TRANSFER_ERROR: Status = sf(0, 0x04, false);
    pub const INTERNAL_ERROR: Status = sf(0, 0x06, false);
    pub const ABORT_REQUESTED: Status = sf(0, 0x07, false);
    pub const SQ_DELETED: Status = sf(0, 0x08, false);
    pub const INVALID_NAMESPACE: Status = sf(0, 0x0B, true);
    pub const COMMAND_SEQUENCE_ERROR: Status = sf(0, 0x0C, true);
    pub const DATA_SGL_LENGTH_INVALID: Status = sf(0, 0x0F, true);
    pub const SGL_TYPE_INVALID: Status = sf(0, 0x11, true);
    pub const SGL_OFFSET_INVALID: Status = sf(0, 0x16, true);
    pub const LBA_OUT_OF_RANGE: Status = sf(0, 0x80, true);
    pub const CAPACITY_EXCEEDED: Status = sf(0, 0x81, true);
    pub const NAMESPACE_NOT_READY: Status = sf(0, 0x82, false);
    /// A transport error the host may retry: a data digest mismatch
    /// (the command fails and the connection lives, as in SPDK's target).
    pub const TRANSIENT_TRANSPORT_ERROR: Status = sf(0, 0x22, false);
    // Command specific status (SCT 1).
    pub const INVALID_QUEUE_ID: Status = sf(1, 0x01, true);
    pub const INVALID_QUEUE_SIZE: Status = sf(1, 0x02, true);
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: Status = sf(1, 0x05, true);
    pub const INVALID_LOG_PAGE: Status = sf(1, 0x09, true);
    pub const FEATURE_NOT_SAVEABLE: Status = sf(1, 0x0D, true);
    pub const FEATURE_NOT_CHANGEABLE: Status = sf(1, 0x0E, true);
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = sf(1, 0x80, true);
    pub const CONNECT_CONTROLLER_BUSY: Status = sf(1, 0x81, true);
    pub const CONNECT_INVALID_PARAMETERS: Status = sf(1, 0x82, true);
    pub const CONNECT_INVALID_HOST: Status = sf(1, 0x84, true);
    // Media and data integrity errors (SCT 2).
    pub const WRITE_FAULT: Status = sf(2, 0x80, false);
    pub const UNRECOVERED_READ_ERROR: Status = sf(2, 0x81, false);
    pub const COMPARE_FAILURE: Status = sf(2, 0x85, true);

    /// The same status with Do Not Retry set.
    pub const fn with_dnr(self) -> Status {
        Status(self.0 | DNR)
    }
    pub fn is_success(self) -> bool {
        self.0 & 0x7FF == 0
    }
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }
    pub fn sc(self) -> u8 {
        self.0 as u8
    }
    pub fn dnr(self) -> bool {
        self.0 & DNR != 0
    }
    /// From the CQE's 16-bit status word (phase tag in bit 0).
    pub fn from_cqe_word(w: u16) -> Status {
        Status(w >> 1)
    }
    pub fn to_cqe_word(self) -> u16 {
        self.0 << 1
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sct {:#x} sc {:#04x}{}",
            self.sct(),
            self.sc(),
            if self.dnr() { " dnr" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let s = Status::CONNECT_INVALID_HOST;
        assert_eq!(s.sct(), 1);
        assert_eq!(s.sc(), 0x84);
        assert!(s.dnr());
        assert_eq!(Status::from_cqe_word(s.to_cqe_word() | 1), s);
        assert!(Status::SUCCESS.is_success());
        assert!(!Status::NAMESPACE_NOT_READY.is_success());
    }
}
