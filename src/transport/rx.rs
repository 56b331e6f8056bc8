//! The receive side of an NVMe/TCP queue as a state machine without I/O.
//!
//! It is shown each PDU's header bytes and says what the PDU is, whether
//! it may come now and whether its fields hold (NVMe/TCP 1.0 §3.3 setup,
//! §3.6.2 PDU rules, §3.6.2.7 H2CData against its R2T), and where its data
//! goes; the connection task (`tcp.rs`) reads the socket, moves the data
//! and acts on what it is told. So the protocol is tested and fuzzed
//! without a socket (`fuzz/fuzz_targets/rx.rs`), as quinn-proto keeps QUIC
//! apart from its sockets.
//!
//! One PDU at a time: `begin` with its common header, then `header` with
//! the whole header (and header digest); for H2CData, `data_done` once its
//! data is in place. A transfer the target asks for with an R2T is `open`ed
//! with the driver's own state for it (`T`: its buffer and command), which
//! comes back from `data_done` when the last byte has arrived.

use crate::nvme::Xfer as Moves;
use crate::wire::command::{sgl, SglDescriptor, Sqe, SQE_LEN};
use crate::wire::pdu::{
    self, fes, field, pdu_type, CommonHeader, DataHeader, Digests, Direction, FatalError, IcReq,
    Layout, CH_LEN, DIGEST_LEN,
};
use crate::wire::status::Status;

/// Highest host PDU data alignment we accept (ICReq HPDA, 0-based dwords):
/// the spec's maximum (§3.6.2.2).
pub const HPDA_MAX: u8 = 31;

/// A fatal protocol error: what to put in the C2HTermReq, and the header
/// it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    pub error: FatalError,
    pub header: Vec<u8>,
}

impl Fatal {
    fn new(fes_v: u16, fei: u32, header: &[u8]) -> Fatal {
        Fatal {
            error: FatalError::new(fes_v, fei),
            header: header.to_vec(),
        }
    }
}

/// What a PDU is, once its header is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    /// Connection setup: the ICResp may go out.
    IcReq(IcReq),
    /// A command, with `data` bytes of in-capsule data after its header
    /// (then the data digest, when negotiated).
    Capsule { sqe: Sqe, data: usize },
    /// `len` bytes for the transfer `ttag`, to go at `at` in its buffer.
    H2cData { ttag: u16, at: usize, len: usize },
    /// The host ends the connection; `data` bytes follow (to skip).
    Term { error: FatalError, data: usize },
}

/// A transfer asked for by R2T, and how far its data has come.
struct Xfer<T> {
    cid: u16,
    len: usize,
    received: usize,
    digest_failed: bool,
    state: T,
}

/// Where the machine is in the current PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between PDUs.
    Idle,
    /// Its common header is checked; the rest of its header is next.
    Header(Layout),
    /// `len` bytes of H2CData for `ttag` are being read.
    Data { ttag: u16, len: usize },
}

/// The receive protocol state of one queue. `T`: the driver's state for a
/// transfer asked for by R2T.
pub struct Rx<T> {
    /// The ICReq came (the first PDU must be one, and only the first).
    set_up: bool,
    digests: Digests,
    maxh2cdata: usize,
    phase: Phase,
    xfers: Vec<Option<Xfer<T>>>,
}

impl<T> Rx<T> {
    /// A queue whose ICResp will grant `maxh2cdata`.
    pub fn new(maxh2cdata: usize) -> Rx<T> {
        Rx {
            set_up: false,
            digests: Digests::default(),
            maxh2cdata,
            phase: Phase::Idle,
            xfers: Vec::new(),
        }
    }

    /// The digests the ICReq asked for (none before it).
    pub fn digests(&self) -> Digests {
        self.digests
    }

    /// A new PDU starts with common header `ch`; `max_icd` is the most
    /// in-capsule data a command may carry on this queue now. Returns its
    /// layout: `header_total()` bytes of header to read next.
    pub fn begin(&mut self, ch: &[u8; CH_LEN], max_icd: usize) -> Result<Layout, Fatal> {
        assert_eq!(self.phase, Phase::Idle, "one PDU at a time");
        let c = CommonHeader::decode(ch);
        let bad = |e: FatalError| Fatal {
            error: e,
            header: ch.to_vec(),
        };
        // §3.3: the ICReq comes first, and once.
        if (c.pdu_type == pdu_type::IC_REQ) == self.set_up {
            return Err(Fatal::new(fes::PDU_SEQUENCE_ERROR, field::TYPE, ch));
        }
        let max_data = match c.pdu_type {
            pdu_type::CAPSULE_CMD => max_icd,
            pdu_type::H2C_DATA => self.maxh2cdata,
            _ => 0,
        };
        let digests = if self.set_up {
            self.digests
        } else {
            Digests::default()
        };
        let l = pdu::layout(c, Direction::HostToController, digests, max_data).map_err(bad)?;
        self.phase = Phase::Header(l);
        Ok(l)
    }

    /// The whole header of the PDU `begin` started (`header_total()` bytes,
    /// common header included): what it is.
    pub fn header(&mut self, hdr: &[u8]) -> Result<Pdu, Fatal> {
        let Phase::Header(l) = self.phase else {
            panic!("header() without begin()");
        };
        assert_eq!(hdr.len(), l.header_total(), "the whole header");
        self.phase = Phase::Idle;
        if l.hdgst {
            let want = u32::from_le_bytes(hdr[l.hlen..].try_into().unwrap());
            if pdu::digest(&hdr[..l.hlen]) != want {
                return Err(Fatal::new(fes::HEADER_DIGEST_ERROR, 0, &hdr[..l.hlen]));
            }
        }
        let hdr = &hdr[..l.hlen];
        match l.header.pdu_type {
            pdu_type::IC_REQ => self.ic_req(hdr),
            pdu_type::CAPSULE_CMD => Ok(Pdu::Capsule {
                sqe: Sqe::from_slice(&hdr[CH_LEN..CH_LEN + SQE_LEN]),
                data: l.data_len,
            }),
            pdu_type::H2C_DATA => self.h2c_data(&l, hdr),
            pdu_type::H2C_TERM_REQ => Ok(Pdu::Term {
                error: pdu::decode_term_req(hdr),
                data: l.data_len,
            }),
            _ => unreachable!("layout() admits only host PDU types"),
        }
    }

    fn ic_req(&mut self, hdr: &[u8]) -> Result<Pdu, Fatal> {
        let ic = IcReq::decode(hdr);
        // §3.6.2.2: PFV 0 is the only format; HPDA at most 31.
        if ic.pfv != 0 {
            return Err(Fatal::new(fes::INVALID_HEADER_FIELD, 8, hdr));
        }
        if ic.hpda > HPDA_MAX {
            return Err(Fatal::new(fes::INVALID_HEADER_FIELD, 10, hdr));
        }
        self.set_up = true;
        self.digests = ic.digests;
        Ok(Pdu::IcReq(ic))
    }

    /// §3.6.2.7: H2CData names an open transfer and its command, and comes
    /// in order, within what the R2T asked for.
    fn h2c_data(&mut self, l: &Layout, hdr: &[u8]) -> Result<Pdu, Fatal> {
        let dh = DataHeader::decode(hdr);
        let Some(x) = self.xfers.get(dh.ttag as usize).and_then(Option::as_ref) else {
            return Err(Fatal::new(fes::INVALID_HEADER_FIELD, field::TTAG, hdr));
        };
        let err = if x.cid != dh.cccid {
            Some((fes::INVALID_HEADER_FIELD, field::CCCID))
        } else if dh.offset as usize != x.received {
            Some((fes::DATA_OUT_OF_RANGE, field::DATAO))
        } else if dh.length as usize != l.data_len {
            Some((fes::INVALID_HEADER_FIELD, field::DATAL))
        } else if x.received + l.data_len > x.len {
            Some((fes::DATA_OUT_OF_RANGE, field::DATAL))
        } else {
            None
        };
        if let Some((f, fei)) = err {
            return Err(Fatal::new(f, fei, hdr));
        }
        self.phase = Phase::Data {
            ttag: dh.ttag,
            len: l.data_len,
        };
        Ok(Pdu::H2cData {
            ttag: dh.ttag,
            at: x.received,
            len: l.data_len,
        })
    }

    /// The driver's state of transfer `ttag`, to read its data into.
    pub fn state_mut(&mut self, ttag: u16) -> &mut T {
        &mut self.xfers[ttag as usize]
            .as_mut()
            .expect("an open transfer")
            .state
    }

    /// The data of the current H2CData PDU is in place; `digest_ok`: its
    /// data digest matched (or there is none). When the transfer is whole
    /// it closes: its state, and whether any of its PDUs failed the digest.
    pub fn data_done(&mut self, digest_ok: bool) -> Option<(T, bool)> {
        let Phase::Data { ttag, len } = self.phase else {
            panic!("data_done() outside H2CData");
        };
        self.phase = Phase::Idle;
        let slot = &mut self.xfers[ttag as usize];
        let x = slot.as_mut().expect("an open transfer");
        // `h2c_data` checked the length against the rest of the transfer.
        x.received += len;
        x.digest_failed |= !digest_ok;
        if x.received < x.len {
            return None;
        }
        let x = slot.take().expect("an open transfer");
        Some((x.state, x.digest_failed))
    }

    /// Ask for `len` bytes of command `cid` (an R2T goes out with the
    /// returned TTAG and offset 0).
    pub fn open(&mut self, cid: u16, len: usize, state: T) -> u16 {
        let x = Xfer {
            cid,
            len,
            received: 0,
            digest_failed: false,
            state,
        };
        let ttag = match self.xfers.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.xfers.push(None);
                self.xfers.len() - 1
            }
        };
        self.xfers[ttag] = Some(x);
        ttag as u16
    }

    /// The queue is closing: every open transfer is dropped (no data can
    /// come for them now).
    pub fn close_all(&mut self) {
        self.xfers.clear();
    }

    /// Transfers asked for and not yet whole.
    pub fn open_transfers(&self) -> usize {
        self.xfers.iter().filter(|x| x.is_some()).count()
    }
}

/// Where a checked command's data goes, by the SGL it came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// Run it now; it may send this many bytes to the host.
    Execute(usize),
    /// Ask for this many bytes by R2T first.
    R2T(usize),
}

/// The data of a command that moves `xfer`, described by SGL `d`, with
/// `icd` bytes of in-capsule data (None: none came). NVMe/TCP 1.0 §3.3.1:
/// data to the host is a Transport SGL Data Block; data from the host comes
/// in the capsule (Data Block, offset 0, its length exactly) or by R2T
/// (Transport SGL Data Block, with no in-capsule data).
pub fn data_path(xfer: Moves, d: SglDescriptor, icd: Option<usize>) -> Result<DataPath, Status> {
    match xfer {
        Moves::None => Ok(DataPath::Execute(0)),
        Moves::ToHost(len) => {
            if d.id != sgl::TRANSPORT_DATA_BLOCK {
                Err(Status::SGL_TYPE_INVALID)
            } else if (d.length as usize) < len {
                Err(Status::DATA_SGL_LENGTH_INVALID)
            } else {
                Ok(DataPath::Execute(len))
            }
        }
        Moves::FromHost(len) => match d.id {
            sgl::DATA_BLOCK_OFFSET => {
                if d.addr != 0 {
                    Err(Status::SGL_OFFSET_INVALID)
                } else if d.length as usize != len || icd.unwrap_or(0) != len {
                    Err(Status::DATA_SGL_LENGTH_INVALID)
                } else {
                    Ok(DataPath::Execute(0))
                }
            }
            sgl::TRANSPORT_DATA_BLOCK if icd.is_none() => {
                if d.length as usize != len {
                    Err(Status::DATA_SGL_LENGTH_INVALID)
                } else {
                    Ok(DataPath::R2T(len))
                }
            }
            _ => Err(Status::SGL_TYPE_INVALID),
        },
    }
}

/// Whether the data digest `dg` (the 4 bytes after the data) matches `data`.
pub fn data_digest_ok(data: &[u8], dg: &[u8]) -> bool {
    let want = u32::from_le_bytes(dg[..DIGEST_LEN].try_into().unwrap());
    pdu::digest(data) == want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pdu::{encode_capsule_cmd, encode_data_header, flags};

    const D: Digests = Digests {
        header: false,
        data: false,
    };

    /// Feed one whole PDU header (and no data) to `rx`.
    fn feed(rx: &mut Rx<u32>, pdu: &[u8]) -> Result<Pdu, Fatal> {
        let l = rx.begin(pdu[..CH_LEN].try_into().unwrap(), 8192)?;
        rx.header(&pdu[..l.header_total()])
    }

    fn icreq(d: Digests) -> Vec<u8> {
        let ic = IcReq {
            pfv: 0,
            hpda: 0,
            digests: d,
            maxr2t: 0,
        };
        ic.encode().to_vec()
    }

    fn capsule(cid: u16) -> Vec<u8> {
        let mut sqe = Sqe([0; SQE_LEN]);
        sqe.set_cid(cid);
        let mut out = Vec::new();
        encode_capsule_cmd(&sqe.0, 0, D, &mut out);
        out
    }

    fn h2c(cid: u16, ttag: u16, offset: u32, len: u32, d: Digests) -> Vec<u8> {
        let dh = DataHeader {
            cccid: cid,
            ttag,
            offset,
            length: len,
        };
        let mut out = Vec::new();
        encode_data_header(pdu_type::H2C_DATA, dh, flags::LAST_PDU, d, &mut out);
        out
    }

    fn fes_of(r: Result<Pdu, Fatal>) -> (u16, u32) {
        let e = r.expect_err("a fatal error").error;
        (e.fes, e.fei)
    }

    #[test]
    fn the_icreq_comes_first_and_once() {
        let mut rx = Rx::<u32>::new(4096);
        assert_eq!(
            fes_of(feed(&mut rx, &capsule(1))),
            (fes::PDU_SEQUENCE_ERROR, 0)
        );
        let mut rx = Rx::<u32>::new(4096);
        let d = Digests {
            header: true,
            data: false,
        };
        assert!(matches!(feed(&mut rx, &icreq(d)), Ok(Pdu::IcReq(_))));
        assert_eq!(rx.digests(), d);
        let again = feed(&mut rx, &icreq(d));
        assert_eq!(fes_of(again), (fes::PDU_SEQUENCE_ERROR, 0));
    }

    #[test]
    fn icreq_fields_are_checked() {
        let mut bad_pfv = icreq(D);
        bad_pfv[8] = 1;
        assert_eq!(
            fes_of(feed(&mut Rx::new(4096), &bad_pfv)),
            (fes::INVALID_HEADER_FIELD, 8)
        );
        let mut bad_hpda = icreq(D);
        bad_hpda[10] = HPDA_MAX + 1;
        assert_eq!(
            fes_of(feed(&mut Rx::new(4096), &bad_hpda)),
            (fes::INVALID_HEADER_FIELD, 10)
        );
    }

    #[test]
    fn h2c_data_follows_its_r2t_in_order_and_closes_it_when_whole() {
        let mut rx = Rx::<u32>::new(4096);
        feed(&mut rx, &icreq(D)).unwrap();
        let ttag = rx.open(7, 8192, 42);
        // Unknown TTAG, wrong command, out of order, beyond MAXH2CDATA.
        let cases = [
            (
                h2c(7, ttag + 1, 0, 4096, D),
                (fes::INVALID_HEADER_FIELD, field::TTAG),
            ),
            (
                h2c(8, ttag, 0, 4096, D),
                (fes::INVALID_HEADER_FIELD, field::CCCID),
            ),
            (
                h2c(7, ttag, 4096, 4096, D),
                (fes::DATA_OUT_OF_RANGE, field::DATAO),
            ),
        ];
        for (pdu, want) in cases {
            let mut rx2 = Rx::<u32>::new(4096);
            feed(&mut rx2, &icreq(D)).unwrap();
            rx2.open(7, 8192, 42);
            assert_eq!(fes_of(feed(&mut rx2, &pdu)), want);
        }
        let too_big = h2c(7, ttag, 0, 8192, D);
        let l = rx.begin(too_big[..CH_LEN].try_into().unwrap(), 8192);
        assert!(l.is_err(), "more than MAXH2CDATA in one PDU");
        // In order: two PDUs; the first leaves it open, the second closes it.
        let first = feed(&mut rx, &h2c(7, ttag, 0, 4096, D)).unwrap();
        assert_eq!(
            first,
            Pdu::H2cData {
                ttag,
                at: 0,
                len: 4096
            }
        );
        assert_eq!(rx.data_done(true), None);
        assert_eq!(rx.open_transfers(), 1);
        feed(&mut rx, &h2c(7, ttag, 4096, 4096, D)).unwrap();
        assert_eq!(
            rx.data_done(false),
            Some((42, true)),
            "a bad digest is kept"
        );
        assert_eq!(rx.open_transfers(), 0);
        // Closed: its TTAG means nothing now.
        let late = feed(&mut rx, &h2c(7, ttag, 8192, 4096, D));
        assert_eq!(fes_of(late), (fes::INVALID_HEADER_FIELD, field::TTAG));
    }

    #[test]
    fn a_bad_header_digest_is_fatal() {
        let d = Digests {
            header: true,
            data: false,
        };
        let mut rx = Rx::<u32>::new(4096);
        feed(&mut rx, &icreq(d)).unwrap();
        let mut sqe = Sqe([0; SQE_LEN]);
        sqe.set_cid(1);
        let mut pdu = Vec::new();
        encode_capsule_cmd(&sqe.0, 0, d, &mut pdu);
        let n = pdu.len();
        pdu[n - 1] ^= 1;
        assert_eq!(fes_of(feed(&mut rx, &pdu)).0, fes::HEADER_DIGEST_ERROR);
    }

    #[test]
    fn data_comes_in_the_capsule_or_by_r2t_and_goes_by_a_transport_block() {
        let sgl = |id, addr, length| SglDescriptor { addr, length, id };
        let t = sgl::TRANSPORT_DATA_BLOCK;
        let o = sgl::DATA_BLOCK_OFFSET;
        let cases = [
            (Moves::None, sgl(0, 0, 0), None, Ok(DataPath::Execute(0))),
            (
                Moves::ToHost(4096),
                sgl(t, 0, 8192),
                None,
                Ok(DataPath::Execute(4096)),
            ),
            (
                Moves::ToHost(4096),
                sgl(t, 0, 512),
                None,
                Err(Status::DATA_SGL_LENGTH_INVALID),
            ),
            (
                Moves::ToHost(4096),
                sgl(o, 0, 4096),
                None,
                Err(Status::SGL_TYPE_INVALID),
            ),
            (
                Moves::FromHost(4096),
                sgl(o, 0, 4096),
                Some(4096),
                Ok(DataPath::Execute(0)),
            ),
            (
                Moves::FromHost(4096),
                sgl(o, 8, 4096),
                Some(4096),
                Err(Status::SGL_OFFSET_INVALID),
            ),
            (
                Moves::FromHost(4096),
                sgl(o, 0, 4096),
                Some(512),
                Err(Status::DATA_SGL_LENGTH_INVALID),
            ),
            (
                Moves::FromHost(4096),
                sgl(o, 0, 4096),
                None,
                Err(Status::DATA_SGL_LENGTH_INVALID),
            ),
            (
                Moves::FromHost(4096),
                sgl(t, 0, 4096),
                None,
                Ok(DataPath::R2T(4096)),
            ),
            (
                Moves::FromHost(4096),
                sgl(t, 0, 8192),
                None,
                Err(Status::DATA_SGL_LENGTH_INVALID),
            ),
            (
                Moves::FromHost(4096),
                sgl(t, 0, 4096),
                Some(4096),
                Err(Status::SGL_TYPE_INVALID),
            ),
        ];
        for (xfer, d, icd, want) in cases {
            assert_eq!(data_path(xfer, d, icd), want, "{xfer:?} {d:?} {icd:?}");
        }
    }
}
