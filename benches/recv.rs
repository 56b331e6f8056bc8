//! Receive path microbenchmark: `cargo bench --bench recv`.
//!
//! Feeds `transport::recv::RecvBuf` from memory (a reader that hands out at
//! most `CHUNK` bytes per read, as a socket would) and parses PDUs the way
//! the target's connection reader does: common header, layout, rest of the
//! header (and its digest), padding, then the data into its own buffer.
//! Prints nanoseconds per PDU (best and median of 7 samples).

use futures_lite::future::block_on;
use futures_lite::AsyncRead;
use nvmf_tpc::transport::recv::RecvBuf;
use nvmf_tpc::transport::socket::{Plain, Recv};
use nvmf_tpc::wire::command::{io as opcode, Sqe};
use nvmf_tpc::wire::pdu::{
    self, encode_capsule_cmd, encode_data_header, layout, pdu_type, CommonHeader, DataHeader,
    Digests, Direction, CH_LEN, DIGEST_LEN, MAX_HEADER_LEN,
};
use std::hint::black_box;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Bytes a socket read returns at most.
const CHUNK: usize = 64 * 1024;
/// PDUs parsed per timed call.
const BATCH: usize = 256;

/// An endless byte stream: `data` over and over, at most `CHUNK` per read.
struct Replay {
    data: Vec<u8>,
    at: usize,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(CHUNK).min(self.data.len() - self.at);
        let at = self.at;
        buf[..n].copy_from_slice(&self.data[at..at + n]);
        self.at = if at + n == self.data.len() { 0 } else { at + n };
        Poll::Ready(Ok(n))
    }
}

/// Parses one PDU from `rb`; its data lands in `data`. Returns the data length.
async fn parse_one<R: Recv>(rb: &mut RecvBuf<R>, d: Digests, data: &mut [u8]) -> io::Result<usize> {
    assert!(rb.next_pdu().await?);
    rb.fill(CH_LEN).await?;
    let ch = CommonHeader::decode(rb.take(CH_LEN));
    let l = layout(ch, Direction::HostToController, d, 1 << 20).expect("valid PDU");
    let mut hdr = [0u8; MAX_HEADER_LEN + DIGEST_LEN];
    let ht = l.header_total();
    ch.encode(&mut hdr[..CH_LEN]);
    rb.fill(ht - CH_LEN).await?;
    hdr[CH_LEN..ht].copy_from_slice(rb.take(ht - CH_LEN));
    if l.hdgst {
        let want = u32::from_le_bytes(hdr[l.hlen..ht].try_into().unwrap());
        assert_eq!(pdu::digest(&hdr[..l.hlen]), want);
    }
    rb.skip(l.pad_len()).await?;
    if l.data_len > 0 {
        let dst = &mut data[..l.data_len];
        rb.read_into(dst).await?;
        if l.ddgst {
            rb.fill(DIGEST_LEN).await?;
            let want = u32::from_le_bytes(rb.take(DIGEST_LEN).try_into().unwrap());
            assert_eq!(pdu::digest(dst), want);
        }
    }
    black_box(&hdr);
    Ok(l.data_len)
}

fn sqe(opcode: u8, lba: u64, len: u32) -> Sqe {
    let mut s = Sqe::default();
    s.set_opcode(opcode)
        .set_cid(lba as u16)
        .set_nsid(1)
        .set_cdw(10, lba as u32)
        .set_cdw(12, len / 4096 - 1);
    s
}

/// `count` PDUs as a host would send them.
fn stream(kind: &str, d: Digests, count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..count {
        match kind {
            "read" => encode_capsule_cmd(&sqe(opcode::READ, i as u64, 4096).0, 0, d, &mut out),
            "write4k" => {
                let data = vec![i as u8; 4096];
                encode_capsule_cmd(
                    &sqe(opcode::WRITE, i as u64, 4096).0,
                    data.len(),
                    d,
                    &mut out,
                );
                out.extend_from_slice(&data);
                if d.data {
                    out.extend_from_slice(&pdu::digest(&data).to_le_bytes());
                }
            }
            "h2c128k" => {
                let data = vec![i as u8; 128 * 1024];
                let dh = DataHeader {
                    cccid: i as u16,
                    ttag: 0,
                    offset: 0,
                    length: data.len() as u32,
                };
                encode_data_header(pdu_type::H2C_DATA, dh, pdu::flags::LAST_PDU, d, &mut out);
                out.extend_from_slice(&data);
                if d.data {
                    out.extend_from_slice(&pdu::digest(&data).to_le_bytes());
                }
            }
            _ => unreachable!(),
        }
    }
    out
}

fn bench(name: &str, kind: &str, d: Digests) {
    let s = stream(kind, d, 512);
    let pdu_bytes = s.len() / 512;
    let mut rb = RecvBuf::new(Plain(Replay { data: s, at: 0 }));
    let mut data = vec![0u8; 128 * 1024];
    let mut run = |n: usize| {
        let t = Instant::now();
        block_on(async {
            for _ in 0..n {
                black_box(parse_one(&mut rb, d, &mut data).await.unwrap());
            }
        });
        t.elapsed()
    };
    // Calibrate to about 100 ms per sample.
    let mut n = BATCH;
    while run(n) < Duration::from_millis(20) {
        n *= 2;
    }
    n *= 5;
    let mut samples: Vec<f64> = (0..7)
        .map(|_| run(n).as_nanos() as f64 / n as f64)
        .collect();
    samples.sort_by(f64::total_cmp);
    let (best, median) = (samples[0], samples[3]);
    println!(
        "{name:<46} {best:9.1} ns/PDU (median {median:9.1})  {:6.2} GB/s of stream",
        pdu_bytes as f64 / best
    );
}

fn main() {
    let none = Digests::default();
    let both = Digests {
        header: true,
        data: true,
    };
    println!("receive path: RecvBuf fed from memory, {CHUNK}-byte reads");
    bench("read commands (72-byte CapsuleCmd)", "read", none);
    bench("read commands, header digest", "read", both);
    bench("4 KiB writes in capsule (72 + 4096 bytes)", "write4k", none);
    bench("4 KiB writes in capsule, both digests", "write4k", both);
    bench("128 KiB H2CData (direct read path)", "h2c128k", none);
}
