//! A connection's watchdog: closes a connection that has not connected in
//! time, or that began a PDU and stopped sending mid-way.

use super::tcp::Conn;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Longest interval between two looks of a connection's watchdog.
const WATCHDOG_TICK_MAX: Duration = Duration::from_secs(5);

/// Closes a connection that has not connected in time, or that began a PDU
/// and stopped sending mid-way.
pub(super) async fn watchdog(conn: Rc<Conn>) {
    let born = Instant::now();
    let pdu_timeout = conn.shard.cfg.pdu_timeout;
    // Looks often enough that a limit is overrun by at most a quarter.
    let tick = (conn.shard.connect_timeout().min(pdu_timeout) / 4).min(WATCHDOG_TICK_MAX);
    let mut stuck_since: Option<(u64, Instant)> = None;
    loop {
        if conn.kill.sleep(tick).await {
            return;
        }
        if conn.q.state.borrow().binding.is_none() && born.elapsed() > conn.shard.connect_timeout()
        {
            log::warn!(
                "{}: no Connect within the connect timeout; closing",
                conn.q.peer
            );
            conn.kill.fire();
            return;
        }
        // A PDU open with no PDU completed since the last look: stuck since then.
        let now = (conn.pdu_open.get(), conn.pdus.get());
        stuck_since = match (now, stuck_since) {
            ((true, n), Some((m, t))) if n == m => {
                if t.elapsed() > pdu_timeout {
                    log::warn!(
                        "{}: partial PDU for over {:?}; closing",
                        conn.q.peer,
                        pdu_timeout
                    );
                    conn.kill.fire();
                    return;
                }
                Some((m, t))
            }
            ((true, n), _) => Some((n, Instant::now())),
            ((false, _), _) => None,
        };
    }
}
