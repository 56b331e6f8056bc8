//! Fabrics command payloads: Connect (NVMe-oF 1.1 §3.3) and the controller
//! properties reached by Property Get/Set (NVMe Base 2.0 §3.1.3).

use super::command::Sqe;
use byteorder::{ByteOrder, LittleEndian as LE};

/// Connect data is always 1024 bytes.
pub const CONNECT_DATA_LEN: usize = 1024;
pub const NQN_FIELD_LEN: usize = 256;
/// NQNs are at most 223 bytes (NVMe Base 2.0 §4.5).
pub const NQN_MAX_LEN: usize = 223;
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Dynamic controller model: the host asks for any controller.
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;

/// Byte offsets of Connect fields, reported as IPO when invalid.
pub mod connect_offset {
    /// In the SQE.
    pub const RECFMT: u16 = 40;
    pub const QID: u16 = 42;
    pub const SQSIZE: u16 = 44;
    pub const KATO: u16 = 48;
    /// In the data.
    pub const HOSTID: u16 = 0;
    pub const CNTLID: u16 = 16;
    pub const SUBNQN: u16 = 256;
    pub const HOSTNQN: u16 = 512;
}

/// Completion DW0 of a Connect that failed with Connect Invalid Parameters
/// (NVMe-oF 1.1 §3.3, Figure 21): IPO, the byte offset of the bad field, in
/// bits 15:00; IATTR in bit 16: set when that offset is in the data, clear
/// when it is in the SQE.
pub fn invalid_parameter_dw0(in_data: bool, offset: u16) -> u32 {
    (offset as u32) | ((in_data as u32) << 16)
}

/// Connect command fields from the SQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectCmd {
    pub recfmt: u16,
    pub qid: u16,
    /// 0's based.
    pub sqsize: u16,
    pub cattr: u8,
    pub kato_ms: u32,
}

/// Connect attribute: the host disabled SQ flow control (§3.3, CATTR bit 2).
pub const CATTR_DISABLE_SQ_FLOW: u8 = 1 << 2;

impl ConnectCmd {
    pub fn decode(sqe: &Sqe) -> ConnectCmd {
        ConnectCmd {
            recfmt: LE::read_u16(&sqe.0[40..42]),
            qid: LE::read_u16(&sqe.0[42..44]),
            sqsize: LE::read_u16(&sqe.0[44..46]),
            cattr: sqe.0[46],
            kato_ms: LE::read_u32(&sqe.0[48..52]),
        }
    }
    pub fn encode(&self, sqe: &mut Sqe) {
        LE::write_u16(&mut sqe.0[40..42], self.recfmt);
        LE::write_u16(&mut sqe.0[42..44], self.qid);
        LE::write_u16(&mut sqe.0[44..46], self.sqsize);
        sqe.0[46] = self.cattr;
        LE::write_u32(&mut sqe.0[48..52], self.kato_ms);
    }
}

/// Connect data (1024 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

/// Why an NQN field is unusable; carries the field's offset for the IPO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadField(pub u16);

/// An NQN field: NUL-terminated UTF-8 within 256 bytes, at most 223 bytes long.
pub fn decode_nqn(b: &[u8], offset: u16) -> Result<String, BadField> {
    match decode_nqn_or_empty(b, offset)? {
        n if n.is_empty() => Err(BadField(offset)),
        n => Ok(n),
    }
}

/// An NQN field that may be empty: the Host NQN, which SPDK's host (v24.01)
/// leaves empty unless told one, and which Linux nvmet and SPDK's target
/// accept where any host is allowed.
pub fn decode_nqn_or_empty(b: &[u8], offset: u16) -> Result<String, BadField> {
    let end = b.iter().position(|&c| c == 0).ok_or(BadField(offset))?;
    if end > NQN_MAX_LEN {
        return Err(BadField(offset));
    }
    std::str::from_utf8(&b[..end])
        .map(|s| s.to_owned())
        .map_err(|_| BadField(offset))
}

fn encode_str(b: &mut [u8], s: &str) {
    let n = s.len().min(b.len() - 1);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    b[n..].fill(0);
}

impl ConnectData {
    pub fn decode(b: &[u8]) -> Result<ConnectData, BadField> {
        if b.len() < CONNECT_DATA_LEN {
            return Err(BadField(0));
        }
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[0..16]);
        Ok(ConnectData {
            hostid,
            cntlid: LE::read_u16(&b[16..18]),
            subnqn: decode_nqn(&b[256..512], connect_offset::SUBNQN)?,
            hostnqn: decode_nqn_or_empty(&b[512..768], connect_offset::HOSTNQN)?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; CONNECT_DATA_LEN];
        b[0..16].copy_from_slice(&self.hostid);
        LE::write_u16(&mut b[16..18], self.cntlid);
        encode_str(&mut b[256..512], &self.subnqn);
        encode_str(&mut b[512..768], &self.hostnqn);
        b
    }
}

/// Property offsets.
pub mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
    pub const NSSR: u32 = 0x20;
    pub const CRTO: u32 = 0x68;
}

/// Property Get/Set fields: ATTRIB (size: 0 = 4 bytes, 1 = 8 bytes), OFST, VALUE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyCmd {
    pub size8: bool,
    pub offset: u32,
    pub value: u64,
}

impl PropertyCmd {
    pub fn decode(sqe: &Sqe) -> PropertyCmd {
        PropertyCmd {
            size8: sqe.0[40] & 0x7 == 1,
            offset: LE::read_u32(&sqe.0[44..48]),
            value: LE::read_u64(&sqe.0[48..56]),
        }
    }
    /// ATTRIB's size field is valid only as 0 or 1.
    pub fn attrib_valid(sqe: &Sqe) -> bool {
        sqe.0[40] & 0x7 <= 1
    }
    pub fn encode(&self, sqe: &mut Sqe) {
        sqe.0[40] = self.size8 as u8;
        LE::write_u32(&mut sqe.0[44..48], self.offset);
        LE::write_u64(&mut sqe.0[48..56], self.value);
    }
}

/// Controller Configuration (CC) fields.
pub mod cc {
    pub const EN: u32 = 1;
    pub fn css(cc: u32) -> u32 {
        (cc >> 4) & 0x7
    }
    pub fn mps(cc: u32) -> u32 {
        (cc >> 7) & 0xF
    }
    pub fn ams(cc: u32) -> u32 {
        (cc >> 11) & 0x7
    }
    pub fn shn(cc: u32) -> u32 {
        (cc >> 14) & 0x3
    }
    pub fn iosqes(cc: u32) -> u32 {
        (cc >> 16) & 0xF
    }
    pub fn iocqes(cc: u32) -> u32 {
        (cc >> 20) & 0xF
    }
}

/// Controller Status (CSTS) bits.
pub mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_OCCURRING: u32 = 1 << 2;
    pub const SHST_COMPLETE: u32 = 2 << 2;
    pub const SHST_MASK: u32 = 3 << 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_round_trip() {
        let d = ConnectData {
            hostid: [7; 16],
            cntlid: 0xFFFF,
            subnqn: "nqn.2026-11.io.nvmf-tpc:default".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1".into(),
        };
        assert_eq!(ConnectData::decode(&d.encode()).unwrap(), d);
        let mut sqe = Sqe::default();
        let c = ConnectCmd {
            recfmt: 0,
            qid: 3,
            sqsize: 127,
            cattr: CATTR_DISABLE_SQ_FLOW,
            kato_ms: 5000,
        };
        c.encode(&mut sqe);
        assert_eq!(ConnectCmd::decode(&sqe), c);
    }

    #[test]
    fn nqn_must_terminate_and_be_utf8() {
        let mut b = vec![b'a'; 256];
        assert_eq!(decode_nqn(&b, 256), Err(BadField(256)));
        b[10] = 0;
        assert_eq!(decode_nqn(&b, 256).unwrap(), "aaaaaaaaaa");
        b[0] = 0xFF;
        assert!(decode_nqn(&b, 256).is_err());
        b[0] = 0;
        assert!(decode_nqn(&b, 256).is_err(), "empty");
        assert_eq!(decode_nqn_or_empty(&b, 512).unwrap(), "");
        let mut long = vec![b'a'; 256];
        long[224] = 0;
        assert!(decode_nqn(&long, 512).is_err(), "over 223 bytes");
        assert!(ConnectData::decode(&[0u8; 100]).is_err());
    }

    #[test]
    fn invalid_parameter_location() {
        // As Linux reads it: offset in the low half, "in data" above it.
        let dw0 = invalid_parameter_dw0(true, connect_offset::SUBNQN);
        assert_eq!(dw0 & 0xFFFF, 256);
        assert_eq!(dw0 >> 16, 1);
        assert_eq!(invalid_parameter_dw0(false, connect_offset::SQSIZE), 44);
    }

    #[test]
    fn property_fields() {
        let mut sqe = Sqe::default();
        let p = PropertyCmd {
            size8: true,
            offset: property::CAP,
            value: 0x1122_3344_5566_7788,
        };
        p.encode(&mut sqe);
        assert_eq!(PropertyCmd::decode(&sqe), p);
        assert_eq!(cc::iosqes(0x0046_0001), 6);
        assert_eq!(cc::iocqes(0x0046_0001), 4);
    }
}
