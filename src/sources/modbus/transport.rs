//! The TCP side of a GX connection, and what its failures mean to an
//! operator: one line that says what to do, never the payload of a reply.
//!
//! tokio-modbus 0.17 reports a connection the GX closed (end of stream) as
//! `io::Error::last_os_error()` (`service/tcp.rs`, `Client::call`), which is
//! whatever `errno` the worker thread last left behind: typically
//! "Operation now in progress (os error 115)" from the non-blocking
//! `connect`. [`Connection`] therefore watches the stream for end-of-stream
//! itself, so the error can say "connection closed by the GX".

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_modbus::client::Context;
use tokio_modbus::{ExceptionResponse, ProtocolError};

/// The fix for a refused connection.
pub const ENABLE_MODBUS_TCP: &str = "enable Modbus TCP on the GX: Settings → Services → Modbus TCP";

/// What a connection the GX closed reads as.
pub const CLOSED_BY_GX: &str = "connection closed by the GX";

/// One Modbus-TCP connection to a GX.
pub struct Connection {
    /// The tokio-modbus client on it.
    pub context: Context,
    closed: Arc<AtomicBool>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("closed_by_peer", &self.closed_by_peer())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A Modbus-TCP client on a connected stream.
    pub fn attach(stream: TcpStream) -> Self {
        let closed = Arc::new(AtomicBool::new(false));
        let context = tokio_modbus::client::tcp::attach(Watched {
            inner: stream,
            closed: Arc::clone(&closed),
        });
        Self { context, closed }
    }

    /// Whether a read has seen the end of the stream: the GX closed it.
    pub fn closed_by_peer(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// A TCP stream that notes when a read returns end-of-stream.
#[derive(Debug)]
struct Watched {
    inner: TcpStream,
    closed: Arc<AtomicBool>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let had_room = buf.remaining() > 0;
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && had_room && buf.filled().len() == before {
            this.closed.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A socket error as one actionable line.
pub fn describe_io_error(error: &io::Error) -> String {
    use io::ErrorKind as K;
    if is_stale_errno(error) {
        // tokio-modbus's end-of-stream (see the module documentation).
        return CLOSED_BY_GX.into();
    }
    match error.kind() {
        K::ConnectionRefused => format!("connection refused: {ENABLE_MODBUS_TCP}"),
        K::ConnectionReset => "connection reset by the GX".into(),
        K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => CLOSED_BY_GX.into(),
        K::NotConnected => "not connected to the GX".into(),
        K::TimedOut => {
            "no answer in time: check the GX's address, and that it is on and reachable".into()
        }
        K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown | K::AddrNotAvailable => {
            format!("{}: check the GX's address and the network", plain(error))
        }
        K::InvalidData => {
            let text = error.to_string();
            // tokio-modbus's decoder checks the protocol id (codec/tcp.rs).
            match text.strip_prefix("Invalid protocol identifier: expected = 0, actual = ") {
                Some(actual) => format!(
                    "reply header does not match the request: protocol id {actual}, expected 0 \
                     (is this a Modbus-TCP server?)"
                ),
                None => format!("malformed reply: {text}"),
            }
        }
        _ => plain(error),
    }
}

/// A tokio-modbus error as one line, without the reply's payload.
pub fn describe_modbus_error(error: &tokio_modbus::Error) -> String {
    match error {
        tokio_modbus::Error::Transport(io) => describe_io_error(io),
        tokio_modbus::Error::Protocol(ProtocolError::HeaderMismatch { message, .. }) => {
            header_mismatch(message)
        }
        tokio_modbus::Error::Protocol(ProtocolError::FunctionCodeMismatch { request, result }) => {
            let got = match result {
                Ok(response) => format!("function {:#04x}", response.function_code().value()),
                Err(ExceptionResponse {
                    function,
                    exception,
                }) => format!(
                    "exception {:#04x} for function {:#04x}",
                    u8::from(*exception),
                    function.value()
                ),
            };
            format!(
                "reply does not match the request: {got}, expected function {:#04x}",
                request.value()
            )
        }
    }
}

/// The fields that differ, from tokio-modbus 0.17's mismatch text
/// `expected/request = Header { transaction_id: 5, unit_id: 100 }, actual/response = Header { .. }`
/// (`service/mod.rs`, `verify_response_header`; `Header` itself is crate-private).
fn header_mismatch(message: &str) -> String {
    const LEAD: &str = "reply header does not match the request";
    let Some((expected, actual)) = message
        .split_once(", actual/response = ")
        .and_then(|(e, a)| Some((header_fields(e)?, header_fields(a)?)))
    else {
        return LEAD.into();
    };
    let mut differences = Vec::new();
    if actual.0 != expected.0 {
        differences.push(format!(
            "transaction id {}, expected {} (a late reply to an earlier request?)",
            actual.0, expected.0
        ));
    }
    if actual.1 != expected.1 {
        differences.push(format!("unit id {}, expected {}", actual.1, expected.1));
    }
    if differences.is_empty() {
        LEAD.into()
    } else {
        format!("{LEAD}: {}", differences.join("; "))
    }
}

/// (transaction id, unit id) out of `Header { transaction_id: 5, unit_id: 100 }`.
fn header_fields(text: &str) -> Option<(u16, u8)> {
    let number = |name: &str| {
        let rest = &text[text.find(name)? + name.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse::<u16>().ok()
    };
    let transaction = number("transaction_id: ")?;
    let unit = u8::try_from(number("unit_id: ")?).ok()?;
    Some((transaction, unit))
}

/// The `errno` values tokio-modbus's `last_os_error()` leaves at end of
/// stream; no socket call of an async stream reports them as a failure.
fn is_stale_errno(error: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    const STALE: [i32; 4] = [
        0, 11,  /* EAGAIN */
        114, /* EALREADY */
        115, /* EINPROGRESS */
    ];
    #[cfg(not(target_os = "linux"))]
    const STALE: [i32; 1] = [0];
    error
        .raw_os_error()
        .is_some_and(|code| STALE.contains(&code))
}

/// The error's text without " (os error N)", starting lower-case.
fn plain(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match error.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text)
            .to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use tokio_modbus::{ExceptionCode, FunctionCode, Response};

    use super::*;

    #[test]
    fn socket_errors_say_what_to_do() {
        let refused = describe_io_error(&io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            refused,
            "connection refused: enable Modbus TCP on the GX: Settings → Services → Modbus TCP"
        );
        for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::UnexpectedEof] {
            assert_eq!(describe_io_error(&io::Error::from(kind)), CLOSED_BY_GX);
        }
        #[cfg(target_os = "linux")]
        assert_eq!(
            describe_io_error(&io::Error::from_raw_os_error(115)),
            CLOSED_BY_GX,
            "EINPROGRESS is tokio-modbus's end of stream"
        );
        #[cfg(target_os = "linux")]
        assert_eq!(
            describe_io_error(&io::Error::from_raw_os_error(113)),
            "no route to host: check the GX's address and the network"
        );
    }

    #[test]
    fn a_header_mismatch_names_the_fields_not_the_payload() {
        let error = tokio_modbus::Error::Protocol(ProtocolError::HeaderMismatch {
            message: "expected/request = Header { transaction_id: 5, unit_id: 100 }, \
                      actual/response = Header { transaction_id: 4, unit_id: 246 }"
                .into(),
            result: Ok(Response::ReadHoldingRegisters(vec![4321; 53])),
        });
        let text = describe_modbus_error(&error);
        assert_eq!(
            text,
            "reply header does not match the request: transaction id 4, expected 5 \
             (a late reply to an earlier request?); unit id 246, expected 100"
        );
        assert!(!text.contains("4321") && !text.contains("ReadHoldingRegisters"));
        let unparsable = tokio_modbus::Error::Protocol(ProtocolError::HeaderMismatch {
            message: "something else".into(),
            result: Ok(Response::ReadHoldingRegisters(vec![4321; 53])),
        });
        assert_eq!(
            describe_modbus_error(&unparsable),
            "reply header does not match the request"
        );
    }

    #[test]
    fn a_function_mismatch_names_both_functions() {
        let error = tokio_modbus::Error::Protocol(ProtocolError::FunctionCodeMismatch {
            request: FunctionCode::ReadHoldingRegisters,
            result: Err(ExceptionResponse {
                function: FunctionCode::ReadInputRegisters,
                exception: ExceptionCode::IllegalDataAddress,
            }),
        });
        assert_eq!(
            describe_modbus_error(&error),
            "reply does not match the request: exception 0x02 for function 0x04, \
             expected function 0x03"
        );
    }

    #[test]
    fn a_wrong_protocol_id_is_named() {
        let error = io::Error::new(
            io::ErrorKind::InvalidData,
            "Invalid protocol identifier: expected = 0, actual = 7",
        );
        assert!(describe_io_error(&error).contains("protocol id 7, expected 0"));
    }
}
