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
    use super::{DepthEstimate, DEPTH_WINDOW};

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
