//! Raw PDUs against the real target: the rules of data transfers (R2T and
//! H2CData, data digests, SQ flow control off) and of commands on I/O
//! queues (opcodes, fused and PRP commands, SQSIZE, Connect identity, AER
//! CID reuse).

mod common;
use common::raw::*;
use common::*;
use nvmf_tpc::wire::command::{admin, fctype, io, sgl, SglDescriptor, Sqe};
use nvmf_tpc::wire::fabrics::{property, ConnectCmd, ConnectData, PropertyCmd};
use nvmf_tpc::wire::pdu::{fes, DataHeader, Digests};
use nvmf_tpc::wire::status::Status;
use std::io::Read;
use std::time::Duration;

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
