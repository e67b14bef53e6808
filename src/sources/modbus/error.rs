//! Why a request or the connection failed ([`PollError`]), what the GX's
//! exception codes mean, and the status class of each failure.

use std::io;
use std::time::Duration;

use tokio_modbus::ExceptionCode;

use super::transport::{self, describe_connect_error, describe_io_error};
use crate::status::ErrorClass;

/// Why one request (or the connection) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PollError {
    /// No TCP connection could be opened.
    #[error("cannot connect to {address}: {}", describe_connect_error(.source, *.answered_before))]
    Connect {
        /// host:port.
        address: String,
        /// The socket error.
        source: io::Error,
        /// The GX answered since start: it went away, rather than never
        /// having been reached (which the advice differs for).
        answered_before: bool,
    },
    /// No reply within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The GX closed the connection (a read saw the end of the stream).
    #[error("{}", transport::CLOSED_BY_GX)]
    Closed,
    /// Sending or receiving failed.
    #[error("{}", describe_io_error(.0))]
    Io(io::Error),
    /// A reply was malformed or did not match its request; the text names
    /// what differed, never the reply's payload.
    #[error("{0}")]
    Reply(String),
    /// The GX answered with an exception.
    #[error("exception {:#04x} ({})", u8::from(*.0), exception_name(*.0))]
    Exception(ExceptionCode),
}

/// The GX's meaning of an exception code.
pub(crate) fn exception_name(code: ExceptionCode) -> &'static str {
    match code {
        ExceptionCode::IllegalFunction => "illegal function",
        ExceptionCode::IllegalDataAddress => "illegal data address: a register is not mapped",
        ExceptionCode::IllegalDataValue => "illegal data value: bad quantity",
        ExceptionCode::GatewayPathUnavailable => {
            "gateway path unavailable: no such device on this unit id, or it is offline"
        }
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond",
        _ => "unexpected exception",
    }
}

impl PollError {
    /// The status class of this error.
    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            Self::Connect { .. } => ErrorClass::Connect,
            Self::Timeout(_) => ErrorClass::Timeout,
            Self::Closed | Self::Io(_) | Self::Reply(_) => ErrorClass::Transport,
            Self::Exception(
                ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice,
            ) => ErrorClass::Unavailable,
            Self::Exception(_) => ErrorClass::Exception,
        }
    }

    /// Whether the connection can no longer be trusted (a late reply would
    /// be taken for the next request's).
    pub(crate) fn drops_connection(&self) -> bool {
        !matches!(self, Self::Exception(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        assert_eq!(
            PollError::Exception(ExceptionCode::GatewayPathUnavailable).class(),
            ErrorClass::Unavailable
        );
        assert!(!PollError::Exception(ExceptionCode::IllegalDataAddress).drops_connection());
        assert!(PollError::Timeout(Duration::from_secs(1)).drops_connection());
        let text = PollError::Exception(ExceptionCode::GatewayPathUnavailable).to_string();
        assert!(
            text.starts_with("exception 0x0a (gateway path unavailable"),
            "{text}"
        );
        assert_eq!(PollError::Closed.class(), ErrorClass::Transport);
        assert!(PollError::Closed.drops_connection());
        let refused = PollError::Connect {
            address: "10.0.0.5:502".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
            answered_before: false,
        };
        assert_eq!(
            refused.to_string(),
            "cannot connect to 10.0.0.5:502: connection refused: \
             enable Modbus TCP on the GX: Settings → Services → Modbus TCP"
        );
    }
}
