//! Where a new connection is served: the core with the fewest queues.
//!
//! Every core listens on the port (SO_REUSEPORT), and the kernel hashes each
//! new connection to one of them, so two hosts' queues can share a core while
//! another idles (SPDK's users met the same: spdk/spdk#3137; SPDK hands new
//! queue pairs to its poll groups in turn). Here the core that accepts a
//! connection serves it only if no core has fewer; otherwise it hands the
//! socket over through the control plane. Touched once per connection,
//! never per command.
//!
//! The weight of a core is its connections that are, or may still become,
//! I/O queues: an admin or discovery queue stops counting once its Connect
//! succeeds, so that where controllers land does not skew their I/O queues.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Connections each core serves, shared by every core.
pub struct Balance {
    weight: Box<[AtomicUsize]>,
}

impl Balance {
    pub fn new(cores: usize) -> Arc<Balance> {
        assert!(cores > 0, "a target has at least one core");
        Arc::new(Balance {
            weight: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    /// The core to serve a connection that core `here` accepted: the one
    /// with the least weight, `here` on a tie (no hand-over). The seat
    /// counts on that core at once, so that accepts racing on several cores
    /// see each other.
    pub fn place(self: &Arc<Self>, here: usize) -> Seat {
        let load = |c: usize| self.weight[c].load(Ordering::Relaxed);
        let mut best = here;
        for c in 0..self.weight.len() {
            if load(c) < load(best) {
                best = c;
            }
        }
        self.place_on(best)
    }

    /// A seat on `core`, whatever the others carry.
    pub fn place_on(self: &Arc<Self>, core: usize) -> Seat {
        self.weight[core].fetch_add(1, Ordering::Relaxed);
        Seat {
            balance: self.clone(),
            core,
            held: AtomicBool::new(true),
        }
    }

    /// Each core's weight now.
    pub fn weights(&self) -> Vec<usize> {
        self.weight
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect()
    }
}

/// One connection's share of its core's weight, given back when it ends
/// (dropped) or when it turns out to be no I/O queue (`vacate`).
pub struct Seat {
    balance: Arc<Balance>,
    core: usize,
    held: AtomicBool,
}

impl Seat {
    /// The core that serves the connection.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Stop counting this connection (at most once).
    pub fn vacate(&self) {
        if self.held.swap(false, Ordering::Relaxed) {
            let prev = self.balance.weight[self.core].fetch_sub(1, Ordering::Relaxed);
            assert!(prev > 0, "core {} weight went below zero", self.core);
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.vacate();
    }
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seat(core {})", self.core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_core_and_leave_it_on_drop() {
        let b = Balance::new(2);
        // All accepted by core 0: they alternate, core 0 first on the tie.
        let mut seats: Vec<Seat> = (0..8).map(|_| b.place(0)).collect();
        let cores: Vec<usize> = seats.iter().map(Seat::core).collect();
        assert_eq!(cores, [0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(b.weights(), [4, 4]);
        // Core 1 accepts on a tie: it keeps the connection.
        let s = b.place(1);
        assert_eq!(s.core(), 1);
        drop(s);
        assert_eq!(b.weights(), [4, 4]);
        // Two connections of core 0 end: the next two go there, although
        // core 1 accepts them.
        for _ in 0..2 {
            let i = seats.iter().position(|s| s.core() == 0).unwrap();
            seats.remove(i);
        }
        assert_eq!(b.weights(), [2, 4]);
        let more: Vec<Seat> = (0..2).map(|_| b.place(1)).collect();
        assert!(more.iter().all(|s| s.core() == 0));
        assert_eq!(b.weights(), [4, 4]);
        // A vacated seat (an admin queue) gives its weight back once only.
        let admin = b.place(0);
        assert_eq!(b.weights(), [5, 4]);
        admin.vacate();
        admin.vacate();
        drop(admin);
        assert_eq!(b.weights(), [4, 4]);
        drop(seats);
        drop(more);
        assert_eq!(b.weights(), [0, 0]);
    }
}
