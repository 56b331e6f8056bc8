//! Wire formats: pure encode/decode of everything that crosses the network.
//! No I/O here; each module is tested on its own.

pub mod command;
pub mod fabrics;
pub mod identify;
pub mod log_page;
pub mod pdu;
pub mod status;
