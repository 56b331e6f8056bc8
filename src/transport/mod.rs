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
