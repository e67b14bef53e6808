//! Built-in simulators for demos and tests: a GX device's Modbus-TCP server
//! ([`gx`]) and a VE.Direct device's text stream ([`vedirect`]). They speak
//! the real protocols over real sockets and pseudo-terminals.

pub mod gx;
pub(crate) mod site;
pub mod vedirect;
