//! Sources produce readings: the Modbus-TCP poller for GX devices and the
//! VE.Direct reader for serial devices, both on the fixed-rate schedule of
//! [`crate::schedule`].

pub mod modbus;
pub mod vedirect;
