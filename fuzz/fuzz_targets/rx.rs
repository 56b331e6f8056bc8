//! The receive protocol of a queue (`transport::rx::Rx`) fed arbitrary byte
//! streams in process, with no socket and no executor: the PDU rules at the
//! rate of the pure decoders (the `queue` target runs the real connection
//! over loopback, thousands of times slower).
//!
//! Input, as the `queue` target's so that its seeds serve both: byte 0
//! `% 3` != 0 puts an ICReq (digests from byte 1: bit 0 header, bit 1 data)
//! before the stream; byte 1 also picks the in-capsule limit (bit 2: 8 KiB,
//! else 128 KiB) and MAXH2CDATA (bit 3: 4 KiB, else 128 KiB). The rest is
//! the host's byte stream.
//!
//! The harness acts as `transport::tcp` does: it reads each header `Rx`
//! asks for, moves data, checks digests, and for a write capsule that asks
//! for its data by R2T (SGL Transport Data Block, up to 1 MiB) opens a
//! transfer as the target would. Checked: nothing panics, every PDU `Rx`
//! accepts lies within its stated length, H2CData lands inside the buffer
//! of the transfer it names and in order, and a transfer closes exactly
//! when its last byte has arrived.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvmf_tpc::transport::rx::{data_digest_ok, Pdu, Rx};
use nvmf_tpc::wire::command::{io, sgl};
use nvmf_tpc::wire::pdu::{CH_LEN, DIGEST_LEN};
use nvmf_tpc_fuzz as s;

/// Largest transfer the harness opens (the target's default MDTS).
const MAX_XFER: usize = 1 << 20;

/// A transfer's buffer and how much of it the harness wrote.
struct Buf {
    data: Vec<u8>,
    filled: usize,
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let opts = input[1];
    let max_icd = if opts & 4 != 0 { 8 << 10 } else { 128 << 10 };
    let maxh2cdata = if opts & 8 != 0 { 4 << 10 } else { 128 << 10 };
    let mut stream = Vec::new();
    if input[0] % 3 != 0 {
        stream.extend_from_slice(&s::icreq(s::digests_of(opts)));
    }
    stream.extend_from_slice(&input[2..]);
    run(&stream, max_icd, maxh2cdata);
});

fn run(stream: &[u8], max_icd: usize, maxh2cdata: usize) {
    let mut rx: Rx<Buf> = Rx::new(maxh2cdata);
    let mut at = 0;
    loop {
        let Some(ch) = stream.get(at..at + CH_LEN) else {
            return;
        };
        let Ok(l) = rx.begin(ch.try_into().unwrap(), max_icd) else {
            return;
        };
        let ht = l.header_total();
        let Some(hdr) = stream.get(at..at + ht) else {
            return;
        };
        let Ok(pdu) = rx.header(hdr) else {
            return;
        };
        let data_at = at + ht + l.pad_len();
        let dg = if l.ddgst { DIGEST_LEN } else { 0 };
        let next = data_at + l.data_len + if l.data_len > 0 { dg } else { 0 };
        assert_eq!(
            next - at,
            if l.data_len > 0 { l.plen() } else { ht },
            "a PDU ends where its PLEN says"
        );
        // The PDU must be here whole (a stream that ends inside one ends).
        let Some(pdu_bytes) = stream.get(data_at..next) else {
            return;
        };
        let (data, dg_bytes) = pdu_bytes.split_at(l.data_len);
        let digest_ok = !l.ddgst || l.data_len == 0 || data_digest_ok(data, dg_bytes);
        match pdu {
            Pdu::IcReq(_) => {}
            Pdu::Capsule { sqe, data: n } => {
                assert_eq!(n, l.data_len);
                assert!(n <= max_icd);
                let d = sqe.sgl();
                let len = d.length as usize;
                if n == 0
                    && sqe.opcode() == io::WRITE
                    && d.id == sgl::TRANSPORT_DATA_BLOCK
                    && (1..=MAX_XFER).contains(&len)
                {
                    let buf = Buf {
                        data: vec![0; len],
                        filled: 0,
                    };
                    rx.open(sqe.cid(), len, buf);
                }
            }
            Pdu::H2cData { ttag, at: off, len } => {
                assert_eq!(len, l.data_len);
                assert!(len <= maxh2cdata);
                let b = rx.state_mut(ttag);
                assert_eq!(off, b.filled, "H2CData in order");
                b.data[off..off + len].copy_from_slice(data);
                b.filled += len;
                match rx.data_done(digest_ok) {
                    Some((b, _digest_failed)) => {
                        assert_eq!(b.filled, b.data.len(), "closed when whole")
                    }
                    None => {
                        let b = rx.state_mut(ttag);
                        assert!(b.filled < b.data.len(), "open until whole");
                    }
                }
            }
            Pdu::Term { .. } => return,
        }
        at = next;
    }
}
