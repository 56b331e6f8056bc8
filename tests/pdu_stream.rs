//! Raw byte streams against the real target: sessions split at every byte
//! boundary or merged into one write, malformed PDUs answered with a
//! C2HTermReq and a closed connection while other connections keep working,
//! commands out of sequence, and randomly mutated sessions.

mod common;
use common::raw::*;
use common::*;
use nvmf_tpc::wire::command::{admin, Sqe};
use nvmf_tpc::wire::pdu::{self, fes, flags, pdu_type, DataHeader, Digests};
use nvmf_tpc::wire::status::Status;
use std::io::{Read, Write};
use std::time::Duration;

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
