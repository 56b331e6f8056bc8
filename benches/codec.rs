//! Wire codec microbenchmarks: `cargo bench --bench codec`.
//!
//! Each line: the best and the median of 7 samples of about 100 ms each, in
//! nanoseconds per operation (a plain timing loop; no criterion).

use nvmf_tpc::wire::command::{io, sgl, Cqe, SglDescriptor, Sqe};
use nvmf_tpc::wire::pdu::{
    self, encode_capsule_cmd, encode_capsule_resp, encode_data_header, flags, layout, pdu_type,
    CommonHeader, DataHeader, Digests, Direction, CH_LEN, CMD_HLEN,
};
use nvmf_tpc::wire::status::Status;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Times `f`, printing ns per call (and the throughput of `bytes` per call).
fn bench(name: &str, bytes: usize, mut f: impl FnMut()) {
    // Calibrate: how many calls take about 100 ms.
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        if t.elapsed() >= Duration::from_millis(20) {
            n = (n * 5).max(1);
            break;
        }
        n *= 2;
    }
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let (best, median) = (samples[0], samples[samples.len() / 2]);
    let rate = if bytes > 0 {
        format!("  {:6.2} GB/s", bytes as f64 / best)
    } else {
        String::new()
    };
    println!("{name:<46} {best:9.1} ns/op (median {median:9.1}){rate}");
}

const NONE: Digests = Digests {
    header: false,
    data: false,
};
const HDGST: Digests = Digests {
    header: true,
    data: false,
};

fn read_sqe() -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::READ)
        .set_flags(0x40)
        .set_cid(17)
        .set_nsid(1)
        .set_cdw(10, 123_456)
        .set_cdw(11, 0)
        .set_cdw(12, 0)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: 4096,
            id: sgl::TRANSPORT_DATA_BLOCK,
        });
    sqe
}

fn main() {
    println!("wire codec (one core, no I/O)");

    // A read command's CapsuleCmd as it arrives: 72-byte header.
    let mut capsule = Vec::new();
    encode_capsule_cmd(&read_sqe().0, 0, NONE, &mut capsule);
    bench("CapsuleCmd header: decode + layout + SQE", 0, || {
        let b = black_box(&capsule[..]);
        let ch = CommonHeader::decode(&b[..CH_LEN]);
        let l = layout(ch, Direction::HostToController, NONE, 8192).unwrap();
        let sqe = Sqe::from_slice(&b[8..8 + 64]);
        black_box((
            l.data_len,
            sqe.opcode(),
            sqe.slba(),
            sqe.nlb(),
            sqe.sgl().length,
        ));
    });
    let mut capsule_hd = Vec::new();
    encode_capsule_cmd(&read_sqe().0, 0, HDGST, &mut capsule_hd);
    bench("CapsuleCmd header + header digest check", 0, || {
        let b = black_box(&capsule_hd[..]);
        let ch = CommonHeader::decode(&b[..CH_LEN]);
        let l = layout(ch, Direction::HostToController, HDGST, 8192).unwrap();
        let ok = pdu::digest(&b[..CMD_HLEN])
            == u32::from_le_bytes(b[CMD_HLEN..CMD_HLEN + 4].try_into().unwrap());
        let sqe = Sqe::from_slice(&b[8..8 + 64]);
        black_box((l.data_len, ok, sqe.slba()));
    });

    let cqe = Cqe {
        dw0: 0,
        dw1: 0,
        sqhd: 5,
        sqid: 1,
        cid: 17,
        status: Status::SUCCESS,
    };
    let mut out = Vec::with_capacity(256);
    bench("CQE encode (16 bytes)", 0, || {
        black_box(black_box(&cqe).encode());
    });
    bench("CapsuleResp encode (CQE in 24-byte PDU)", 0, || {
        out.clear();
        encode_capsule_resp(&black_box(&cqe).encode(), NONE, &mut out);
        black_box(&out);
    });
    let dh = DataHeader {
        cccid: 17,
        ttag: 0,
        offset: 0,
        length: 4096,
    };
    bench("C2HData header encode", 0, || {
        out.clear();
        encode_data_header(
            pdu_type::C2H_DATA,
            black_box(dh),
            flags::LAST_PDU | flags::SUCCESS,
            NONE,
            &mut out,
        );
        black_box(&out);
    });
    bench("C2HData header encode + header digest", 0, || {
        out.clear();
        encode_data_header(
            pdu_type::C2H_DATA,
            black_box(dh),
            flags::LAST_PDU,
            HDGST,
            &mut out,
        );
        black_box(&out);
    });

    let page: Vec<u8> = (0..4096u32).map(|i| (i * 31 + 7) as u8).collect();
    bench("CRC32C of 4 KiB (data digest)", 4096, || {
        black_box(pdu::digest(black_box(&page)));
    });
    let big: Vec<u8> = (0..128 * 1024u32).map(|i| (i * 13 + 1) as u8).collect();
    bench("CRC32C of 128 KiB", big.len(), || {
        black_box(pdu::digest(black_box(&big)));
    });
}
