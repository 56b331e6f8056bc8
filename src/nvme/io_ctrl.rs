//! A core's view of a controller whose I/O queues it serves, when another
//! core may own the controller: the state its queues follow, stamped so that
//! only a newer one replaces an older, and how long they have been idle.

use crate::trigger::Trigger;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What an I/O queue's Connect learns from its controller's owner.
#[derive(Debug, Clone, Copy)]
pub struct AttachInfo {
    pub subsys: usize,
    pub state: IoState,
}

/// What a controller's I/O queues follow of its state, stamped with the
/// owner's sequence number: messages and Connect replies may arrive in any
/// order, and only a newer state replaces an older one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoState {
    pub seq: u64,
    /// CSTS.RDY: I/O commands may run.
    pub ready: bool,
    /// The host disabled the volatile write cache: every write is durable
    /// before its completion (Volatile Write Cache feature, NVMe Base 2.0
    /// §5.27.1.4).
    pub write_through: bool,
}

/// I/O queues of one controller served by this shard.
pub struct LocalIoCtrl {
    pub cntlid: u16,
    state: Cell<IoState>,
    /// Commands seen on these queues; counting is cheaper than reading the
    /// clock per command. Keep-alive queries turn it into an idle time.
    pub commands: Cell<u64>,
    /// `commands` at the last query, and when it last changed as far as
    /// queries could tell.
    seen: Cell<(u64, Instant)>,
    pub queues: RefCell<Vec<(u16, u64, Rc<Trigger>)>>,
}

impl LocalIoCtrl {
    pub fn new(cntlid: u16) -> LocalIoCtrl {
        LocalIoCtrl {
            cntlid,
            state: Cell::new(IoState::default()),
            commands: Cell::new(0),
            seen: Cell::new((0, Instant::now())),
            queues: RefCell::new(Vec::new()),
        }
    }

    pub fn ready(&self) -> bool {
        self.state.get().ready
    }

    pub fn write_through(&self) -> bool {
        self.state.get().write_through
    }

    /// Take `s` if it is newer than what this core has.
    pub fn apply(&self, s: IoState) {
        if s.seq > self.state.get().seq {
            self.state.set(s);
        }
    }

    /// Time since the last command here, as precise as the queries are
    /// frequent: a count that moved since the previous query means "now".
    pub fn idle(&self) -> Duration {
        let now = Instant::now();
        let (count, since) = self.seen.get();
        if self.commands.get() != count {
            self.seen.set((self.commands.get(), now));
            return Duration::ZERO;
        }
        now - since
    }
}
