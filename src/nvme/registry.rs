//! What the controller core asks of the executor it runs on (the shard):
//! the configuration, this core's namespaces, the controller registry and
//! the messages that reach other cores. A narrow interface, as nvmet's core
//! keeps apart from its ports, so that the core imports nothing of a
//! shard's internals.

use super::controller::{Controller, SubsysRef};
use super::io_ctrl::{AttachInfo, LocalIoCtrl};
use super::Namespace;
use crate::config::TargetConfig;
use crate::trigger::Trigger;
use crate::wire::command::Sqe;
use crate::wire::log_page::SmartCounters;
use crate::wire::status::Status;
use std::rc::Rc;
use std::time::Duration;

#[allow(async_fn_in_trait)] // one executor, one implementation: no Send bound wanted
pub trait Registry: 'static {
    fn cfg(&self) -> &TargetConfig;
    /// This executor's index.
    fn core(&self) -> usize;
    /// Since the target started (SMART power-on hours).
    fn uptime(&self) -> Duration;
    /// This core's handle to namespace `nsid` of subsystem `subsys`.
    fn namespace(&self, subsys: usize, nsid: u32) -> Option<&Rc<Namespace>>;
    /// A new controller for an admin queue's Connect, owned by this core.
    fn create_controller(
        self: &Rc<Self>,
        subsys: SubsysRef,
        hostnqn: String,
        hostid: [u8; 16],
        kato_ms: u32,
        admin_kill: Rc<Trigger>,
    ) -> Result<Rc<Controller>, Status>;
    /// Join an I/O queue's Connect to its controller, on whichever core owns
    /// it; the error carries a status and its DW0.
    async fn attach_io(
        self: &Rc<Self>,
        cntlid: u16,
        qid: u16,
        hostnqn: &str,
        hostid: [u8; 16],
        subnqn: &str,
        kill: Rc<Trigger>,
    ) -> Result<(AttachInfo, Rc<LocalIoCtrl>, u64), (Status, u32)>;
    /// I/O statistics of a subsystem summed over every core.
    async fn query_stats(self: &Rc<Self>, subsys: usize) -> SmartCounters;
    /// Tell every core serving `ctrl`'s I/O queues its new state, without
    /// waiting.
    fn announce_state(self: &Rc<Self>, ctrl: &Controller);
    /// The same, waiting until each core has it; false if one did not answer.
    async fn publish_state(self: &Rc<Self>, ctrl: &Controller) -> bool;
    /// Close `ctrl`'s I/O queues on every core.
    fn teardown_io(self: &Rc<Self>, ctrl: &Controller);
    /// This core's I/O statistics, per subsystem.
    fn stats(&self) -> &std::cell::RefCell<Vec<SmartCounters>>;
    /// Add a failed command to its controller's error log, on whichever core
    /// owns it; done once the entry is there, so that a host that reads the
    /// log after the command's completion finds it (NVMe Base 2.0 §5.16.1.2).
    async fn record_error(self: &Rc<Self>, cntlid: u16, sqid: u16, sqe: &Sqe, status: Status);
    /// Flush every namespace of a subsystem on this core.
    async fn flush_subsystem(&self, subsys: usize) -> std::io::Result<()>;
}
