//! A core's listeners: accept, admit against the connection limit, and
//! hand each connection to its queue task.

use crate::shard::Shard;
use glommio::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

/// Accept loop of one listener of `shard`: each accepted connection is one
/// queue, served by `tcp::serve` in a task of its own, counted against the
/// core's connection limit.
pub async fn serve_listener(shard: Rc<Shard>, listener: TcpListener) {
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
        let Some((id, kill)) = shard.register_connection() else {
            log::warn!(
                "core {}: connection limit ({}) reached; refusing {:?}",
                shard.id,
                shard.cfg.max_connections,
                stream.peer_addr().ok()
            );
            continue;
        };
        let me = shard.clone();
        glommio::spawn_local(async move {
            super::tcp::serve(me.clone(), stream, kill).await;
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
}
