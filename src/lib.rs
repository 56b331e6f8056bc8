//! nvmf-tpc: a thread-per-core NVMe/TCP target on glommio.
//!
//! Layers, from the wire up: `wire` (pure formats), `io_wait` and
//! `reply_hint` (what the executor's tasks tell each other: waits on
//! glommio's ring, replies woken), `storage` (backings),
//! `nvme` (the NVMe controller core: controllers and command sets; it sees
//! its shard only as an `nvme::registry::Registry`), `transport` (NVMe/TCP
//! connections), `shard` (one executor), `serve` (start and stop), and `host`
//! (an initiator used by tests and the perf tool).

pub mod admission;
pub mod balance;
pub mod config;
pub mod cpus;
pub mod fault;
pub mod host;
pub mod huge_alloc;
pub mod io_wait;
pub mod nvme;
pub mod perf;
pub mod reply_hint;
pub mod serve;
pub mod shard;
pub mod storage;
pub mod transport;
pub mod trigger;
pub mod wire;
