//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0, §3.3 and §3.6).
//!
//! Pure encode/decode: no I/O. Every PDU starts with the 8-byte common header
//! (CH); `layout` checks that a received header is consistent with its type and
//! the negotiated digests before a single byte of it is trusted.

use byteorder::{ByteOrder, LittleEndian as LE};

/// Length of the common header.
pub const CH_LEN: usize = 8;
/// Length of a header or data digest (CRC32C).
pub const DIGEST_LEN: usize = 4;
/// Header lengths per PDU type (§3.6).
pub const IC_HLEN: usize = 128;
pub const TERM_HLEN: usize = 24;
pub const CMD_HLEN: usize = 72;
pub const RESP_HLEN: usize = 24;
pub const DATA_HLEN: usize = 24;
pub const R2T_HLEN: usize = 24;
/// A TermReq carries at most this many bytes of the offending PDU header (§3.6.2.9).
pub const TERM_MAX_DATA: usize = 128;
/// Largest header of any PDU, with its digest.
pub const MAX_HEADER_LEN: usize = IC_HLEN;

/// PDU types.
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common-header flags.
pub mod flags {
    pub const HDGSTF: u8 = 1 << 0;
    pub const DDGSTF: u8 = 1 << 1;
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData only: the command completed successfully, no CapsuleResp follows.
    pub const SUCCESS: u8 = 1 << 3;
}

/// Fatal error status values of a TermReq (§3.6.2.9, Figure 32).
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const R2T_LIMIT_EXCEEDED: u16 = 0x05;
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Byte offsets of header fields, used as the FEI of a TermReq: the common
/// header's, then those of the data PDUs' headers (H2CData, C2HData and R2T
/// share a layout, NVMe/TCP 1.0 §3.6.2.6-8).
pub mod field {
    pub const TYPE: u32 = 0;
    pub const FLAGS: u32 = 1;
    pub const HLEN: u32 = 2;
    pub const PDO: u32 = 3;
    pub const PLEN: u32 = 4;
    pub const CCCID: u32 = 8;
    pub const TTAG: u32 = 10;
    pub const DATAO: u32 = 12;
    pub const DATAL: u32 = 16;
}

/// A fatal transport error: the PDU that caused it is answered with a TermReq
/// carrying these values and the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatalError {
    pub fes: u16,
    /// Field error information: byte offset of the bad field, or for
    /// digest errors the digest received.
    pub fei: u32,
}

impl FatalError {
    pub const fn new(fes: u16, fei: u32) -> Self {
        FatalError { fes, fei }
    }
    pub const fn header(fei: u32) -> Self {
        FatalError::new(fes::INVALID_HEADER_FIELD, fei)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    pub fn decode(b: &[u8]) -> CommonHeader {
        CommonHeader {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: LE::read_u32(&b[4..8]),
        }
    }
    pub fn encode(&self, b: &mut [u8]) {
        b[0] = self.pdu_type;
        b[1] = self.flags;
        b[2] = self.hlen;
        b[3] = self.pdo;
        LE::write_u32(&mut b[4..8], self.plen);
    }
}

/// Negotiated digests of a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Where the parts of a received PDU lie, all offsets from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub header: CommonHeader,
    pub hlen: usize,
    /// Header digest present (4 bytes after the header).
    pub hdgst: bool,
    /// Offset of the data, when there is data.
    pub pdo: usize,
    pub data_len: usize,
    /// Data digest present (4 bytes after the data).
    pub ddgst: bool,
}

impl Layout {
    /// Bytes of header plus header digest: what must be read before the PDU
    /// can be parsed.
    pub fn header_total(&self) -> usize {
        self.hlen + if self.hdgst { DIGEST_LEN } else { 0 }
    }
    /// Padding between the header (and its digest) and the data.
    pub fn pad_len(&self) -> usize {
        if self.data_len == 0 {
            0
        } else {
            self.pdo - self.header_total()
        }
    }
    pub fn plen(&self) -> usize {
        self.header.plen as usize
    }
}

/// Which side sent the PDU: each side accepts only the other's PDU types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    HostToController,
    ControllerToHost,
}

fn expected_hlen(pdu_type: u8) -> Option<usize> {
    use pdu_type::*;
    Some(match pdu_type {
        IC_REQ | IC_RESP => IC_HLEN,
        H2C_TERM_REQ | C2H_TERM_REQ => TERM_HLEN,
        CAPSULE_CMD => CMD_HLEN,
        CAPSULE_RESP => RESP_HLEN,
        H2C_DATA | C2H_DATA => DATA_HLEN,
        R2T => R2T_HLEN,
        _ => return None,
    })
}

/// Validate a common header received in `dir` and compute the PDU's layout.
///
/// `digests` are those negotiated (none before ICReq/ICResp), `max_data` the
/// largest data part this side accepts for this PDU type.
pub fn layout(
    ch: CommonHeader,
    dir: Direction,
    digests: Digests,
    max_data: usize,
) -> Result<Layout, FatalError> {
    use pdu_type::*;
    let allowed = match dir {
        Direction::HostToController => {
            matches!(ch.pdu_type, IC_REQ | H2C_TERM_REQ | CAPSULE_CMD | H2C_DATA)
        }
        Direction::ControllerToHost => matches!(
            ch.pdu_type,
            IC_RESP | C2H_TERM_REQ | CAPSULE_RESP | C2H_DATA | R2T
        ),
    };
    let hlen = match expected_hlen(ch.pdu_type) {
        Some(h) if allowed => h,
        _ => return Err(FatalError::header(field::TYPE)),
    };
    if ch.hlen as usize != hlen {
        return Err(FatalError::header(field::HLEN));
    }
    let plen = ch.plen as usize;
    match ch.pdu_type {
        // Connection setup and termination PDUs carry no digests (§3.6.1).
        IC_REQ | IC_RESP => {
            if ch.pdo != 0 {
                return Err(FatalError::header(field::PDO));
            }
            if plen != IC_HLEN {
                return Err(FatalError::header(field::PLEN));
            }
            return Ok(Layout {
                header: ch,
                hlen,
                hdgst: false,
                pdo: 0,
                data_len: 0,
                ddgst: false,
            });
        }
        H2C_TERM_REQ | C2H_TERM_REQ => {
            if !(TERM_HLEN..=TERM_HLEN + TERM_MAX_DATA).contains(&plen) {
                return Err(FatalError::header(field::PLEN));
            }
            // The PDO of a TermReq is reserved; its data is the offending header.
            return Ok(Layout {
                header: ch,
                hlen,
                hdgst: false,
                pdo: TERM_HLEN,
                data_len: plen - TERM_HLEN,
                ddgst: false,
            });
        }
        _ => {}
    }
    // HDGSTF must match what was negotiated (§3.6.2.1).
    let hdgst = ch.flags & flags::HDGSTF != 0;
    if hdgst != digests.header {
        return Err(FatalError::header(field::FLAGS));
    }
    let header_total = hlen + if hdgst { DIGEST_LEN } else { 0 };
    if plen < header_total {
        return Err(FatalError::header(field::PLEN));
    }
    let carries_data = matches!(ch.pdu_type, CAPSULE_CMD | H2C_DATA | C2H_DATA);
    if plen == header_total {
        // No data: PDO is reserved (0) except that hosts commonly leave it 0.
        if ch.flags & flags::DDGSTF != 0 && ch.pdu_type != CAPSULE_CMD {
            return Err(FatalError::header(field::FLAGS));
        }
        if matches!(ch.pdu_type, H2C_DATA | C2H_DATA) {
            // A data PDU without data is meaningless.
            return Err(FatalError::header(field::PLEN));
        }
        return Ok(Layout {
            header: ch,
            hlen,
            hdgst,
            pdo: 0,
            data_len: 0,
            ddgst: false,
        });
    }
    if !carries_data {
        return Err(FatalError::header(field::PLEN));
    }
    let ddgst = ch.flags & flags::DDGSTF != 0;
    if ddgst != digests.data {
        return Err(FatalError::header(field::FLAGS));
    }
    let pdo = ch.pdo as usize;
    if pdo < header_total || pdo > plen {
        return Err(FatalError::header(field::PDO));
    }
    let tail = if ddgst { DIGEST_LEN } else { 0 };
    if plen < pdo + tail + 1 {
        return Err(FatalError::header(field::PLEN));
    }
    let data_len = plen - pdo - tail;
    if data_len > max_data {
        return Err(FatalError::new(fes::DATA_LIMIT_EXCEEDED, field::PLEN));
    }
    Ok(Layout {
        header: ch,
        hlen,
        hdgst,
        pdo,
        data_len,
        ddgst,
    })
}

/// CRC32C as NVMe/TCP digests use it (seed !0, result inverted), bytes LE on the wire.
pub fn digest(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// ICReq (§3.6.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    pub hpda: u8,
    pub digests: Digests,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
}

impl IcReq {
    pub fn decode(h: &[u8]) -> IcReq {
        let (pfv, hpda, digests, maxr2t) = ic_fields(h);
        IcReq {
            pfv,
            hpda,
            digests,
            maxr2t,
        }
    }
    pub fn encode(&self) -> [u8; IC_HLEN] {
        ic_encode(
            pdu_type::IC_REQ,
            self.pfv,
            self.hpda,
            self.digests,
            self.maxr2t,
        )
    }
}

/// ICReq and ICResp share their layout (§3.6.2.2, §3.6.2.3): PFV at 8,
/// the PDU data alignment at 10, the digest bits at 11, and a 32-bit field
/// at 12 (MAXR2T, MAXH2CDATA).
fn ic_fields(h: &[u8]) -> (u16, u8, Digests, u32) {
    let digests = Digests {
        header: h[11] & 1 != 0,
        data: h[11] & 2 != 0,
    };
    (
        LE::read_u16(&h[8..10]),
        h[10],
        digests,
        LE::read_u32(&h[12..16]),
    )
}

fn ic_encode(ty: u8, pfv: u16, pda: u8, d: Digests, word: u32) -> [u8; IC_HLEN] {
    let mut b = [0u8; IC_HLEN];
    CommonHeader {
        pdu_type: ty,
        flags: 0,
        hlen: IC_HLEN as u8,
        pdo: 0,
        plen: IC_HLEN as u32,
    }
    .encode(&mut b);
    LE::write_u16(&mut b[8..10], pfv);
    b[10] = pda;
    b[11] = digest_bits(d);
    LE::write_u32(&mut b[12..16], word);
    b
}

fn digest_bits(d: Digests) -> u8 {
    (d.header as u8) | ((d.data as u8) << 1)
}

/// ICResp (§3.6.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    pub cpda: u8,
    pub digests: Digests,
    /// Largest H2CData payload the controller accepts.
    pub maxh2cdata: u32,
}

impl IcResp {
    pub fn decode(h: &[u8]) -> IcResp {
        let (pfv, cpda, digests, maxh2cdata) = ic_fields(h);
        IcResp {
            pfv,
            cpda,
            digests,
            maxh2cdata,
        }
    }
    pub fn encode(&self) -> [u8; IC_HLEN] {
        ic_encode(
            pdu_type::IC_RESP,
            self.pfv,
            self.cpda,
            self.digests,
            self.maxh2cdata,
        )
    }
}

/// A TermReq (either direction) with up to 128 bytes of the offending header.
pub fn encode_term_req(pdu_type: u8, err: FatalError, offending: &[u8], out: &mut Vec<u8>) {
    let n = offending.len().min(TERM_MAX_DATA);
    let start = out.len();
    out.resize(start + TERM_HLEN, 0);
    let b = &mut out[start..];
    CommonHeader {
        pdu_type,
        flags: 0,
        hlen: TERM_HLEN as u8,
        pdo: 0,
        plen: (TERM_HLEN + n) as u32,
    }
    .encode(b);
    LE::write_u16(&mut b[8..10], err.fes);
    LE::write_u32(&mut b[10..14], err.fei);
    out.extend_from_slice(&offending[..n]);
}

/// Decoded TermReq header fields.
pub fn decode_term_req(h: &[u8]) -> FatalError {
    FatalError {
        fes: LE::read_u16(&h[8..10]),
        fei: LE::read_u32(&h[10..14]),
    }
}

/// Header digest appended after `header` when enabled.
fn push_header(out: &mut Vec<u8>, header: &[u8], hdgst: bool) {
    out.extend_from_slice(header);
    if hdgst {
        out.extend_from_slice(&digest(header).to_le_bytes());
    }
}

fn data_flags(d: Digests, has_data: bool) -> u8 {
    let mut f = 0;
    if d.header {
        f |= flags::HDGSTF;
    }
    if d.data && has_data {
        f |= flags::DDGSTF;
    }
    f
}

/// Length of a header plus its digest.
pub fn header_total(hlen: usize, d: Digests) -> usize {
    hlen + if d.header { DIGEST_LEN } else { 0 }
}

/// CapsuleResp: 24-byte header holding a 16-byte CQE.
pub fn encode_capsule_resp(cqe: &[u8; 16], d: Digests, out: &mut Vec<u8>) {
    let mut h = [0u8; RESP_HLEN];
    CommonHeader {
        pdu_type: pdu_type::CAPSULE_RESP,
        flags: data_flags(d, false),
        hlen: RESP_HLEN as u8,
        pdo: 0,
        plen: header_total(RESP_HLEN, d) as u32,
    }
    .encode(&mut h);
    h[8..24].copy_from_slice(cqe);
    push_header(out, &h, d.header);
}

/// Data PDU header fields (H2CData and C2HData share a layout; R2T too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    pub cccid: u16,
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
}

impl DataHeader {
    pub fn decode(h: &[u8]) -> DataHeader {
        DataHeader {
            cccid: LE::read_u16(&h[8..10]),
            ttag: LE::read_u16(&h[10..12]),
            offset: LE::read_u32(&h[12..16]),
            length: LE::read_u32(&h[16..20]),
        }
    }
    fn encode_into(&self, h: &mut [u8]) {
        LE::write_u16(&mut h[8..10], self.cccid);
        LE::write_u16(&mut h[10..12], self.ttag);
        LE::write_u32(&mut h[12..16], self.offset);
        LE::write_u32(&mut h[16..20], self.length);
    }
}

/// Header (and header digest) of a data PDU (C2HData or H2CData) whose
/// `dh.length` data bytes follow; the caller appends the data and, when data
/// digests are on, `digest(data)` in LE.
pub fn encode_data_header(pdu: u8, dh: DataHeader, extra_flags: u8, d: Digests, out: &mut Vec<u8>) {
    encode_data_header_aligned(pdu, dh, extra_flags, d, 0, out)
}

/// As `encode_data_header`, with the data placed at a multiple of `pda`
/// bytes (the receiver's PDU data alignment from HPDA/CPDA), zero padded.
pub fn encode_data_header_aligned(
    pdu: u8,
    dh: DataHeader,
    extra_flags: u8,
    d: Digests,
    pda: usize,
    out: &mut Vec<u8>,
) {
    let ht = header_total(DATA_HLEN, d);
    let pdo = if pda > 1 { ht.div_ceil(pda) * pda } else { ht };
    let tail = if d.data { DIGEST_LEN } else { 0 };
    let mut h = [0u8; DATA_HLEN];
    CommonHeader {
        pdu_type: pdu,
        flags: data_flags(d, true) | extra_flags,
        hlen: DATA_HLEN as u8,
        pdo: pdo as u8,
        plen: (pdo + dh.length as usize + tail) as u32,
    }
    .encode(&mut h);
    dh.encode_into(&mut h);
    push_header(out, &h, d.header);
    out.resize(out.len() + (pdo - ht), 0);
}

/// R2T: asks the host for `r2tl` bytes at `r2to` of command `cccid`.
pub fn encode_r2t(dh: DataHeader, d: Digests, out: &mut Vec<u8>) {
    let mut h = [0u8; R2T_HLEN];
    CommonHeader {
        pdu_type: pdu_type::R2T,
        flags: data_flags(d, false),
        hlen: R2T_HLEN as u8,
        pdo: 0,
        plen: header_total(R2T_HLEN, d) as u32,
    }
    .encode(&mut h);
    dh.encode_into(&mut h);
    push_header(out, &h, d.header);
}

/// CapsuleCmd header: the SQE, followed by `data_len` bytes of in-capsule data
/// that the caller appends (and their digest when enabled).
pub fn encode_capsule_cmd(sqe: &[u8; 64], data_len: usize, d: Digests, out: &mut Vec<u8>) {
    let ht = header_total(CMD_HLEN, d);
    let tail = if d.data && data_len > 0 {
        DIGEST_LEN
    } else {
        0
    };
    let mut h = [0u8; CMD_HLEN];
    CommonHeader {
        pdu_type: pdu_type::CAPSULE_CMD,
        flags: data_flags(d, data_len > 0),
        hlen: CMD_HLEN as u8,
        pdo: if data_len > 0 { ht as u8 } else { 0 },
        plen: (ht + data_len + tail) as u32,
    }
    .encode(&mut h);
    h[8..72].copy_from_slice(sqe);
    push_header(out, &h, d.header);
}

#[cfg(test)]
mod tests;
