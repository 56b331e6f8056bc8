//! How many replies a connection lets queue before its writer sends them:
//! half the host's queue depth as the target sees it, so that the host
//! works on one half of its burst while this core works on the other
//! (`Conn::flow_batch`; measurements in perf/README.md).

use std::cell::Cell;

/// Most completions a reader lets queue up before the writer sends them
/// (see `Conn::flow_batch`). Fewer cost more system calls per I/O, more
/// leave the host idle longer: 12 measured best of 4, 6, 8, 12, 16 and 24
/// (4 KiB reads at QD32, perf/README.md).
pub(super) const FLOW_BATCH: usize = 12;

/// The host's queue depth on this connection as the target sees it: the most
/// commands here at once (outstanding plus those already buffered), over
/// the last one or two windows of `DEPTH_WINDOW` observations.
#[derive(Default)]
pub(super) struct DepthEstimate {
    current: Cell<usize>,
    previous: Cell<usize>,
    seen: Cell<u32>,
}

const DEPTH_WINDOW: u32 = 4096;

/// Bytes a reader takes from its socket, with replies or R2Ts waiting in
/// the outbox, before it lets the writer send them whatever their count.
/// A host's large writes arrive back to back (128 KiB of H2CData is ~13 µs
/// of copying here), so a count alone held each reply, and the R2T that
/// lets the host send its next write, behind up to `batch` others' data:
/// RAM 128 KiB writes QD8 went out four replies to a send; with this,
/// sequential 1.16 and 1.08 of that, random 1.25 and 1.08 (two sets of
/// alternated pairs, p99 0.73-0.96); 64 KiB measured 1.12. Small commands
/// reach the count first (perf/README.md).
pub(super) const FLOW_BYTES: u64 = 128 * 1024;

/// Whether the reader lets the writer send what is `queued` before it reads
/// on: a `batch` of replies is ready, or it has read `FLOW_BYTES` since the
/// writer last had its turn.
pub(super) fn writer_due(queued: usize, batch: usize, read_since: u64) -> bool {
    debug_assert!(batch >= 1, "a batch of no replies");
    queued >= batch || (queued > 0 && read_since >= FLOW_BYTES)
}

/// Replies to let queue for a host whose queue depth is `depth`: half of it,
/// at least 2 and at most `FLOW_BATCH`; but a host that waits for each reply
/// before it sends again (depth 1) gets it before the reader looks at its
/// socket again. With 2 that look was an empty `recv` and a poller round
/// ahead of every reply, ~2.5 µs of a 13 µs RAM read at QD1 (traced with
/// perf/segments.py: 4.3 µs from `recv` to `sendmsg`, now 1.8; SPDK 2.3):
/// RAM 4 KiB randread QD1 58.5k -> 75.7k IOPS in 8 of 8 alternated pairs,
/// 8 of 10 higher in another set, within noise in a slow phase of the
/// machine (perf/README.md).
/// At depth 2, 1 cost 16% (7 of 8 pairs): the host's pair leaves in one send.
pub(super) fn batch_for_depth(depth: usize) -> usize {
    if depth <= 1 {
        1
    } else {
        (depth / 2).clamp(2, FLOW_BATCH)
    }
}

impl DepthEstimate {
    pub(super) fn observe(&self, now: usize) -> usize {
        self.current.set(self.current.get().max(now));
        let seen = self.seen.get() + 1;
        if seen >= DEPTH_WINDOW {
            self.previous.set(self.current.replace(0));
            self.seen.set(0);
        } else {
            self.seen.set(seen);
        }
        self.current.get().max(self.previous.get())
    }
}

#[cfg(test)]
mod tests {
    use super::{batch_for_depth, writer_due, DepthEstimate, DEPTH_WINDOW, FLOW_BATCH, FLOW_BYTES};

    #[test]
    fn the_writer_goes_after_a_batch_or_after_a_large_transfer() {
        assert!(!writer_due(0, 4, 10 * FLOW_BYTES), "nothing to send");
        assert!(!writer_due(3, 4, FLOW_BYTES - 1));
        assert!(writer_due(4, 4, 0));
        assert!(writer_due(1, 4, FLOW_BYTES));
        assert!(writer_due(1, 1, 0));
    }

    #[test]
    fn a_lone_command_is_answered_at_once_deeper_hosts_get_half_their_depth() {
        assert_eq!(batch_for_depth(0), 1);
        assert_eq!(batch_for_depth(1), 1);
        assert_eq!(batch_for_depth(2), 2);
        assert_eq!(batch_for_depth(3), 2);
        assert_eq!(batch_for_depth(8), 4);
        assert_eq!(batch_for_depth(16), 8);
        assert_eq!(batch_for_depth(64), FLOW_BATCH);
    }

    #[test]
    fn depth_keeps_the_peak_for_a_window_then_follows_the_host_down() {
        let d = DepthEstimate::default();
        assert_eq!(d.observe(3), 3);
        assert_eq!(d.observe(16), 16);
        // Fewer commands here for a while (the target sent half a burst):
        // the peak stands for the rest of this window and the next.
        for _ in 0..DEPTH_WINDOW {
            assert_eq!(d.observe(8), 16);
        }
        // Two windows without it: the estimate is what the host does now.
        for _ in 0..DEPTH_WINDOW {
            d.observe(8);
        }
        assert_eq!(d.observe(8), 8);
        // A deeper host is seen at once.
        assert_eq!(d.observe(64), 64);
    }
}
