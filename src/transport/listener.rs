//! A core's listeners: accept, place each connection on the core with the
//! fewest queues (`balance`), admit it against that core's connection limit,
//! and hand it to its queue task.

use crate::balance::Seat;
use crate::shard::{Handoff, Shard};
use glommio::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

/// Accept loop of one listener of `shard`.
pub async fn serve_listener(shard: Rc<Shard>, listener: glommio::net::TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.stop.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                log::warn!("core {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let seat = shard.balance.place(shard.id);
        if seat.core() == shard.id {
            serve_here(&shard, stream, seat);
            continue;
        }
        // Another core has fewer queues: it gets the socket (a duplicate
        // descriptor; this core's handle closes here).
        // SAFETY: F_DUPFD_CLOEXEC on an open descriptor; the result is checked.
        let dup = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            log::warn!(
                "core {}: cannot hand a connection over: {}; serving it here",
                shard.id,
                std::io::Error::last_os_error()
            );
            drop(seat);
            serve_here(&shard, stream, shard.balance.place_on(shard.id));
            continue;
        }
        drop(stream);
        // SAFETY: `dup` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        shard.hand_over(seat.core(), Handoff { fd, seat });
    }
}

/// Serve the connections other cores hand to this one.
pub async fn serve_handed(shard: Rc<Shard>) {
    let Some(rx) = shard.take_handed() else {
        return;
    };
    loop {
        let h = futures_lite::future::or(rx.recv(), async {
            shard.stop.wait().await;
            None
        })
        .await;
        let Some(Handoff { fd, seat }) = h else {
            return;
        };
        // SAFETY: the descriptor is a connected TCP socket owned by `fd`,
        // given up to the stream.
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        serve_here(&shard, stream, seat);
    }
}

/// Serve `stream` on this core, in a task of its own, counted against the
/// core's connection limit.
fn serve_here(shard: &Rc<Shard>, stream: TcpStream, seat: Seat) {
    let Some((id, kill)) = shard.register_connection() else {
        log::warn!(
            "core {}: connection limit ({}) reached; refusing {:?}",
            shard.id,
            shard.cfg.max_connections,
            stream.peer_addr().ok()
        );
        return;
    };
    let me = shard.clone();
    glommio::spawn_local(async move {
        super::tcp::serve(me.clone(), stream, kill, seat).await;
        me.unregister_connection(id);
        // What a closed connection leaves behind, for leak checks.
        log::debug!(
            "core {}: connection closed; {} connections, {} controllers, DMA memory in use {} bytes",
            me.id,
            me.connections.borrow().len(),
            me.controllers.borrow().len(),
            me.dma.used()
        );
    })
    .detach();
}
