//! Transports. One connection is one NVMe queue.

mod cpu_share;
mod flow;
pub mod listener;
pub mod outbox;
pub mod readiness;
pub mod recv;
pub mod rx;
pub mod socket;
pub mod tcp;
mod watchdog;
mod writer;

/// A TCP connection over loopback, for tests: the connecting side, and the
/// accepted side made non-blocking (as the target's sockets are).
#[cfg(test)]
pub(crate) fn loopback_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (a, _) = l.accept().unwrap();
    a.set_nonblocking(true).unwrap();
    (c, a)
}
