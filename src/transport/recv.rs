//! Buffered receive side of a connection: small reads (PDU headers) come from
//! one buffer; large payloads are read straight into their destination (a DMA
//! buffer) once what is already buffered has been copied.

use super::socket::Recv;
use std::io;

/// Receive buffer size: several PDU headers and small payloads per read.
pub const RECV_BUF_LEN: usize = 64 * 1024;
/// Payload remainders at least this large bypass the buffer.
const DIRECT_READ_MIN: usize = 16 * 1024;

pub struct RecvBuf<R> {
    r: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Bytes taken from the socket so far (`flow::writer_due`).
    received: u64,
}

enum Fill {
    Ready,
    /// The peer closed with nothing buffered.
    End,
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed mid-PDU")
}

impl<R: Recv> RecvBuf<R> {
    pub fn new(r: R) -> RecvBuf<R> {
        RecvBuf {
            r,
            buf: vec![0u8; RECV_BUF_LEN].into_boxed_slice(),
            pos: 0,
            end: 0,
            received: 0,
        }
    }

    /// Bytes received from the socket since the connection began.
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn buffered(&self) -> usize {
        self.end - self.pos
    }

    /// Wait for the first byte of the next PDU: `false` when the peer closed
    /// cleanly between PDUs.
    pub async fn next_pdu(&mut self) -> io::Result<bool> {
        match self.fill_or_end(1).await? {
            Fill::Ready => Ok(true),
            Fill::End => Ok(false),
        }
    }

    /// Make `n` bytes available (n ≤ RECV_BUF_LEN). The peer closing before
    /// they are here is an error, even when nothing is buffered: callers are
    /// inside a PDU (a header read, data to come).
    pub async fn fill(&mut self, n: usize) -> io::Result<()> {
        match self.fill_or_end(n).await? {
            Fill::Ready => Ok(()),
            Fill::End => Err(eof()),
        }
    }

    async fn fill_or_end(&mut self, n: usize) -> io::Result<Fill> {
        debug_assert!(n <= self.buf.len());
        while self.end - self.pos < n {
            if self.buf.len() - self.pos < n {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            }
            let k = self.r.recv(&mut self.buf[self.end..]).await?;
            if k == 0 {
                return if self.end == self.pos {
                    Ok(Fill::End)
                } else {
                    Err(eof())
                };
            }
            self.end += k;
            self.received += k as u64;
        }
        Ok(Fill::Ready)
    }

    /// The next `n` buffered bytes (call `fill(n)` first), consumed.
    pub fn take(&mut self, n: usize) -> &[u8] {
        assert!(n <= self.buffered(), "take({n}) past the buffered bytes");
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }

    /// Read exactly `dst.len()` bytes.
    pub async fn read_into(&mut self, dst: &mut [u8]) -> io::Result<()> {
        let have = self.buffered().min(dst.len());
        dst[..have].copy_from_slice(&self.buf[self.pos..self.pos + have]);
        self.pos += have;
        let mut off = have;
        while off < dst.len() {
            let rem = dst.len() - off;
            if rem >= DIRECT_READ_MIN {
                let k = self.r.recv(&mut dst[off..]).await?;
                if k == 0 {
                    return Err(eof());
                }
                off += k;
                self.received += k as u64;
            } else {
                self.fill(rem).await?;
                dst[off..].copy_from_slice(self.take(rem));
                off += rem;
            }
        }
        Ok(())
    }

    pub async fn skip(&mut self, mut n: usize) -> io::Result<()> {
        while n > 0 {
            let k = n.min(self.buf.len());
            self.fill(k).await?;
            self.take(k);
            n -= k;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::socket::Plain;
    use super::*;
    use futures_lite::AsyncRead;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Returns at most `step` bytes per read.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step).min(self.data.len() - self.at);
            let at = self.at;
            buf[..n].copy_from_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn every_split_gives_the_same_bytes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        for step in [1usize, 3, 8, 4095, 70_000] {
            let mut rb = RecvBuf::new(Plain(Trickle {
                data: data.clone(),
                at: 0,
                step,
            }));
            futures_lite::future::block_on(async {
                assert!(rb.next_pdu().await.unwrap());
                rb.fill(8).await.unwrap();
                assert_eq!(rb.take(8), &data[..8]);
                let mut big = vec![0u8; 60_000];
                rb.read_into(&mut big).await.unwrap();
                assert_eq!(&big[..], &data[8..60_008]);
                rb.skip(10).await.unwrap();
                let mut rest = vec![0u8; 100_000 - 60_018];
                rb.read_into(&mut rest).await.unwrap();
                assert_eq!(&rest[..], &data[60_018..]);
                assert!(!rb.next_pdu().await.unwrap(), "clean EOF");
            });
        }
    }

    #[test]
    fn eof_mid_pdu_is_an_error() {
        let mut rb = RecvBuf::new(Plain(Trickle {
            data: vec![1, 2, 3],
            at: 0,
            step: 2,
        }));
        futures_lite::future::block_on(async {
            assert!(rb.fill(8).await.is_err());
        });
    }

    #[test]
    fn eof_after_whole_bytes_inside_a_pdu_is_an_error() {
        // 8 bytes arrive and are consumed, then the peer closes: a caller
        // inside a PDU must see an error, never a clean end.
        let mut rb = RecvBuf::new(Plain(Trickle {
            data: vec![7; 8],
            at: 0,
            step: 8,
        }));
        futures_lite::future::block_on(async {
            assert!(rb.next_pdu().await.unwrap());
            rb.fill(8).await.unwrap();
            rb.take(8);
            assert!(rb.fill(16).await.is_err());
            assert!(rb.skip(1).await.is_err());
            let mut d = [0u8; 4];
            assert!(rb.read_into(&mut d).await.is_err());
        });
    }
}
