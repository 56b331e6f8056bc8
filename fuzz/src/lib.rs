//! Shared by the `queue` fuzz target and the `make_seeds` example: the
//! target configuration the fuzzer serves, the input format, and encoders of
//! valid NVMe/TCP host PDUs built on the crate's own wire encoders.
//!
//! Input format of the `queue` target (see `fuzz_targets/queue.rs`):
//!
//! | byte | meaning |
//! | ---- | ------- |
//! | 0    | prelude mode, `% 3`: 0 raw stream, 1 canned admin prelude, 2 canned I/O prelude |
//! | 1    | digests of the canned parts: bit 0 header digest, bit 1 data digest |
//! | 2..  | bytes written to the connection after the prelude |

use nvmf_tpc::config::{
    default_serial, namespace_ids, Backing, NamespaceConfig, SubsystemConfig, TargetConfig,
};
use nvmf_tpc::wire::command::{admin, fctype, io, sgl, SglDescriptor, Sqe};
use nvmf_tpc::wire::fabrics::{property, ConnectCmd, ConnectData, PropertyCmd, CNTLID_DYNAMIC};
use nvmf_tpc::wire::pdu::{self, pdu_type, DataHeader, Digests, FatalError, IcReq};
use std::time::Duration;

pub const NQN: &str = "nqn.2026-11.io.nvmf-tpc:fuzz";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000f022";
pub const HOSTID: [u8; 16] = [0xF2; 16];

/// The one namespace: a small RAM disk (reset before every input so that
/// reads and compares do not depend on earlier inputs), 512-byte blocks (so
/// that data-carrying inputs stay small), with a bad-block range so media
/// errors are reachable.
pub const NS_BYTES: u64 = 1 << 20;
pub const BLOCK: u32 = 512;
pub const BAD_BLOCKS: (u64, u64) = (200, 207);

/// Prelude modes (input byte 0, modulo 3).
pub const MODE_RAW: u8 = 0;
pub const MODE_ADMIN: u8 = 1;
pub const MODE_IO: u8 = 2;

/// Input byte 1 to digests.
pub fn digests_of(b: u8) -> Digests {
    Digests {
        header: b & 1 != 0,
        data: b & 2 != 0,
    }
}

pub fn digests_byte(d: Digests) -> u8 {
    (d.header as u8) | ((d.data as u8) << 1)
}

pub const NONE: Digests = Digests {
    header: false,
    data: false,
};
pub const BOTH: Digests = Digests {
    header: true,
    data: true,
};
pub const HDR: Digests = Digests {
    header: true,
    data: false,
};
pub const DATA: Digests = Digests {
    header: false,
    data: true,
};

/// The configuration the fuzzed shard serves: production defaults for queue
/// depth and transfer size, a 4 MiB DMA budget (so that 33 outstanding
/// 128 KiB R2T writes — 33 small capsules — exhaust it), small H2C/C2H data
/// PDU limits (so that splitting is reachable with small inputs) and short
/// setup timeouts.
pub fn target_config() -> TargetConfig {
    let (nguid, uuid, eui64) = namespace_ids(NQN, 1);
    TargetConfig {
        listen: vec![],
        cpus: vec![0],
        subsystems: vec![SubsystemConfig {
            nqn: NQN.to_string(),
            serial: default_serial(NQN),
            model: "nvmf-tpc-fuzz".to_string(),
            allow_any_host: true,
            hosts: vec![],
            namespaces: vec![NamespaceConfig {
                nsid: 1,
                backing: Backing::Ram(NS_BYTES),
                block_size: BLOCK,
                size_bytes: NS_BYTES,
                nguid,
                uuid,
                eui64,
                bad_blocks: vec![BAD_BLOCKS],
            }],
        }],
        queue_depth: nvmf_tpc::config::DEFAULT_QUEUE_DEPTH,
        max_io_size: nvmf_tpc::config::DEFAULT_MAX_IO_SIZE,
        in_capsule_data: nvmf_tpc::config::DEFAULT_IN_CAPSULE_DATA,
        maxh2cdata: 8192,
        max_c2h_data: 8192,
        max_io_queues: 4,
        max_connections: 64,
        max_controllers: 16,
        max_controllers_per_host: 16,
        dma_memory: 4 << 20,
        idle_poll: Duration::ZERO,
        connect_timeout: Duration::from_millis(200),
        pdu_timeout: Duration::from_millis(200),
        tcp_congestion: None,
        socket_buffer: 0,
    }
}

// ---- host PDUs ---------------------------------------------------------------

pub fn icreq(d: Digests) -> Vec<u8> {
    IcReq {
        pfv: 0,
        hpda: 0,
        digests: d,
        maxr2t: 0,
    }
    .encode()
    .to_vec()
}

/// A CapsuleCmd with optional in-capsule data (and its digest).
pub fn capsule(sqe: &Sqe, data: &[u8], d: Digests) -> Vec<u8> {
    let mut out = Vec::new();
    // PSDT 01b (SGLs), as every fabrics host sets it.
    let mut sqe = *sqe;
    sqe.set_flags(sqe.flags() | 0x40);
    pdu::encode_capsule_cmd(&sqe.0, data.len(), d, &mut out);
    out.extend_from_slice(data);
    if d.data && !data.is_empty() {
        out.extend_from_slice(&pdu::digest(data).to_le_bytes());
    }
    out
}

fn in_capsule(len: usize) -> SglDescriptor {
    SglDescriptor {
        addr: 0,
        length: len as u32,
        id: sgl::DATA_BLOCK_OFFSET,
    }
}

fn transport(len: usize) -> SglDescriptor {
    SglDescriptor {
        addr: 0,
        length: len as u32,
        id: sgl::TRANSPORT_DATA_BLOCK,
    }
}

/// Connect: `qid` 0 makes an admin queue (cntlid must be 0xFFFF) of 32
/// entries; I/O queues get 128 (the target's default depth, and Linux's), so
/// that one queue's outstanding 128 KiB R2T writes can exceed the 4 MiB DMA
/// budget. KATO 0 so that a controller's keep-alive task notices its end
/// within a second.
pub fn connect(cid: u16, qid: u16, cntlid: u16, d: Digests) -> Vec<u8> {
    connect_to(cid, qid, cntlid, NQN, d)
}

pub fn connect_to(cid: u16, qid: u16, cntlid: u16, subnqn: &str, d: Digests) -> Vec<u8> {
    let sqsize = if qid == 0 {
        31
    } else {
        nvmf_tpc::config::DEFAULT_QUEUE_DEPTH - 1
    };
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::FABRICS)
        .set_fctype(fctype::CONNECT)
        .set_cid(cid)
        .set_sgl(in_capsule(1024));
    ConnectCmd {
        recfmt: 0,
        qid,
        sqsize,
        cattr: 0,
        kato_ms: 0,
    }
    .encode(&mut sqe);
    let data = ConnectData {
        hostid: HOSTID,
        cntlid,
        subnqn: subnqn.into(),
        hostnqn: HOSTNQN.into(),
    }
    .encode();
    capsule(&sqe, &data, d)
}

pub fn admin_connect(cid: u16, d: Digests) -> Vec<u8> {
    connect(cid, 0, CNTLID_DYNAMIC, d)
}

fn property_cmd(cid: u16, fct: u8, offset: u32, value: u64, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::FABRICS).set_fctype(fct).set_cid(cid);
    PropertyCmd {
        size8: offset == property::CAP,
        offset,
        value,
    }
    .encode(&mut sqe);
    capsule(&sqe, &[], d)
}

/// Property Set CC: EN=1, IOSQES=6, IOCQES=4.
pub fn prop_set_cc_en(cid: u16, d: Digests) -> Vec<u8> {
    property_cmd(
        cid,
        fctype::PROPERTY_SET,
        property::CC,
        1 | (6 << 16) | (4 << 20),
        d,
    )
}

pub fn prop_get(cid: u16, offset: u32, d: Digests) -> Vec<u8> {
    property_cmd(cid, fctype::PROPERTY_GET, offset, 0, d)
}

pub fn disconnect(cid: u16, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::FABRICS)
        .set_fctype(fctype::DISCONNECT)
        .set_cid(cid);
    capsule(&sqe, &[], d)
}

/// The canned admin prelude of mode 1 (and of mode 2's separate admin
/// connection): ICReq, admin Connect (cid 0xFFF0), CC.EN=1 (cid 0xFFF1).
pub fn admin_prelude(d: Digests) -> Vec<u8> {
    let mut v = icreq(d);
    v.extend(admin_connect(0xFFF0, d));
    v.extend(prop_set_cc_en(0xFFF1, d));
    v
}

/// The canned I/O prelude of mode 2: ICReq, I/O Connect qid 1 (cid 0xFFF0).
pub fn io_prelude(cntlid: u16, d: Digests) -> Vec<u8> {
    let mut v = icreq(d);
    v.extend(connect(0xFFF0, 1, cntlid, d));
    v
}

// ---- admin commands ----------------------------------------------------------

pub fn identify(cid: u16, cns: u32, nsid: u32, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::IDENTIFY)
        .set_cid(cid)
        .set_nsid(nsid)
        .set_cdw(10, cns)
        .set_sgl(transport(4096));
    capsule(&sqe, &[], d)
}

pub fn get_log_page(cid: u16, lid: u8, len: usize, d: Digests) -> Vec<u8> {
    let numd = (len / 4 - 1) as u32;
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::GET_LOG_PAGE)
        .set_cid(cid)
        .set_nsid(0xFFFF_FFFF)
        .set_cdw(10, lid as u32 | ((numd & 0xFFFF) << 16))
        .set_cdw(11, numd >> 16)
        .set_sgl(transport(len));
    capsule(&sqe, &[], d)
}

pub fn set_features(cid: u16, fid: u8, value: u32, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::SET_FEATURES)
        .set_cid(cid)
        .set_cdw(10, fid as u32)
        .set_cdw(11, value);
    capsule(&sqe, &[], d)
}

pub fn get_features(cid: u16, fid: u8, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::GET_FEATURES)
        .set_cid(cid)
        .set_cdw(10, fid as u32);
    capsule(&sqe, &[], d)
}

pub fn simple_admin(cid: u16, opcode: u8, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(opcode).set_cid(cid);
    capsule(&sqe, &[], d)
}

pub fn keep_alive(cid: u16, d: Digests) -> Vec<u8> {
    simple_admin(cid, admin::KEEP_ALIVE, d)
}

pub fn aer(cid: u16, d: Digests) -> Vec<u8> {
    simple_admin(cid, admin::ASYNC_EVENT_REQUEST, d)
}

// ---- I/O commands --------------------------------------------------------------

fn rw_sqe(opcode: u8, cid: u16, slba: u64, blocks: u32) -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(opcode)
        .set_cid(cid)
        .set_nsid(1)
        .set_cdw(10, slba as u32)
        .set_cdw(11, (slba >> 32) as u32)
        .set_cdw(12, blocks - 1);
    sqe
}

/// Write with in-capsule data (a multiple of the block size).
pub fn write_icd(cid: u16, slba: u64, data: &[u8], d: Digests) -> Vec<u8> {
    let mut sqe = rw_sqe(io::WRITE, cid, slba, data.len() as u32 / BLOCK);
    sqe.set_sgl(in_capsule(data.len()));
    capsule(&sqe, data, d)
}

/// Write whose data the target asks for with an R2T.
pub fn write_r2t(cid: u16, slba: u64, blocks: u32, d: Digests) -> Vec<u8> {
    let mut sqe = rw_sqe(io::WRITE, cid, slba, blocks);
    sqe.set_sgl(transport((blocks * BLOCK) as usize));
    capsule(&sqe, &[], d)
}

/// H2CData answering R2T `ttag` of command `cid`, at `offset`.
pub fn h2c_data(cid: u16, ttag: u16, offset: u32, data: &[u8], last: bool, d: Digests) -> Vec<u8> {
    let mut out = Vec::new();
    pdu::encode_data_header(
        pdu_type::H2C_DATA,
        DataHeader {
            cccid: cid,
            ttag,
            offset,
            length: data.len() as u32,
        },
        if last { pdu::flags::LAST_PDU } else { 0 },
        d,
        &mut out,
    );
    out.extend_from_slice(data);
    if d.data {
        out.extend_from_slice(&pdu::digest(data).to_le_bytes());
    }
    out
}

pub fn read(cid: u16, slba: u64, blocks: u32, d: Digests) -> Vec<u8> {
    let mut sqe = rw_sqe(io::READ, cid, slba, blocks);
    sqe.set_sgl(transport((blocks * BLOCK) as usize));
    capsule(&sqe, &[], d)
}

pub fn compare_icd(cid: u16, slba: u64, data: &[u8], d: Digests) -> Vec<u8> {
    let mut sqe = rw_sqe(io::COMPARE, cid, slba, data.len() as u32 / BLOCK);
    sqe.set_sgl(in_capsule(data.len()));
    capsule(&sqe, data, d)
}

pub fn flush(cid: u16, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::FLUSH).set_cid(cid).set_nsid(1);
    capsule(&sqe, &[], d)
}

pub fn write_zeroes(cid: u16, slba: u64, blocks: u32, d: Digests) -> Vec<u8> {
    capsule(&rw_sqe(io::WRITE_ZEROES, cid, slba, blocks), &[], d)
}

/// Dataset Management, deallocate, ranges of (slba, blocks) in the capsule.
pub fn deallocate(cid: u16, ranges: &[(u64, u32)], d: Digests) -> Vec<u8> {
    let mut data = Vec::new();
    for &(slba, nlb) in ranges {
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&nlb.to_le_bytes());
        data.extend_from_slice(&slba.to_le_bytes());
    }
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::DATASET_MANAGEMENT)
        .set_cid(cid)
        .set_nsid(1)
        .set_cdw(10, ranges.len() as u32 - 1)
        .set_cdw(11, 1 << 2)
        .set_sgl(in_capsule(data.len()));
    capsule(&sqe, &data, d)
}

pub fn h2c_term_req(fes: u16) -> Vec<u8> {
    let mut out = Vec::new();
    pdu::encode_term_req(
        pdu_type::H2C_TERM_REQ,
        FatalError::new(fes, 0),
        &[],
        &mut out,
    );
    out
}

/// A recognisable data pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32 % 251) as u8 ^ seed).collect()
}

// ---- seeds -------------------------------------------------------------------------

/// One fuzz input: mode byte, digests byte, then the bytes after the prelude.
pub fn input(mode: u8, d: Digests, body: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![mode, digests_byte(d)];
    for b in body {
        v.extend_from_slice(b);
    }
    v
}

/// Valid sessions, each as the fuzz input that replays it.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use nvmf_tpc::wire::log_page::lid;
    let mut s = Vec::new();
    // Mode 1: admin commands on an enabled admin queue.
    s.push((
        "admin-identify",
        input(
            MODE_ADMIN,
            NONE,
            &[
                identify(1, 1, 0, NONE),
                identify(2, 0, 1, NONE),
                identify(3, 2, 0, NONE),
                get_log_page(4, lid::ERROR, 64, NONE),
                get_log_page(5, lid::SMART, 512, NONE),
                get_features(6, 0x07, NONE),
                keep_alive(7, NONE),
                prop_get(8, property::CSTS, NONE),
            ],
        ),
    ));
    s.push((
        "admin-features-digests",
        input(
            MODE_ADMIN,
            BOTH,
            &[
                identify(1, 1, 0, BOTH),
                set_features(2, 0x07, 0x0003_0003, BOTH),
                set_features(3, 0x0F, 2000, BOTH),
                aer(4, BOTH),
                prop_get(5, property::CAP, BOTH),
                keep_alive(6, BOTH),
            ],
        ),
    ));
    // Mode 2: I/O on queue 1 of an enabled controller.
    let b = BLOCK as usize;
    let d4 = pattern(b, 1);
    s.push((
        "io-write-icd-read",
        input(
            MODE_IO,
            NONE,
            &[write_icd(1, 8, &d4, NONE), read(2, 8, 1, NONE)],
        ),
    ));
    let d8 = pattern(2 * b, 2);
    s.push((
        "io-write-icd-read-digests",
        input(
            MODE_IO,
            BOTH,
            &[write_icd(1, 16, &d8, BOTH), read(2, 16, 2, BOTH)],
        ),
    ));
    // R2T writes: the target's first transfer gets ttag 0.
    s.push((
        "io-write-r2t",
        input(
            MODE_IO,
            NONE,
            &[
                write_r2t(1, 4, 1, NONE),
                h2c_data(1, 0, 0, &d4, true, NONE),
                read(2, 4, 1, NONE),
            ],
        ),
    ));
    let d16 = pattern(4 * b, 3);
    s.push((
        "io-write-r2t-split-flush-hdgst",
        input(
            MODE_IO,
            HDR,
            &[
                write_r2t(1, 32, 4, HDR),
                h2c_data(1, 0, 0, &d16[..2 * b], false, HDR),
                h2c_data(1, 0, 2 * BLOCK, &d16[2 * b..], true, HDR),
                flush(2, HDR),
                read(3, 32, 4, HDR),
            ],
        ),
    ));
    s.push((
        "io-zeroes-dsm-compare-ddgst",
        input(
            MODE_IO,
            DATA,
            &[
                write_zeroes(1, 40, 8, DATA),
                deallocate(2, &[(48, 4), (60, 2)], DATA),
                compare_icd(3, 40, &vec![0u8; b], DATA),
                flush(4, DATA),
            ],
        ),
    ));
    s.push((
        "io-pipelined",
        input(
            MODE_IO,
            NONE,
            &[
                write_icd(1, 0, &d4, NONE),
                write_icd(2, 1, &d4, NONE),
                write_r2t(3, 2, 2, NONE),
                read(4, 0, 2, NONE),
                h2c_data(3, 0, 0, &d8, true, NONE),
                read(5, 0, 4, NONE),
                flush(6, NONE),
                read(7, BAD_BLOCKS.0, 1, NONE),
                disconnect(8, NONE),
            ],
        ),
    ));
    // Mode 0: whole sessions, ICReq included.
    s.push((
        "raw-admin-session",
        input(
            MODE_RAW,
            NONE,
            &[
                icreq(NONE),
                admin_connect(1, NONE),
                prop_get(2, property::CAP, NONE),
                prop_set_cc_en(3, NONE),
                prop_get(4, property::CSTS, NONE),
                identify(5, 1, 0, NONE),
                disconnect(6, NONE),
            ],
        ),
    ));
    s.push((
        "raw-discovery",
        input(
            MODE_RAW,
            NONE,
            &[
                icreq(NONE),
                connect_to(
                    1,
                    0,
                    CNTLID_DYNAMIC,
                    nvmf_tpc::wire::fabrics::DISCOVERY_NQN,
                    NONE,
                ),
                prop_set_cc_en(2, NONE),
                identify(3, 1, 0, NONE),
                get_log_page(4, lid::DISCOVERY, 2048, NONE),
            ],
        ),
    ));
    s.push((
        "admin-term-req",
        input(
            MODE_ADMIN,
            HDR,
            &[
                keep_alive(1, HDR),
                h2c_term_req(pdu::fes::INVALID_HEADER_FIELD),
            ],
        ),
    ));
    s
}
