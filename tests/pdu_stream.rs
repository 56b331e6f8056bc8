//! Raw byte streams against the real target: sessions split at every byte
//! boundary or merged into one write, and malformed PDUs answered with a
//! C2HTermReq and a closed connection while other connections keep working.

mod common;
use common::*;
use nvmf_tpc::wire::command::{admin, fctype, io, sgl, Cqe, SglDescriptor, Sqe};
use nvmf_tpc::wire::fabrics::{property, ConnectCmd, ConnectData, PropertyCmd};
use nvmf_tpc::wire::pdu::{self, fes, flags, pdu_type, CommonHeader, DataHeader, Digests, IcReq};
use nvmf_tpc::wire::status::Status;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

fn icreq(d: Digests) -> Vec<u8> {
    IcReq {
        pfv: 0,
        hpda: 0,
        digests: d,
        maxr2t: 0,
    }
    .encode()
    .to_vec()
}

/// PSDT 01b (SGLs), as every NVMe over Fabrics host sets it.
const PSDT_SGL: u8 = 0x40;

/// A capsule as a fabrics host sends it (PSDT set to SGL).
fn capsule(sqe: &Sqe, data: &[u8], d: Digests) -> Vec<u8> {
    let mut sqe = *sqe;
    sqe.set_flags(sqe.flags() | PSDT_SGL);
    capsule_raw(&sqe, data, d)
}

/// A capsule with the SQE's flags as they are.
fn capsule_raw(sqe: &Sqe, data: &[u8], d: Digests) -> Vec<u8> {
    let mut out = Vec::new();
    pdu::encode_capsule_cmd(&sqe.0, data.len(), d, &mut out);
    out.extend_from_slice(data);
    if d.data && !data.is_empty() {
        out.extend_from_slice(&pdu::digest(data).to_le_bytes());
    }
    out
}

fn connect(cid: u16, qid: u16, cntlid: u16, d: Digests) -> Vec<u8> {
    connect_sized(cid, qid, cntlid, 31, d)
}

fn connect_sized(cid: u16, qid: u16, cntlid: u16, sqsize: u16, d: Digests) -> Vec<u8> {
    capsule(&connect_sqe(cid, qid, sqsize, 0), &connect_data(cntlid), d)
}

fn connect_sqe(cid: u16, qid: u16, sqsize: u16, cattr: u8) -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::FABRICS)
        .set_fctype(fctype::CONNECT)
        .set_cid(cid)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: 1024,
            id: sgl::DATA_BLOCK_OFFSET,
        });
    ConnectCmd {
        recfmt: 0,
        qid,
        sqsize,
        cattr,
        kato_ms: if qid == 0 { 30_000 } else { 0 },
    }
    .encode(&mut sqe);
    sqe
}

fn connect_data(cntlid: u16) -> Vec<u8> {
    ConnectData {
        hostid: [1; 16],
        cntlid,
        subnqn: NQN.into(),
        hostnqn: HOSTNQN.into(),
    }
    .encode()
    .to_vec()
}

fn prop_set_cc(cid: u16, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::FABRICS)
        .set_fctype(fctype::PROPERTY_SET)
        .set_cid(cid);
    PropertyCmd {
        size8: false,
        offset: property::CC,
        value: 1 | (6 << 16) | (4 << 20),
    }
    .encode(&mut sqe);
    capsule(&sqe, &[], d)
}

fn identify_ctrl(cid: u16, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::IDENTIFY)
        .set_cid(cid)
        .set_cdw(10, 1)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: 4096,
            id: sgl::TRANSPORT_DATA_BLOCK,
        });
    capsule(&sqe, &[], d)
}

fn write_icd(cid: u16, slba: u64, data: &[u8], d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::WRITE)
        .set_cid(cid)
        .set_nsid(1)
        .set_cdw(10, slba as u32)
        .set_cdw(11, (slba >> 32) as u32)
        .set_cdw(12, (data.len() / 4096 - 1) as u32)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: data.len() as u32,
            id: sgl::DATA_BLOCK_OFFSET,
        });
    capsule(&sqe, data, d)
}

fn flush_cmd(cid: u16, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::FLUSH).set_cid(cid).set_nsid(1);
    capsule(&sqe, &[], d)
}

fn read_cmd(cid: u16, slba: u64, blocks: u32, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::READ)
        .set_cid(cid)
        .set_nsid(1)
        .set_cdw(10, slba as u32)
        .set_cdw(12, blocks - 1)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: blocks * 4096,
            id: sgl::TRANSPORT_DATA_BLOCK,
        });
    capsule(&sqe, &[], d)
}

/// A PDU as received by the host.
#[derive(Debug)]
enum Rx {
    IcResp,
    Resp(Cqe),
    Data(DataHeader, Vec<u8>, u8),
    R2T(DataHeader),
    Term(pdu::FatalError),
}

struct Peer {
    s: TcpStream,
    d: Digests,
}

impl Peer {
    fn open(addr: SocketAddr, d: Digests) -> Peer {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Peer { s, d }
    }

    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// Next PDU, or None at EOF.
    fn recv(&mut self) -> Option<Rx> {
        let mut ch = [0u8; 8];
        if self.s.read_exact(&mut ch).is_err() {
            return None;
        }
        let h = CommonHeader::decode(&ch);
        let digests = if h.pdu_type == pdu_type::IC_RESP || h.pdu_type == pdu_type::C2H_TERM_REQ {
            Digests::default()
        } else {
            self.d
        };
        let l = pdu::layout(h, pdu::Direction::ControllerToHost, digests, 1 << 24)
            .unwrap_or_else(|e| panic!("target sent a bad PDU header {h:?}: {e:?}"));
        let mut rest = vec![0u8; l.plen() - 8];
        self.s.read_exact(&mut rest).unwrap();
        let mut all = ch.to_vec();
        all.extend_from_slice(&rest);
        if l.hdgst {
            let want = u32::from_le_bytes(all[l.hlen..l.hlen + 4].try_into().unwrap());
            assert_eq!(pdu::digest(&all[..l.hlen]), want, "header digest");
        }
        Some(match h.pdu_type {
            pdu_type::IC_RESP => Rx::IcResp,
            pdu_type::CAPSULE_RESP => Rx::Resp(Cqe::decode(&all[8..24])),
            pdu_type::R2T => Rx::R2T(DataHeader::decode(&all)),
            pdu_type::C2H_TERM_REQ => Rx::Term(pdu::decode_term_req(&all)),
            pdu_type::C2H_DATA => {
                let data = all[l.pdo..l.pdo + l.data_len].to_vec();
                if l.ddgst {
                    let at = l.pdo + l.data_len;
                    let want = u32::from_le_bytes(all[at..at + 4].try_into().unwrap());
                    assert_eq!(pdu::digest(&data), want, "data digest");
                }
                Rx::Data(DataHeader::decode(&all), data, h.flags)
            }
            t => panic!("unexpected PDU type {t}"),
        })
    }

    fn expect_resp(&mut self) -> Cqe {
        match self.recv() {
            Some(Rx::Resp(c)) => c,
            other => panic!("expected CapsuleResp, got {other:?}"),
        }
    }

    fn expect_closed(&mut self) {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection not closed: {other:?}"),
        }
    }
}

/// Admin session: ICReq, Connect, CC.EN=1, Identify Controller.
fn admin_session(d: Digests) -> Vec<u8> {
    let mut s = icreq(d);
    s.extend(connect(1, 0, 0xFFFF, d));
    s.extend(prop_set_cc(2, d));
    s.extend(identify_ctrl(3, d));
    s
}

fn check_admin_replies(p: &mut Peer) {
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    let c = p.expect_resp();
    assert!(c.status.is_success(), "connect: {c:?}");
    assert!(p.expect_resp().status.is_success());
    let mut got = Vec::new();
    loop {
        match p.recv() {
            Some(Rx::Data(dh, data, f)) => {
                assert_eq!(dh.offset as usize, got.len());
                got.extend(data);
                assert_eq!(f & flags::LAST_PDU != 0, got.len() == 4096);
            }
            Some(Rx::Resp(c)) => {
                assert!(c.status.is_success());
                assert_eq!(c.cid, 3);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got.len(), 4096);
    assert_eq!(&got[768..768 + NQN.len()], NQN.as_bytes());
}

#[test]
fn sessions_split_at_every_byte_boundary() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    for d in [
        Digests::default(),
        Digests {
            header: true,
            data: true,
        },
    ] {
        let s = admin_session(d);
        for k in 1..=s.len() {
            let mut p = Peer::open(t.addr, d);
            p.send(&s[..k]);
            if k < s.len() {
                std::thread::sleep(Duration::from_micros(300));
                p.send(&s[k..]);
            }
            check_admin_replies(&mut p);
        }
    }
    // Byte by byte.
    let d = Digests::default();
    let s = admin_session(d);
    let mut p = Peer::open(t.addr, d);
    for b in &s {
        p.send(std::slice::from_ref(b));
    }
    check_admin_replies(&mut p);
}

/// Admin queue connected and enabled; returns its cntlid.
fn enabled_admin(addr: SocketAddr, d: Digests) -> (Peer, u16) {
    let mut a = Peer::open(addr, d);
    a.send(&icreq(d));
    a.send(&connect(1, 0, 0xFFFF, d));
    a.send(&prop_set_cc(2, d));
    assert!(matches!(a.recv(), Some(Rx::IcResp)));
    let c = a.expect_resp();
    assert!(c.status.is_success());
    assert!(a.expect_resp().status.is_success());
    (a, c.dw0 as u16)
}

#[test]
fn io_session_split_and_merged() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests {
        header: true,
        data: true,
    };
    let (_admin, cntlid) = enabled_admin(t.addr, d);
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let mut s = icreq(d);
    s.extend(connect(1, 1, cntlid, d));
    s.extend(write_icd(2, 8, &data, d));
    s.extend(read_cmd(3, 8, 2, d));
    // Every split inside the in-capsule write, and the whole session merged.
    let start = s.len() - read_cmd(3, 8, 2, d).len() - write_icd(2, 8, &data, d).len();
    let mut rounds = 0;
    for k in (start..=s.len()).step_by(7) {
        let mut p = Peer::open(t.addr, d);
        p.send(&s[..k]);
        std::thread::sleep(Duration::from_micros(200));
        p.send(&s[k..]);
        assert!(matches!(p.recv(), Some(Rx::IcResp)));
        assert!(p.expect_resp().status.is_success(), "io connect");
        // The write and read may complete in either order; the read is
        // issued after the write on one queue, but both are in flight.
        let mut read_back = Vec::new();
        let mut done = 0;
        while done < 2 {
            match p.recv() {
                Some(Rx::Resp(c)) => {
                    assert!(c.status.is_success(), "{c:?}");
                    done += 1;
                }
                Some(Rx::Data(_, b, _)) => read_back.extend(b),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(read_back.len(), 8192);
        // The close frees the qid for the next round: wait until the target
        // has seen it (a fixed pause raced the teardown on a loaded machine).
        drop(p);
        rounds += 1;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while t.log().matches("I/O queue 1 closed").count() < rounds {
            assert!(
                std::time::Instant::now() < deadline,
                "queue {rounds} not closed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn term(p: &mut Peer) -> pdu::FatalError {
    loop {
        match p.recv() {
            Some(Rx::Term(e)) => {
                p.expect_closed();
                return e;
            }
            Some(Rx::Resp(_)) | Some(Rx::IcResp) | Some(Rx::R2T(_)) | Some(Rx::Data(..)) => {}
            None => panic!("closed without C2HTermReq"),
        }
    }
}

#[test]
fn malformed_pdus_get_c2h_term_req_and_others_keep_working() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests::default();
    let (mut healthy, _) = enabled_admin(t.addr, d);

    let case = |name: &str, pre: Vec<u8>, bad: Vec<u8>, want_fes: u16| {
        let mut p = Peer::open(t.addr, d);
        p.send(&pre);
        p.send(&bad);
        let e = term(&mut p);
        assert_eq!(e.fes, want_fes, "{name}: {e:?}");
    };
    let after_ic = || {
        let mut v = icreq(d);
        v.extend(connect(1, 0, 0xFFFF, d));
        v
    };
    // Anything but ICReq first.
    case(
        "capsule before icreq",
        vec![],
        identify_ctrl(1, d),
        fes::PDU_SEQUENCE_ERROR,
    );
    // PFV other than 0; HPDA out of range.
    let mut ic = icreq(d);
    ic[8] = 1;
    case("pfv", vec![], ic, fes::INVALID_HEADER_FIELD);
    let mut ic = icreq(d);
    ic[10] = 32;
    case("hpda", vec![], ic, fes::INVALID_HEADER_FIELD);
    // A second ICReq.
    case(
        "second icreq",
        after_ic(),
        icreq(d),
        fes::PDU_SEQUENCE_ERROR,
    );
    // Unknown type; wrong hlen; plen below header; pdo inside header.
    let mut x = identify_ctrl(5, d);
    x[0] = 0x0A;
    case("unknown type", after_ic(), x, fes::INVALID_HEADER_FIELD);
    let mut x = identify_ctrl(5, d);
    x[2] = 71;
    case("hlen", after_ic(), x, fes::INVALID_HEADER_FIELD);
    let mut x = identify_ctrl(5, d);
    x[4..8].copy_from_slice(&10u32.to_le_bytes());
    case("plen short", after_ic(), x, fes::INVALID_HEADER_FIELD);
    let mut x = write_icd(5, 0, &[0u8; 4096], d);
    x[3] = 8;
    case("pdo", after_ic(), x, fes::INVALID_HEADER_FIELD);
    // In-capsule data above the advertised size (admin: 8 KiB).
    let mut x = Vec::new();
    pdu::encode_capsule_cmd(&Sqe::default().0, 16384, d, &mut x);
    x.extend(vec![0u8; 16384]);
    case("icd too large", after_ic(), x, fes::DATA_LIMIT_EXCEEDED);
    // A header digest when none was negotiated.
    let mut x = identify_ctrl(5, d);
    x[1] |= flags::HDGSTF;
    case("hdgst flag", after_ic(), x, fes::INVALID_HEADER_FIELD);
    // H2CData for a transfer that does not exist.
    let mut x = Vec::new();
    pdu::encode_data_header(
        pdu_type::H2C_DATA,
        DataHeader {
            cccid: 9,
            ttag: 3,
            offset: 0,
            length: 512,
        },
        flags::LAST_PDU,
        d,
        &mut x,
    );
    x.extend(vec![0u8; 512]);
    case("h2c unknown ttag", after_ic(), x, fes::INVALID_HEADER_FIELD);

    // A wrong header digest.
    let dd = Digests {
        header: true,
        data: false,
    };
    let mut p = Peer::open(t.addr, dd);
    p.send(&icreq(dd));
    let mut x = identify_ctrl(1, dd);
    x[72] ^= 0xFF;
    p.send(&x);
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    assert_eq!(term(&mut p).fes, fes::HEADER_DIGEST_ERROR);

    // The healthy connection on the same core still works.
    healthy.send(&identify_ctrl(7, d));
    loop {
        match healthy.recv() {
            Some(Rx::Data(..)) => {}
            Some(Rx::Resp(c)) => {
                assert_eq!(c.cid, 7);
                assert!(c.status.is_success());
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // A host that sends H2CTermReq is closed without more ado.
    let mut p = Peer::open(t.addr, d);
    p.send(&icreq(d));
    let mut tr = Vec::new();
    pdu::encode_term_req(
        pdu_type::H2C_TERM_REQ,
        pdu::FatalError::header(0),
        &[],
        &mut tr,
    );
    p.send(&tr);
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    p.expect_closed();
    assert!(
        t.wait_log("H2CTermReq", Duration::from_secs(5)),
        "{}",
        t.log()
    );
}

#[test]
fn commands_out_of_sequence_get_statuses() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests::default();
    let mut p = Peer::open(t.addr, d);
    p.send(&icreq(d));
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    // SQSIZE 0 is refused, pointing at SQSIZE in the SQE.
    p.send(&connect_sized(9, 0, 0xFFFF, 0, d));
    let c = p.expect_resp();
    assert_eq!(c.status, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.dw0, 44);
    // Before Connect, only Connect.
    p.send(&identify_ctrl(1, d));
    assert_eq!(p.expect_resp().status, Status::COMMAND_SEQUENCE_ERROR);
    p.send(&connect(2, 0, 0xFFFF, d));
    assert!(p.expect_resp().status.is_success());
    // Admin commands before CC.EN=1.
    p.send(&identify_ctrl(3, d));
    assert_eq!(p.expect_resp().status, Status::COMMAND_SEQUENCE_ERROR);
    // A second Connect on a connected queue.
    p.send(&connect(4, 0, 0xFFFF, d));
    assert_eq!(p.expect_resp().status, Status::COMMAND_SEQUENCE_ERROR);
    // I/O opcodes on the admin queue are admin opcodes there: Write (0x01) is
    // not an admin command.
    p.send(&prop_set_cc(5, d));
    assert!(p.expect_resp().status.is_success());
    p.send(&write_icd(6, 0, &[0u8; 4096], d));
    assert_eq!(p.expect_resp().status, Status::INVALID_OPCODE);
}

/// xorshift64: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_sessions_never_hurt_the_target() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "2"]);
    let d = Digests::default();
    let (mut healthy, cntlid) = enabled_admin(t.addr, d);
    let mut base = icreq(d);
    base.extend(connect(1, 0, 0xFFFF, d));
    base.extend(prop_set_cc(2, d));
    base.extend(identify_ctrl(3, d));
    let mut io = icreq(d);
    io.extend(connect(1, 1, cntlid, d));
    io.extend(write_icd(2, 0, &[5u8; 8192], d));
    io.extend(read_cmd(3, 0, 2, d));
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..400 {
        if round % 50 == 0 {
            // Keep the healthy controller alive, and check it on the way.
            let mut ka = Sqe::default();
            ka.set_opcode(admin::KEEP_ALIVE).set_cid(100 + round as u16);
            healthy.send(&capsule(&ka, &[], d));
            assert!(healthy.expect_resp().status.is_success());
        }
        let mut s = if round % 2 == 0 {
            base.clone()
        } else {
            io.clone()
        };
        // Flip, overwrite or drop a few bytes, or cut the stream short.
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(s.len());
            match rng.below(4) {
                0 => s[at] ^= 1 << rng.below(8),
                1 => s[at] = rng.next() as u8,
                2 => {
                    s.remove(at);
                }
                _ => s.truncate(at.max(1)),
            }
        }
        let mut p = Peer::open(t.addr, d);
        p.s.set_read_timeout(Some(Duration::from_millis(40)))
            .unwrap();
        let _ = p.s.write_all(&s);
        // Read whatever comes back until the target closes or goes quiet.
        let mut sink = [0u8; 65536];
        while let Ok(n) = p.s.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    }
    // The target is alive and the untouched connection still works.
    healthy.send(&identify_ctrl(9, d));
    loop {
        match healthy.recv() {
            Some(Rx::Data(..)) => {}
            Some(Rx::Resp(c)) => {
                assert_eq!(c.cid, 9);
                assert!(c.status.is_success());
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let mut p = Peer::open(t.addr, d);
    p.send(&admin_session(d));
    check_admin_replies(&mut p);
}

/// A write whose data the target asks for by R2T (Transport SGL).
fn write_r2t(cid: u16, slba: u64, blocks: u32, sgl_len: u32, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::WRITE)
        .set_cid(cid)
        .set_nsid(1)
        .set_cdw(10, slba as u32)
        .set_cdw(12, blocks - 1)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: sgl_len,
            id: sgl::TRANSPORT_DATA_BLOCK,
        });
    capsule(&sqe, &[], d)
}

fn h2c(cccid: u16, ttag: u16, offset: u32, data: &[u8], d: Digests) -> Vec<u8> {
    let mut x = Vec::new();
    pdu::encode_data_header(
        pdu_type::H2C_DATA,
        DataHeader {
            cccid,
            ttag,
            offset,
            length: data.len() as u32,
        },
        flags::LAST_PDU,
        d,
        &mut x,
    );
    x.extend_from_slice(data);
    if d.data {
        x.extend_from_slice(&pdu::digest(data).to_le_bytes());
    }
    x
}

/// An I/O queue on its own connection, connected to `cntlid`.
fn io_peer(addr: SocketAddr, d: Digests, cntlid: u16, qid: u16, sqsize: u16) -> Peer {
    let mut p = Peer::open(addr, d);
    p.send(&icreq(d));
    p.send(&connect_sized(1, qid, cntlid, sqsize, d));
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    let c = p.expect_resp();
    assert!(c.status.is_success(), "I/O connect: {c:?}");
    p
}

fn expect_r2t(p: &mut Peer) -> DataHeader {
    match p.recv() {
        Some(Rx::R2T(h)) => h,
        other => panic!("expected R2T, got {other:?}"),
    }
}

/// I/O queue 1 of `cntlid` on a socket with a 4 KiB receive buffer: the
/// target's sends to it stall at once.
fn slow_reader(addr: SocketAddr, cntlid: u16, d: Digests) -> Peer {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut p = Peer { s, d };
    p.send(&icreq(d));
    p.send(&connect_sized(1, 1, cntlid, 31, d));
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    assert!(p.expect_resp().status.is_success());
    p
}

/// Identify on the admin queue still answers: the target is up and this
/// core serves its other connections.
fn still_serving(admin: &mut Peer, cid: u16, d: Digests) {
    admin.send(&identify_ctrl(cid, d));
    loop {
        match admin.recv() {
            Some(Rx::Data(..)) => {}
            Some(Rx::Resp(c)) => {
                assert_eq!(c.cid, cid);
                assert!(c.status.is_success(), "{c:?}");
                return;
            }
            other => panic!("admin queue: {other:?}"),
        }
    }
}

#[test]
fn bad_h2c_data_gets_c2h_term_req() {
    // 1 MiB transfers, MAXH2CDATA 128 KiB.
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:16M",
        "--cores",
        "1",
        "--max-io-size",
        "1M",
    ]);
    let d = Digests::default();
    let (mut admin, cntlid) = enabled_admin(t.addr, d);
    let block = vec![0x5Au8; 4096];
    type Bad = fn(DataHeader, &[u8]) -> Vec<u8>;
    let cases: [(&str, u32, Bad, u16); 6] = [
        (
            "wrong cccid",
            1,
            |h, b| h2c(h.cccid + 1, h.ttag, 0, b, Digests::default()),
            fes::INVALID_HEADER_FIELD,
        ),
        (
            "wrong ttag",
            1,
            |h, b| h2c(h.cccid, h.ttag + 1, 0, b, Digests::default()),
            fes::INVALID_HEADER_FIELD,
        ),
        (
            "wrong offset",
            2,
            |h, b| h2c(h.cccid, h.ttag, 4096, b, Digests::default()),
            fes::DATA_OUT_OF_RANGE,
        ),
        (
            "overflowing the R2T",
            1,
            |h, _| h2c(h.cccid, h.ttag, 0, &[0u8; 8192], Digests::default()),
            fes::DATA_OUT_OF_RANGE,
        ),
        (
            "after the R2T was satisfied",
            1,
            |h, b| {
                let mut x = h2c(h.cccid, h.ttag, 0, b, Digests::default());
                x.extend(h2c(h.cccid, h.ttag, 4096, b, Digests::default()));
                x
            },
            fes::INVALID_HEADER_FIELD,
        ),
        (
            "above MAXH2CDATA",
            64,
            |h, _| {
                h2c(
                    h.cccid,
                    h.ttag,
                    0,
                    &vec![0u8; 256 * 1024],
                    Digests::default(),
                )
            },
            fes::DATA_LIMIT_EXCEEDED,
        ),
    ];
    for (i, (name, blocks, bad, want)) in cases.into_iter().enumerate() {
        let mut p = io_peer(t.addr, d, cntlid, i as u16 + 1, 31);
        p.send(&write_r2t(10, 0, blocks, blocks * 4096, d));
        let h = expect_r2t(&mut p);
        assert_eq!((h.cccid, h.offset, h.length), (10, 0, blocks * 4096));
        p.send(&bad(h, &block));
        let e = term(&mut p);
        assert_eq!(e.fes, want, "{name}: {e:?}");
        still_serving(&mut admin, 20 + i as u16, d);
    }
    // Nothing of the dead queues stays behind: their R2T buffers and
    // controller bindings are gone once the admin queue closes too.
    drop(admin);
    assert!(
        t.wait_log(
            "0 connections, 0 controllers, DMA memory in use 0 bytes",
            Duration::from_secs(10)
        ),
        "{}",
        t.log()
    );
}

#[test]
fn data_digest_errors_fail_the_command_not_the_connection() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests {
        header: false,
        data: true,
    };
    let (_admin, cntlid) = enabled_admin(t.addr, d);
    let mut p = io_peer(t.addr, d, cntlid, 1, 31);
    let data = vec![0xA5u8; 4096];
    // In-capsule data with a wrong digest.
    let mut x = write_icd(2, 0, &data, d);
    let n = x.len();
    x[n - 1] ^= 1;
    p.send(&x);
    let c = p.expect_resp();
    assert_eq!((c.cid, c.status), (2, Status::TRANSIENT_TRANSPORT_ERROR));
    // H2CData with a wrong digest.
    p.send(&write_r2t(3, 0, 1, 4096, d));
    let h = expect_r2t(&mut p);
    let mut x = h2c(h.cccid, h.ttag, 0, &data, d);
    let n = x.len();
    x[n - 2] ^= 1;
    p.send(&x);
    let c = p.expect_resp();
    assert_eq!((c.cid, c.status), (3, Status::TRANSIENT_TRANSPORT_ERROR));
    // Neither write landed; the queue works.
    p.send(&read_cmd(4, 0, 1, d));
    match p.recv() {
        Some(Rx::Data(_, b, _)) => assert_eq!(b, vec![0u8; 4096]),
        other => panic!("{other:?}"),
    }
    assert!(p.expect_resp().status.is_success());
    p.send(&write_icd(5, 0, &data, d));
    assert!(p.expect_resp().status.is_success());
}

#[test]
fn command_rules_on_io_queues() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests::default();
    let (mut admin, cntlid) = enabled_admin(t.addr, d);
    let mut p = io_peer(t.addr, d, cntlid, 1, 31);
    // A CID reused while its command is outstanding (waiting for data).
    p.send(&write_r2t(5, 0, 1, 4096, d));
    let h = expect_r2t(&mut p);
    p.send(&read_cmd(5, 0, 1, d));
    let c = p.expect_resp();
    assert_eq!((c.cid, c.status), (5, Status::CID_CONFLICT));
    // The first command is unharmed.
    p.send(&h2c(5, h.ttag, 0, &[7u8; 4096], d));
    let c = p.expect_resp();
    assert!(c.status.is_success() && c.cid == 5, "{c:?}");
    // SGL types the command cannot use.
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::READ)
        .set_cid(6)
        .set_nsid(1)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: 4096,
            id: sgl::DATA_BLOCK_OFFSET,
        });
    p.send(&capsule(&sqe, &[], d));
    assert_eq!(p.expect_resp().status, Status::SGL_TYPE_INVALID);
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::WRITE)
        .set_cid(7)
        .set_nsid(1)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: 4096,
            id: 0x00,
        });
    p.send(&capsule(&sqe, &[], d));
    assert_eq!(p.expect_resp().status, Status::SGL_TYPE_INVALID);
    // An SGL length that disagrees with NLB, both ways.
    p.send(&write_r2t(8, 0, 1, 8192, d));
    assert_eq!(p.expect_resp().status, Status::DATA_SGL_LENGTH_INVALID);
    p.send(&write_r2t(9, 0, 2, 4096, d));
    assert_eq!(p.expect_resp().status, Status::DATA_SGL_LENGTH_INVALID);
    // NLB past the namespace (16 MiB = 4096 blocks).
    p.send(&read_cmd(10, 4095, 2, d));
    assert_eq!(p.expect_resp().status, Status::LBA_OUT_OF_RANGE);
    // Admin and fabrics-admin commands on an I/O queue.
    p.send(&identify_ctrl(11, d));
    assert_eq!(p.expect_resp().status, Status::INVALID_OPCODE);
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::FABRICS)
        .set_fctype(fctype::PROPERTY_GET)
        .set_cid(12);
    PropertyCmd {
        size8: true,
        offset: property::CAP,
        value: 0,
    }
    .encode(&mut sqe);
    p.send(&capsule(&sqe, &[], d));
    assert_eq!(p.expect_resp().status, Status::INVALID_OPCODE);
    p.send(&prop_set_cc(13, d));
    assert_eq!(p.expect_resp().status, Status::INVALID_OPCODE);
    still_serving(&mut admin, 30, d);
}

/// Fused operations (FUSES = 0 in Identify) and PRP data pointers (fabrics
/// carry data by SGL only) are refused with Invalid Field, and nothing runs.
#[test]
fn fused_and_prp_commands_are_refused() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests::default();
    let (mut admin, cntlid) = enabled_admin(t.addr, d);
    let mut p = io_peer(t.addr, d, cntlid, 1, 31);
    let data = [0x5Au8; 4096];
    let as_sqe = |pdu: &[u8]| Sqe::from_slice(&pdu[8..8 + 64]);
    // A fused pair: first (01b) then second (10b) command, each a write.
    for (cid, fuse) in [(1u16, 0b01u8), (2, 0b10)] {
        let mut sqe = as_sqe(&write_icd(cid, cid as u64, &data, d));
        sqe.set_flags(sqe.flags() | fuse);
        p.send(&capsule(&sqe, &data, d));
        assert_eq!(p.expect_resp().status, Status::INVALID_FIELD, "fuse {fuse}");
    }
    // PRP (PSDT 00b) and the reserved 11b.
    for (cid, psdt) in [(3u16, 0x00u8), (4, 0xC0)] {
        let mut sqe = as_sqe(&write_icd(cid, cid as u64, &data, d));
        sqe.set_flags(psdt);
        p.send(&capsule_raw(&sqe, &data, d));
        assert_eq!(
            p.expect_resp().status,
            Status::INVALID_FIELD,
            "psdt {psdt:#x}"
        );
    }
    // PSDT 10b (SGL for metadata too) is an SGL command like 01b.
    let mut sqe = as_sqe(&write_icd(5, 5, &data, d));
    sqe.set_flags(0x80);
    p.send(&capsule_raw(&sqe, &data, d));
    assert!(p.expect_resp().status.is_success());
    // None of the refused writes reached the namespace.
    for lba in 1..=4u64 {
        p.send(&read_cmd(10 + lba as u16, lba, 1, d));
        match p.recv() {
            Some(Rx::Data(_, got, _)) => assert_eq!(got, vec![0u8; 4096], "lba {lba}"),
            other => panic!("expected data, got {other:?}"),
        }
        assert!(p.expect_resp().status.is_success());
    }
    still_serving(&mut admin, 30, d);
}

#[test]
fn more_commands_than_sqsize_close_the_queue() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests::default();
    let (mut admin, cntlid) = enabled_admin(t.addr, d);
    // SQSIZE 3: four entries. Writes waiting for their data stay outstanding.
    let mut p = io_peer(t.addr, d, cntlid, 1, 3);
    for cid in 0..4 {
        p.send(&write_r2t(cid, cid as u64, 1, 4096, d));
        assert_eq!(expect_r2t(&mut p).cccid, cid);
    }
    p.send(&write_r2t(4, 4, 1, 4096, d));
    assert_eq!(term(&mut p).fes, fes::PDU_SEQUENCE_ERROR);
    still_serving(&mut admin, 30, d);
}

#[test]
fn connect_identity_and_nqn_checks() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests::default();
    let (mut admin, cntlid) = enabled_admin(t.addr, d);
    let io_connect = |data: Vec<u8>| {
        let mut sqe = Sqe::default();
        sqe.set_opcode(admin::FABRICS)
            .set_fctype(fctype::CONNECT)
            .set_cid(1)
            .set_sgl(SglDescriptor {
                addr: 0,
                length: 1024,
                id: sgl::DATA_BLOCK_OFFSET,
            });
        ConnectCmd {
            recfmt: 0,
            qid: 1,
            sqsize: 31,
            cattr: 0,
            kato_ms: 0,
        }
        .encode(&mut sqe);
        let mut p = Peer::open(t.addr, d);
        p.send(&icreq(d));
        p.send(&capsule(&sqe, &data, d));
        assert!(matches!(p.recv(), Some(Rx::IcResp)));
        p.expect_resp()
    };
    let good = ConnectData {
        hostid: [1; 16],
        cntlid,
        subnqn: NQN.into(),
        hostnqn: HOSTNQN.into(),
    };
    // Another host NQN than the controller's.
    let mut other = good.clone();
    other.hostnqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000002".into();
    let c = io_connect(other.encode().to_vec());
    assert_eq!(c.status, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.dw0 & 0xFFFF, 512, "IPO: HOSTNQN");
    // NQNs without a terminating NUL, and not UTF-8.
    let mut raw = good.encode().to_vec();
    raw[256..512].fill(b'a');
    let c = io_connect(raw);
    assert_eq!(c.status, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.dw0 & 0xFFFF, 256, "IPO: SUBNQN");
    let mut raw = good.encode().to_vec();
    raw[512 + 4] = 0xFF;
    let c = io_connect(raw);
    assert_eq!(c.status, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.dw0 & 0xFFFF, 512, "IPO: HOSTNQN");
    // The well-formed one still connects.
    assert!(io_connect(good.encode().to_vec()).status.is_success());
    still_serving(&mut admin, 30, d);
}

#[test]
fn partial_pdus_then_close_or_silence_free_everything() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:16M",
        "--cores",
        "1",
        "--pdu-timeout",
        "400ms",
        "--connect-timeout",
        "400ms",
    ]);
    let d = Digests::default();
    let (mut admin, cntlid) = enabled_admin(t.addr, d);
    let ic = icreq(d);
    let write = write_icd(2, 0, &[1u8; 4096], d);
    // Cut after the common header, inside the rest of a header, inside
    // data, then close.
    for (name, pre, cut) in [
        ("icreq header", vec![], ic[..8].to_vec()),
        ("icreq half", vec![], ic[..64].to_vec()),
        ("capsule header", ic.clone(), write[..8].to_vec()),
        ("capsule sqe", ic.clone(), write[..40].to_vec()),
        ("capsule data", ic.clone(), write[..1000].to_vec()),
    ] {
        let mut p = Peer::open(t.addr, d);
        p.send(&pre);
        p.send(&cut);
        p.s.shutdown(std::net::Shutdown::Write).unwrap();
        loop {
            match p.recv() {
                Some(Rx::IcResp) => {}
                None => break,
                other => panic!("{name}: {other:?}"),
            }
        }
        still_serving(&mut admin, 40, d);
    }
    // The same cuts on a connected I/O queue, then silence: the PDU timer
    // closes it.
    let mut p = io_peer(t.addr, d, cntlid, 1, 31);
    p.send(&write[..1000]);
    p.expect_closed();
    assert!(t.wait_log("partial PDU", Duration::from_secs(5)));
    // Silence before ICReq, and after ICReq without Connect.
    let mut p = Peer::open(t.addr, d);
    p.expect_closed();
    assert!(t.wait_log("no ICReq within", Duration::from_secs(5)));
    let mut p = Peer::open(t.addr, d);
    p.send(&ic);
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    p.expect_closed();
    assert!(t.wait_log("no Connect within", Duration::from_secs(5)));
    still_serving(&mut admin, 41, d);
    drop(admin);
    assert!(
        t.wait_log(
            "0 connections, 0 controllers, DMA memory in use 0 bytes",
            Duration::from_secs(10)
        ),
        "{}",
        t.log()
    );
}

/// A RAM read keeps its blocks held until its data is sent, so that each
/// block goes out whole; a host that stops reading its socket must not
/// keep them held (and another host's writes to them waiting) for as long
/// as it likes. A peer with a tiny receive buffer asks for block 0 many
/// times and reads nothing; another host's write of block 0 must complete,
/// and the stalled peer, once it reads, gets every block whole.
#[test]
fn a_host_that_stops_reading_does_not_hold_blocks_against_writers() {
    use nvmf_tpc::host::{Controller, HostConfig};
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests::default();
    let (_admin, cntlid) = enabled_admin(t.addr, d);
    let mut p = slow_reader(t.addr, cntlid, d);
    for cid in 10..40u16 {
        p.send(&read_cmd(cid, 0, 32, d));
    }
    // Another host writes block 0 while those reads sit unsent.
    let addr = t.addr;
    let wrote = std::thread::spawn(move || {
        run(move || async move {
            let c = Controller::connect(HostConfig::new(addr, NQN))
                .await
                .unwrap();
            let q = c.connect_io_queue(1).await.unwrap();
            q.write(1, 0, &[0xEE; 4096], 4096, false).await.is_ok()
        })
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !wrote.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "a write waited 20 s behind a host that does not read"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(wrote.join().unwrap());
    // Every block the stalled peer gets is one version whole.
    let mut got = 0;
    while got < 30 {
        match p.recv() {
            Some(Rx::Data(_, data, _)) => {
                for b in data.chunks(4096) {
                    assert!(b.iter().all(|&x| x == b[0]), "a torn block");
                }
            }
            Some(Rx::Resp(c)) => {
                assert!(c.status.is_success());
                got += 1;
            }
            other => panic!("{other:?}"),
        }
    }
}

/// SPDK's host aborts its Asynchronous Event Requests on its own side before
/// it shuts a controller down, and reads CC with the CID an AER held: that
/// read must succeed (a Command ID Conflict failed SPDK's shutdown), and the
/// forgotten AER must never complete under the reused CID. Other conflicts
/// stay conflicts (`command_rules_on_io_queues`).
#[test]
fn a_reused_aer_cid_is_a_new_command() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests::default();
    let (mut a, _) = enabled_admin(t.addr, d);
    let mut aer = Sqe::default();
    aer.set_opcode(admin::ASYNC_EVENT_REQUEST).set_cid(9);
    a.send(&capsule(&aer, &[], d));
    let mut get = Sqe::default();
    get.set_opcode(admin::FABRICS)
        .set_fctype(fctype::PROPERTY_GET)
        .set_cid(9);
    PropertyCmd {
        size8: false,
        offset: property::CC,
        value: 0,
    }
    .encode(&mut get);
    a.send(&capsule(&get, &[], d));
    let c = a.expect_resp();
    assert_eq!((c.cid, c.status), (9, Status::SUCCESS), "{c:?}");
    assert_eq!(c.dw0 & 1, 1, "CC.EN as set by enabled_admin");
    // The next completion is the next command's: nothing for the AER.
    let mut ka = Sqe::default();
    ka.set_opcode(admin::KEEP_ALIVE).set_cid(10);
    a.send(&capsule(&ka, &[], d));
    let c = a.expect_resp();
    assert_eq!((c.cid, c.status), (10, Status::SUCCESS), "{c:?}");
}

/// NVMe over Fabrics 1.1 Connect, CATTR bit 2: the host disables SQ flow
/// control. NVMe/TCP 1.0 §3.6.2.7: a read on such a queue may then end with
/// a C2HData PDU carrying LAST_PDU and SUCCESS and no CapsuleResp. Without
/// it, C2HData never carries SUCCESS and a CapsuleResp follows. The numbers
/// are the specification's, written out, not the wire module's.
#[test]
fn sq_flow_control_off_ends_reads_with_a_successful_c2h_data() {
    const C2H_DATA: u8 = 0x07;
    const LAST_PDU: u8 = 0x04;
    const SUCCESS: u8 = 0x08;
    const CATTR_SQ_FLOW_OFF: u8 = 0x04;
    // 256 KiB reads come in two C2HData PDUs of 128 KiB.
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:16M",
        "--max-io-size",
        "1M",
    ]);
    let d = Digests::default();
    let (_admin, cntlid) = enabled_admin(t.addr, d);
    for (qid, cattr) in [(1u16, CATTR_SQ_FLOW_OFF), (2, 0)] {
        let sqe = connect_sqe(1, qid, 31, cattr);
        // CDW11 bits 23:16 are CATTR: byte 46 of the SQE.
        assert_eq!(sqe.0[46], cattr);
        let mut p = Peer::open(t.addr, d);
        p.send(&icreq(d));
        p.send(&capsule(&sqe, &connect_data(cntlid), d));
        assert!(matches!(p.recv(), Some(Rx::IcResp)));
        assert!(p.expect_resp().status.is_success());
        p.send(&read_cmd(5, 0, 64, d));
        // C2HData carries at most 128 KiB (README, Limits): two PDUs.
        let (mut got, mut pdus) = (0, 0);
        let last_flags = loop {
            let mut ch = [0u8; 8];
            p.s.read_exact(&mut ch).unwrap();
            assert_eq!(
                ch[0], C2H_DATA,
                "qid {qid}: PDU {ch:?} before the data ended"
            );
            let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
            let mut rest = vec![0u8; plen - 8];
            p.s.read_exact(&mut rest).unwrap();
            let len = plen - usize::from(ch[3]);
            assert!(len <= 128 << 10, "a C2HData PDU of {len} bytes");
            got += len;
            pdus += 1;
            if got == 64 * 4096 {
                assert_eq!(pdus, 2);
                break ch[1];
            }
            assert_eq!(
                ch[1] & (LAST_PDU | SUCCESS),
                0,
                "qid {qid}: flags of a middle PDU"
            );
        };
        // The next command's answer is the next PDU: none came for the read
        // in between if SQ flow control is off.
        p.send(&flush_cmd(6, d));
        let next = p.expect_resp();
        if cattr == CATTR_SQ_FLOW_OFF {
            assert_eq!(
                last_flags,
                LAST_PDU | SUCCESS,
                "qid {qid}: last C2HData flags"
            );
            assert_eq!(
                next.cid, 6,
                "qid {qid}: a CapsuleResp followed a SUCCESS C2HData"
            );
        } else {
            assert_eq!(last_flags, LAST_PDU, "qid {qid}: last C2HData flags");
            assert_eq!((next.cid, next.status.is_success()), (5, true));
            assert_eq!(p.expect_resp().cid, 6);
        }
        assert!(next.status.is_success(), "qid {qid}: {next:?}");
    }
}

/// A peer that takes its core's DMA memory and never sends the data it was
/// asked for (8 R2Ts of 128 KiB against 1 MiB) makes another host's writes
/// wait, never fail: they complete once the peer's controller expires
/// (KATO 3 s) and its buffers return (README, "slow others down").
#[test]
fn another_host_waits_for_dma_memory_a_stalled_peer_holds_and_never_fails() {
    use nvmf_tpc::host::{Controller, HostConfig};
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:16M",
        "--cores",
        "1",
        "--dma-memory",
        "1M",
        "--in-capsule-data",
        "4K",
    ]);
    let d = Digests::default();
    let mut a = Peer::open(t.addr, d);
    a.send(&icreq(d));
    let mut sqe = connect_sqe(1, 0, 31, 0);
    sqe.set_cdw(12, 3000); // KATO, ms (CDW12 of Connect)
    a.send(&capsule(&sqe, &connect_data(0xFFFF), d));
    a.send(&prop_set_cc(2, d));
    assert!(matches!(a.recv(), Some(Rx::IcResp)));
    let cntlid = a.expect_resp().dw0 as u16;
    assert!(a.expect_resp().status.is_success());
    let mut io = io_peer(t.addr, d, cntlid, 1, 31);
    for cid in 0..8u16 {
        io.send(&write_r2t(cid, cid as u64 * 32, 32, 128 << 10, d));
        assert_eq!(expect_r2t(&mut io).cccid, cid);
    }
    let addr = t.addr;
    let done = run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        let data = pattern(64 << 10, 5);
        q.write(1, 1000, &data, 4096, false).await.unwrap();
        q.read(1, 1000, 16, 4096).await.unwrap() == data
    });
    assert!(done, "the other host's data differs");
    // It did wait: memory was spent, and came back with the expiry.
    let log = t.log();
    assert!(log.contains("DMA memory of this core spent"), "{log}");
    assert!(
        log.contains("keep alive timeout (3000 ms) expired"),
        "{log}"
    );
    drop((a, io));
}

/// A peer that stops reading cannot grow the target's memory (README,
/// "Who may do what"): with 32 reads of 1 MiB unread (its receive buffer is
/// 4 KiB), thousands more commands either stay in the socket (the target
/// stops reading while it cannot send) or end the connection (a completion
/// counts against SQSIZE until it is sent); the target's resident memory
/// does not grow with them, and the target keeps serving.
#[test]
fn a_peer_that_stops_reading_cannot_grow_memory() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:64M",
        "--cores",
        "1",
        "--max-io-size",
        "1M",
    ]);
    let rss = || {
        let s = std::fs::read_to_string(format!("/proc/{}/status", t.pid())).unwrap();
        let kib: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        kib
    };
    // Resident memory once it has stopped moving (within 256 KiB over
    // 300 ms): the target has done what it will with what it was sent.
    let settled = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut last = rss();
        let mut still = 0;
        while still < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = rss();
            still = if now.abs_diff(last) < 256 {
                still + 1
            } else {
                0
            };
            last = now;
        }
        last
    };
    let d = Digests::default();
    let (mut admin, cntlid) = enabled_admin(t.addr, d);
    let mut p = slow_reader(t.addr, cntlid, d);
    for cid in 10..42u16 {
        p.send(&read_cmd(cid, 0, 256, d));
    }
    let before = settled();
    // 20,000 more commands (1.4 MB), as many as the socket takes.
    p.s.set_nonblocking(true).unwrap();
    let mut more = Vec::new();
    for cid in 100..20_100u16 {
        more.extend(read_cmd(cid, 0, 1, d));
    }
    let mut sent = 0;
    while sent < more.len() {
        match p.s.write(&more[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => break, // closed: the target refused the excess
        }
    }
    let after = settled();
    assert!(
        after < before + 4096,
        "resident memory grew from {before} KiB to {after} KiB with {sent} bytes of unread commands"
    );
    eprintln!("{sent} bytes of excess commands taken; RSS {before} -> {after} KiB");
    drop(p);
    still_serving(&mut admin, 30, d);
}
