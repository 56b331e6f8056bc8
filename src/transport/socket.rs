//! Socket I/O that polls while traffic flows and sleeps when it stops.
//!
//! Waking a parked executor costs tens of microseconds on these machines
//! (../shared/perf-reference.md), more than a whole 4 KiB command. So the
//! receive side first tries a non-blocking `recv`; when nothing is there it
//! waits for its core's poller (`readiness`) to see data arrive, and parks
//! on an io_uring read only once the core has been quiet for the poll
//! window. Sends go straight to `sendmsg` with MSG_DONTWAIT; when the socket
//! buffer is full they wait for room with the poller, or in io_uring once
//! the core parks.

use super::readiness::{Dir, Registration, Verdict};
use crate::io_wait::IoWait;
use crate::storage::uring;
use crate::storage::SendPart;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::io::RawFd;
use std::rc::Rc;
use std::time::Duration;

/// A peer idle this long gets TCP keepalive probes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 6;
/// Sent data unacknowledged this long means the peer is gone.
const USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Notice a host that vanished without a FIN (power loss, cable pulled)
/// even when it disabled NVMe keep alive (KATO 0): the kernel probes an
/// idle peer and gives up on unacknowledged data, and the connection's
/// reads and writes then fail so that its queue is torn down.
pub fn watch_liveness(fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller's socket stays open for the duration of the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let s = socket2::SockRef::from(&fd);
    s.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    s.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// Give a connection fixed receive and send buffers of `size` bytes each
/// (the kernel doubles the number for its bookkeeping), as SPDK's target
/// does (2 MiB). Left to autotuning, the receive buffer of a connection
/// carrying 128 KiB writes at QD8 stayed near 270 KiB and its window
/// throttled the host; fixed at 2 MiB, writes gained 4% and their p99 fell
/// 12% (perf/README.md).
pub fn set_buffers(fd: RawFd, size: usize) -> io::Result<()> {
    // SAFETY: the caller's socket stays open for the duration of the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let s = socket2::SockRef::from(&fd);
    s.set_recv_buffer_size(size)?;
    s.set_send_buffer_size(size)
}

/// What the kernel will grant a socket that asks for `size`-byte buffers:
/// `Err` names the sysctl that caps it (checked at start, so that an
/// operator learns it there, not from a slow connection).
pub fn check_buffers(size: usize) -> Result<(), String> {
    for (name, path) in [
        ("net.core.rmem_max", "/proc/sys/net/core/rmem_max"),
        ("net.core.wmem_max", "/proc/sys/net/core/wmem_max"),
    ] {
        let max: usize = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("cannot read {path}"))?;
        if max < size {
            return Err(format!(
                "{name} is {max}: the kernel would cap the buffers there; \
                 raise it (sysctl -w {name}={size}), or pass 0 to leave the sizes to the kernel"
            ));
        }
    }
    Ok(())
}

/// Use congestion control `name` on a connection. The system default here
/// is BBR, whose pacing timer cost a third of a core on loopback 128 KiB
/// reads (perf/README.md); an operator may want another for the storage
/// network.
pub fn set_congestion(fd: RawFd, name: &str) -> io::Result<()> {
    // SAFETY: the caller's socket stays open for the duration of the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).set_tcp_congestion(name.as_bytes())
}

/// Whether this kernel lets us use congestion control `name` (checked on a
/// fresh socket at start, so that a typo fails there, not per connection).
pub fn check_congestion(name: &str) -> Result<(), String> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    s.set_tcp_congestion(name.as_bytes()).map_err(|e| {
        let avail = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
            .unwrap_or_default();
        format!("{e} (available: {})", avail.trim())
    })
}

/// Where a `RecvBuf` gets its bytes.
pub trait Recv {
    fn recv(&mut self, buf: &mut [u8]) -> impl std::future::Future<Output = io::Result<usize>>;
}

/// Any async reader, as is (tests, and hosts that do not poll).
pub struct Plain<R>(pub R);

impl<R: AsyncRead + Unpin> Recv for Plain<R> {
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }
}

/// Result of one non-blocking system call.
enum Try {
    Done(usize),
    WouldBlock,
}

fn nonblocking(r: isize) -> io::Result<Try> {
    if r >= 0 {
        return Ok(Try::Done(r as usize));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Try::WouldBlock),
        Some(libc::EINTR) => Ok(Try::WouldBlock),
        _ => Err(e),
    }
}

/// Non-blocking receives while traffic flows: when the socket is empty the
/// reader waits for its core's poller (`readiness`) to see data arrive, and
/// parks on io_uring when the core goes quiet.
pub struct RecvPoll {
    fd: RawFd,
    /// None with a zero window: park at the first empty `recv`.
    reg: Option<Rc<Registration>>,
}

impl RecvPoll {
    /// `fd` must stay open as long as this lives; `window` is `--idle-poll`.
    pub fn new(fd: RawFd, window: Duration) -> Self {
        let reg = if window.is_zero() {
            None
        } else {
            Registration::new(fd, window)
                .map_err(|e| log::warn!("socket readiness polling unavailable ({e}): parking"))
                .ok()
                .map(Rc::new)
        };
        RecvPoll { fd, reg }
    }

    /// Bytes received (0 at end of stream), or `None` once it is time to
    /// park: the caller then sleeps on an io_uring read through `parked`.
    pub async fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let r = unsafe {
                libc::recv(
                    self.fd,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if let Try::Done(n) = nonblocking(r)? {
                self.got_data();
                return Ok(Some(n));
            }
            match &self.reg {
                Some(reg) if reg.wait(Dir::Rx).await == Verdict::Ready => {
                    // Replies whose storage finished go before this `recv`
                    // (`uring::reap_now`).
                    if uring::reap_now() {
                        futures_lite::future::yield_now().await;
                    }
                }
                _ => return Ok(None),
            }
        }
    }

    /// The socket's registration, for its writer (`send_all`).
    pub fn registration(&self) -> Option<Rc<Registration>> {
        self.reg.clone()
    }

    fn got_data(&self) {
        if let Some(reg) = &self.reg {
            reg.received();
        }
    }

    /// Sleep on `read` (an io_uring read of this socket) after `recv`
    /// returned `None`: `Some` with what it read, or `None` when the core's
    /// poller saw data first (call `recv` again).
    pub async fn parked<F>(&mut self, read: F) -> io::Result<Option<usize>>
    where
        F: std::future::Future<Output = io::Result<usize>>,
    {
        let Some(reg) = &self.reg else {
            return read.await.map(Some);
        };
        // No `IoWait`: while the poller runs, epoll sees this socket's data.
        let r = futures_lite::future::or(async { read.await.map(Some) }, async {
            reg.wait_parked(Dir::Rx).await;
            Ok(None)
        })
        .await;
        reg.unpark(Dir::Rx);
        if let Ok(Some(_)) = r {
            reg.received();
        }
        r
    }
}

/// The receive half of a TCP connection that polls before it parks.
pub struct PollingReader<R> {
    poll: RecvPoll,
    half: R,
}

impl<R: AsyncRead + Unpin> PollingReader<R> {
    /// `fd` must stay open as long as `half` (they are the same socket).
    pub fn new(fd: RawFd, half: R, poll_window: Duration) -> Self {
        PollingReader {
            poll: RecvPoll::new(fd, poll_window),
            half,
        }
    }

    /// The socket's readiness registration, for its writer.
    pub fn registration(&self) -> Option<Rc<Registration>> {
        self.poll.registration()
    }
}

impl<R: AsyncRead + Unpin> Recv for PollingReader<R> {
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(n) = self.poll.recv(buf).await? {
                return Ok(n);
            }
            // Idle: sleep on io_uring until data (or EOF) arrives.
            let half = &mut self.half;
            let read = async { half.read(buf).await };
            // (`buf` is borrowed by `read` only; the poll's own state is
            // separate.)
            if let Some(n) = self.poll.parked(read).await? {
                return Ok(n);
            }
        }
    }
}

/// Most pieces one sendmsg carries (the kernel's `UIO_MAXIOV`); longer
/// lists take several calls. A batch of 32 file reads is 65 pieces (with
/// SQ flow control each reply is header, data, CapsuleResp; neighbouring
/// headers share a piece): at 64 the last CapsuleResp went in a second
/// call, 3 µs that kept the host's next commands waiting in the socket.
const MAX_IOV: usize = 1024;

/// How far a send got: the piece, and the offset in it, to go on from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendPos {
    pub piece: usize,
    pub off: usize,
}

/// Send what is left of `parts` from `pos` with non-blocking vectored
/// sendmsg calls while the socket takes them; `pos` moves past what was
/// sent. `true` once every byte is sent, `false` when the socket is full.
pub fn send_now<'p>(
    fd: RawFd,
    pos: &mut SendPos,
    count: usize,
    part: impl Fn(usize) -> SendPart<'p>,
) -> io::Result<bool> {
    loop {
        while pos.piece < count && pos.off == part(pos.piece).len() {
            pos.piece += 1;
            pos.off = 0;
        }
        if pos.piece == count {
            return Ok(true);
        }
        let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_IOV];
        let n = gather(*pos, count, &part, &mut iov);
        // SAFETY: msghdr is plain data; the first `n` iovecs are filled and
        // point into live memory that the caller's parts keep alive.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_mut_ptr().cast();
            msg.msg_iovlen = n;
            nonblocking(libc::sendmsg(
                fd,
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            ))?
        };
        let Try::Done(mut k) = sent else {
            return Ok(false);
        };
        while k > 0 {
            let rem = part(pos.piece).len() - pos.off;
            if k >= rem {
                k -= rem;
                pos.piece += 1;
                pos.off = 0;
            } else {
                pos.off += k;
                k = 0;
            }
        }
    }
}

/// Fill `iov` with the pieces from `pos` on, as many as one call takes
/// (`MAX_IOV`); left uninitialised beyond the count returned.
fn gather<'p>(
    pos: SendPos,
    count: usize,
    part: &impl Fn(usize) -> SendPart<'p>,
    iov: &mut [MaybeUninit<libc::iovec>; MAX_IOV],
) -> usize {
    let mut n = 0;
    let (mut j, mut o) = (pos.piece, pos.off);
    while j < count && n < MAX_IOV {
        let pj = part(j);
        if o < pj.len() {
            let (p, len) = pj.iov(o);
            pj.prefetch(o);
            iov[n].write(libc::iovec {
                iov_base: p as *mut libc::c_void,
                iov_len: len,
            });
            n += 1;
        }
        j += 1;
        o = 0;
    }
    n
}

/// Send every byte of `parts` from `pos` on, in order: non-blocking sends
/// (`send_now`) while the socket buffer takes them; when it is full, the
/// current piece goes through `w` (io_uring), then non-blocking sends
/// resume.
pub async fn send_all<'p, W: AsyncWrite + Unpin>(
    fd: RawFd,
    w: &mut W,
    reg: Option<&Registration>,
    mut pos: SendPos,
    count: usize,
    part: impl Fn(usize) -> SendPart<'p>,
    release: impl Fn(),
) -> io::Result<()> {
    while !send_now(fd, &mut pos, count, &part)? {
        // The socket is full, for how long the host decides: what the batch
        // still holds of RAM disks becomes copies first.
        release();
        // While the core polls, wait for room with the readers; once it
        // parks, the rest of this piece waits in io_uring.
        if let Some(reg) = reg {
            if reg.wait(Dir::Tx).await == Verdict::Ready {
                continue;
            }
        }
        let _io = IoWait::new();
        let off = pos.off;
        match part(pos.piece) {
            SendPart::Bytes(b) => w.write_all(&b[off..]).await?,
            SendPart::Ram(disk, offset, len) => {
                let mut copy = vec![0u8; len];
                disk.read(offset, &mut copy);
                w.write_all(&copy[off..]).await?
            }
        }
        pos = SendPos {
            piece: pos.piece + 1,
            off: 0,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn congestion_control_is_set_on_a_connection() {
        let (_c, a) = crate::transport::loopback_pair();
        // reno is built into every kernel; bbr or cubic is the usual default.
        set_congestion(a.as_raw_fd(), "reno").unwrap();
        let got = socket2::SockRef::from(&a).tcp_congestion().unwrap();
        assert_eq!(&got[..4], b"reno");
        assert!(check_congestion("reno").is_ok());
        let e = check_congestion("no-such-algorithm").unwrap_err();
        assert!(e.contains("available"), "{e}");
    }

    /// A reader polling its socket lets a command whose storage read
    /// completed go first: the reply is on its way before the reader's
    /// next `recv` (which found data here, and would have run ahead).
    #[test]
    fn a_finished_storage_read_goes_before_the_next_recv() {
        use std::cell::RefCell;
        use std::io::Write;
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let (mut c, a) = crate::transport::loopback_pair();
                let log = Rc::new(RefCell::new(Vec::new()));
                let window = Duration::from_secs(60);
                let mut rx = RecvPoll::new(a.as_raw_fd(), window);
                let l2 = log.clone();
                let reader = glommio::spawn_local(async move {
                    let mut buf = [0u8; 16];
                    let n = rx.recv(&mut buf).await.unwrap().unwrap();
                    l2.borrow_mut().push(("recv", n));
                });
                let ring = uring::Ring::current().unwrap();
                let (pipe_rx, mut pipe_tx) = std::io::pipe().unwrap();
                let pipe_rx = Rc::new(std::os::fd::OwnedFd::from(pipe_rx));
                let read = ring.read(&pipe_rx, 0, glommio::allocate_dma_buffer(4096));
                let l2 = log.clone();
                let command = glommio::spawn_local(async move {
                    let (n, _) = read.await;
                    l2.borrow_mut().push(("reply", n.unwrap()));
                });
                // The reader finds its socket empty and polls it.
                for _ in 0..20 {
                    futures_lite::future::yield_now().await;
                }
                assert!(log.borrow().is_empty());
                // Both land at once: the read's completion and the host's bytes.
                pipe_tx.write_all(&[7]).unwrap();
                c.write_all(&[1, 2, 3]).unwrap();
                command.await;
                reader.await;
                assert_eq!(*log.borrow(), [("reply", 1), ("recv", 3)]);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_batch_of_32_read_replies_fits_one_sendmsg() {
        // With SQ flow control each reply is a header, its data and a
        // CapsuleResp; neighbouring headers share a piece: 65 pieces.
        let (hdr, data) = (vec![0u8; 48], vec![0u8; 4096]);
        let part = |k: usize| SendPart::Bytes(if k.is_multiple_of(2) { &hdr } else { &data });
        let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_IOV];
        assert_eq!(gather(SendPos::default(), 65, &part, &mut iov), 65);
        // From the middle of a piece on; and never more than one call takes.
        let pos = SendPos { piece: 3, off: 100 };
        assert_eq!(gather(pos, 65, &part, &mut iov), 62);
        // SAFETY: `gather` filled the first 62.
        let first = unsafe { iov[0].assume_init() };
        assert_eq!(first.iov_len, 4096 - 100);
        assert_eq!(gather(SendPos::default(), 3000, &part, &mut iov), MAX_IOV);
    }

    #[test]
    fn a_send_of_more_pieces_than_one_call_takes_arrives_whole_and_in_order() {
        use std::io::Read;
        let (mut c, a) = crate::transport::loopback_pair();
        let pieces: Vec<Vec<u8>> = (0..2500u32)
            .map(|k| {
                (0..(k as usize % 97 + 1))
                    .map(|x| (x as u32 ^ k) as u8)
                    .collect()
            })
            .collect();
        let all: Vec<u8> = pieces.concat();
        let got = std::thread::spawn(move || {
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            got
        });
        let part = |k: usize| SendPart::Bytes(&pieces[k]);
        let mut pos = SendPos::default();
        while !send_now(a.as_raw_fd(), &mut pos, pieces.len(), part).unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(a);
        assert!(got.join().unwrap() == all, "the bytes sent differ");
    }

    #[test]
    fn send_now_stops_when_the_socket_is_full_and_goes_on_where_it_stopped() {
        use std::io::Read;
        let (mut c, a) = crate::transport::loopback_pair();
        set_buffers(a.as_raw_fd(), 8192).unwrap();
        // Pieces of odd sizes, 2.7 MiB in all: more than the buffers hold.
        let pieces: Vec<Vec<u8>> = (0..40u32)
            .map(|k| {
                (0..(k as usize * 3989 % 150_000 + 1))
                    .map(|x| (x as u32 * 7 + k) as u8)
                    .collect()
            })
            .collect();
        let all: Vec<u8> = pieces.concat();
        let part = |k: usize| SendPart::Bytes(&pieces[k]);
        let mut pos = SendPos::default();
        assert!(!send_now(a.as_raw_fd(), &mut pos, pieces.len(), part).unwrap());
        assert!(pos.piece < pieces.len() && pos.off < pieces[pos.piece].len());
        let got = std::thread::spawn(move || {
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            got
        });
        while !send_now(a.as_raw_fd(), &mut pos, pieces.len(), part).unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(pos.piece, pieces.len());
        drop(a);
        assert!(got.join().unwrap() == all, "the bytes sent differ");
    }
}
