//! Built-in simulators for demos and tests: a GX device's Modbus-TCP server
//! ([`gx`]). They speak the real protocols over real sockets.

pub mod gx;
