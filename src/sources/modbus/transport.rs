//! The TCP side of a GX connection: register reads framed as Modbus-TCP
//! (MBAP), several in flight at once, and what a failure means to an
//! operator: one line that says what to do, never the payload of a reply.
//!
//! Modbus-TCP matches replies to requests by transaction id, so a client may
//! send the next request before the last reply came. [`Connection::exchange`]
//! sends up to a window of reads in one write and takes the replies in
//! whatever order they come: one send and about one wake-up per poll instead
//! of one per register block, which is most of a poll's CPU time (the
//! kernel's side of each send and receive). A GX's `dbus-modbustcp` frames
//! every request out of its stream and answers each; a server that answers
//! only the first of a window is found by its silence
//! ([`Exchange::stalled_mid_window`]) and the poller asks it one request at
//! a time from then on.
//!
//! tokio-modbus's client sends one request and waits for its reply before
//! the next, so this small client replaces it; the simulator still serves
//! with tokio-modbus's server. A reply is checked as strictly as
//! tokio-modbus checked it, and more: the protocol id and length field as
//! soon as a header arrives, the unit id and function, and the register
//! count (tokio-modbus only `debug_assert`s it).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_modbus::ExceptionCode;

use super::PollError;
use crate::clock::Mono;
use crate::registers::plan::Block;

/// The fix for a refused connection.
pub(crate) const ENABLE_MODBUS_TCP: &str =
    "enable Modbus TCP on the GX: Settings → Services → Modbus TCP";

/// What a connection the GX closed reads as.
pub(crate) const CLOSED_BY_GX: &str = "connection closed by the GX";

/// Most requests sent before their replies are awaited.
pub(crate) const WINDOW: usize = 16;

/// Modbus function 0x03, read holding registers.
const READ_HOLDING_REGISTERS: u8 = 0x03;

/// MBAP header: transaction id, protocol id, length, unit id.
const HEADER_LEN: usize = 7;

/// Longest length field of a Modbus-TCP frame: unit id and a 253-byte PDU.
const MAX_LENGTH_FIELD: usize = 254;

/// One register read: a block of holding registers of one unit id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadRequest {
    /// The unit id (the device behind the GX).
    pub(crate) unit: u8,
    /// The registers.
    pub(crate) block: Block,
}

/// The GX's answer to one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The registers, or the exception the GX raised.
    pub(crate) result: Result<Vec<u16>, ExceptionCode>,
    /// When the request went out (with the others of its window).
    pub(crate) sent: Mono,
    /// When the reply arrived.
    pub(crate) received: Mono,
}

/// What an exchange of several reads brought back.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// One entry per request, in request order; `None` where no answer came.
    pub(crate) answers: Vec<Option<Answer>>,
    /// What ended the exchange early; the connection is then no longer to be
    /// used. After a malformed or mismatched reply no answer is kept: a stream
    /// that sent one is trusted for none.
    pub(crate) failure: Option<PollError>,
    /// The failure came after some but not all replies of a window of several
    /// requests: the sign of a server that answers one request per read.
    pub(crate) stalled_mid_window: bool,
}

/// One Modbus-TCP connection to a GX.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet taken as a reply.
    received: Vec<u8>,
    next_transaction: u16,
}

/// A request on its way: its transaction id and its place in the exchange.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    transaction: u16,
    index: usize,
    request: ReadRequest,
}

impl Connection {
    /// A Modbus-TCP client on a connected stream.
    pub(crate) fn attach(stream: TcpStream) -> Self {
        Self {
            stream,
            received: Vec::with_capacity(512),
            next_transaction: 1,
        }
    }

    /// Reads one block; `wait` bounds the send and the wait for the reply.
    pub(crate) async fn read(
        &mut self,
        unit: u8,
        block: Block,
        wait: Duration,
    ) -> Result<Vec<u16>, PollError> {
        let mut exchange = self.exchange(&[ReadRequest { unit, block }], wait, 1).await;
        if let Some(failure) = exchange.failure {
            return Err(failure);
        }
        match exchange.answers.pop().flatten() {
            Some(answer) => answer.result.map_err(PollError::Exception),
            None => Err(PollError::Timeout(wait)),
        }
    }

    /// Sends `requests`, at most `window` of them before their replies, and
    /// collects the answers. `wait` bounds each send and the wait for each
    /// next reply, as it bounds a request sent alone.
    pub(crate) async fn exchange(
        &mut self,
        requests: &[ReadRequest],
        wait: Duration,
        window: usize,
    ) -> Exchange {
        let mut exchange = Exchange {
            answers: vec![None; requests.len()],
            failure: None,
            stalled_mid_window: false,
        };
        let window = window.clamp(1, WINDOW);
        let mut frames = Vec::with_capacity(12 * window);
        for (chunk_index, chunk) in requests.chunks(window).enumerate() {
            let first = chunk_index * window;
            let mut outstanding = Vec::with_capacity(chunk.len());
            frames.clear();
            for (offset, request) in chunk.iter().enumerate() {
                let transaction = self.take_transaction();
                frames.extend_from_slice(&request_frame(transaction, *request));
                outstanding.push(Outstanding {
                    transaction,
                    index: first + offset,
                    request: *request,
                });
            }
            let sent = Mono::now();
            let mut result = self.send(&frames, wait).await;
            if result.is_ok() {
                result = self
                    .receive(&mut outstanding, &mut exchange.answers, sent, wait)
                    .await;
            }
            if let Err(failure) = result {
                let answered = chunk.len() - outstanding.len();
                exchange.stalled_mid_window = chunk.len() > 1
                    && answered > 0
                    && matches!(failure, PollError::Timeout(_) | PollError::Closed);
                if matches!(failure, PollError::Reply(_)) {
                    exchange.answers.iter_mut().for_each(|a| *a = None);
                }
                exchange.failure = Some(failure);
                break;
            }
        }
        exchange
    }

    fn take_transaction(&mut self) -> u16 {
        let id = self.next_transaction;
        self.next_transaction = self.next_transaction.wrapping_add(1);
        id
    }

    async fn send(&mut self, frames: &[u8], wait: Duration) -> Result<(), PollError> {
        match timeout(wait, self.stream.write_all(frames)).await {
            Err(_) => Err(PollError::Timeout(wait)),
            Ok(result) => result.map_err(PollError::Io),
        }
    }

    /// Reads until every outstanding request is answered, each next reply
    /// within `wait` of the one before (a reply that trickles in byte by
    /// byte gets no more time than one that does not come).
    async fn receive(
        &mut self,
        outstanding: &mut Vec<Outstanding>,
        answers: &mut [Option<Answer>],
        sent: Mono,
        wait: Duration,
    ) -> Result<(), PollError> {
        let mut deadline = Instant::now() + wait;
        loop {
            while let Some(frame_len) = complete_frame(&self.received)? {
                let answer = take_answer(&self.received[..frame_len], outstanding)?;
                self.received.drain(..frame_len);
                let (index, result) = answer;
                answers[index] = Some(Answer {
                    result,
                    sent,
                    received: Mono::now(),
                });
                deadline = Instant::now() + wait;
            }
            if outstanding.is_empty() {
                return Ok(());
            }
            match timeout_at(deadline, self.stream.read_buf(&mut self.received)).await {
                Err(_) => return Err(PollError::Timeout(wait)),
                Ok(Ok(0)) => return Err(PollError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(PollError::Io(error)),
            }
        }
    }
}

/// A read-holding-registers request frame.
fn request_frame(transaction: u16, request: ReadRequest) -> [u8; 12] {
    let [t0, t1] = transaction.to_be_bytes();
    let [s0, s1] = request.block.start.to_be_bytes();
    let [c0, c1] = request.block.count.to_be_bytes();
    [
        t0,
        t1,
        0,
        0,
        0,
        6,
        request.unit,
        READ_HOLDING_REGISTERS,
        s0,
        s1,
        c0,
        c1,
    ]
}

/// The length of the frame at the start of `bytes` once it is all there;
/// a header that cannot start a Modbus-TCP frame is refused at once.
fn complete_frame(bytes: &[u8]) -> Result<Option<usize>, PollError> {
    if bytes.len() < HEADER_LEN {
        return Ok(None);
    }
    let protocol = u16::from_be_bytes([bytes[2], bytes[3]]);
    if protocol != 0 {
        return Err(PollError::Reply(format!(
            "reply header does not match the request: protocol id {protocol}, expected 0 \
             (is this a Modbus-TCP server?)"
        )));
    }
    let length = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
    if !(3..=MAX_LENGTH_FIELD).contains(&length) {
        return Err(PollError::Reply(format!(
            "malformed reply: length field {length}, a Modbus-TCP frame has 3 to \
             {MAX_LENGTH_FIELD}"
        )));
    }
    let total = 6 + length;
    Ok((bytes.len() >= total).then_some(total))
}

/// Matches one whole reply frame to its request and decodes it: the
/// request's place and the registers or exception. The request is no longer
/// outstanding afterwards.
fn take_answer(
    frame: &[u8],
    outstanding: &mut Vec<Outstanding>,
) -> Result<(usize, Result<Vec<u16>, ExceptionCode>), PollError> {
    let transaction = u16::from_be_bytes([frame[0], frame[1]]);
    let unit = frame[6];
    let Some(position) = outstanding
        .iter()
        .position(|o| o.transaction == transaction)
    else {
        let expected = outstanding.first().map_or(0, |o| o.transaction);
        return Err(PollError::Reply(format!(
            "reply header does not match the request: transaction id {transaction}, expected \
             {expected} (a late reply to an earlier request?)"
        )));
    };
    let Outstanding { index, request, .. } = outstanding.remove(position);
    if unit != request.unit {
        return Err(PollError::Reply(format!(
            "reply header does not match the request: unit id {unit}, expected {}",
            request.unit
        )));
    }
    let function = frame[7];
    let body = &frame[8..];
    if function == READ_HOLDING_REGISTERS | 0x80 {
        let code = body.first().copied().unwrap_or_default();
        return Ok((index, Err(ExceptionCode::new(code))));
    }
    if function != READ_HOLDING_REGISTERS {
        let got = if function & 0x80 != 0 {
            format!(
                "exception {:#04x} for function {:#04x}",
                body.first().copied().unwrap_or_default(),
                function & 0x7f
            )
        } else {
            format!("function {function:#04x}")
        };
        return Err(PollError::Reply(format!(
            "reply does not match the request: {got}, expected function \
             {READ_HOLDING_REGISTERS:#04x}"
        )));
    }
    let block = request.block;
    let data = body.get(1..).unwrap_or_default();
    let announced = body.first().map_or(0, |&n| usize::from(n));
    if announced != data.len() || data.len() % 2 != 0 {
        return Err(PollError::Reply(format!(
            "malformed reply: byte count {announced} for {} bytes of registers",
            data.len()
        )));
    }
    if data.len() != 2 * usize::from(block.count) {
        return Err(PollError::Reply(format!(
            "asked for {} registers at {}, got {} registers",
            block.count,
            block.start,
            data.len() / 2
        )));
    }
    let words = data
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    Ok((index, Ok(words)))
}

/// A socket error as one actionable line.
pub(crate) fn describe_io_error(error: &io::Error) -> String {
    use io::ErrorKind as K;
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
        _ => plain(error),
    }
}

/// What went wrong when a GX that answered since start can no longer be
/// reached: it went away (a reboot, the network), so the advice for a GX
/// never reached (enable Modbus TCP, check its address) does not apply.
pub(crate) const WENT_AWAY: &str =
    "the GX answered before and went away (rebooting, or the network)";

/// A connect error as one line, for a GX that answered since start
/// (`answered_before`) or one never reached.
pub(crate) fn describe_connect_error(error: &io::Error, answered_before: bool) -> String {
    use io::ErrorKind as K;
    if !answered_before {
        return describe_io_error(error);
    }
    match error.kind() {
        K::ConnectionRefused => format!("connection refused: {WENT_AWAY}"),
        K::TimedOut => format!("no answer in time: {WENT_AWAY}"),
        K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown | K::AddrNotAvailable => {
            format!("{}: {WENT_AWAY}", plain(error))
        }
        _ => describe_io_error(error),
    }
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
    use super::*;

    fn outstanding(transaction: u16, unit: u8, count: u16) -> Outstanding {
        Outstanding {
            transaction,
            index: usize::from(transaction),
            request: ReadRequest {
                unit,
                block: Block { start: 840, count },
            },
        }
    }

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
            describe_io_error(&io::Error::from_raw_os_error(113)),
            "no route to host: check the GX's address and the network"
        );
    }

    /// Once the GX has answered, a refused or unanswered connection is a GX
    /// that went away, not one whose Modbus TCP is off or whose address is
    /// wrong.
    #[test]
    fn a_gx_that_answered_before_went_away() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            describe_connect_error(&refused, false),
            describe_io_error(&refused)
        );
        assert_eq!(
            describe_connect_error(&refused, true),
            "connection refused: the GX answered before and went away (rebooting, or the network)"
        );
        let slow = describe_connect_error(&io::Error::from(io::ErrorKind::TimedOut), true);
        assert_eq!(
            slow,
            "no answer in time: the GX answered before and went away (rebooting, or the network)"
        );
        #[cfg(target_os = "linux")]
        assert_eq!(
            describe_connect_error(&io::Error::from_raw_os_error(113), true),
            "no route to host: the GX answered before and went away (rebooting, or the network)"
        );
        for text in [describe_connect_error(&refused, true), slow] {
            assert!(
                !text.contains("Modbus TCP") && !text.contains("address"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_request_frame_is_the_mbap_header_and_the_pdu() {
        let frame = request_frame(
            0x0102,
            ReadRequest {
                unit: 226,
                block: Block {
                    start: 259,
                    count: 5,
                },
            },
        );
        // Modbus Messaging on TCP/IP V1.0b, 4.1: 2 + 2 + 2 bytes, unit, PDU.
        assert_eq!(frame, [1, 2, 0, 0, 0, 6, 226, 3, 0x01, 0x03, 0, 5]);
    }

    #[test]
    fn a_header_is_judged_as_soon_as_it_arrives() {
        assert!(matches!(complete_frame(&[0, 1, 0, 0, 0]), Ok(None)));
        assert!(matches!(complete_frame(&[0, 1, 0, 0, 0, 7, 100]), Ok(None)));
        assert!(matches!(
            complete_frame(&[0, 1, 0, 0, 0, 5, 100, 3, 2, 0, 1]),
            Ok(Some(11))
        ));
        let Err(PollError::Reply(text)) = complete_frame(b"\xde\xad\xbe\xef\x20\x67 garbage")
        else {
            panic!("a protocol id other than 0 is refused");
        };
        assert!(text.contains("protocol id 48879, expected 0"), "{text}");
        let Err(PollError::Reply(text)) = complete_frame(&[0, 1, 0, 0, 0x01, 0x00, 100]) else {
            panic!("a length beyond a frame's is refused");
        };
        assert!(text.contains("length field 256"), "{text}");
    }

    #[test]
    fn replies_are_matched_by_transaction_id_in_any_order() {
        let mut waiting = vec![outstanding(7, 100, 1), outstanding(8, 226, 2)];
        let second = [0, 8, 0, 0, 0, 7, 226, 3, 4, 0x12, 0x34, 0xff, 0xff];
        assert_eq!(
            take_answer(&second, &mut waiting).unwrap(),
            (8, Ok(vec![0x1234, 0xffff]))
        );
        let exception = [0, 7, 0, 0, 0, 3, 100, 0x83, 0x0a];
        assert_eq!(
            take_answer(&exception, &mut waiting).unwrap(),
            (7, Err(ExceptionCode::GatewayPathUnavailable))
        );
        assert!(waiting.is_empty());
    }

    #[test]
    fn a_reply_that_does_not_fit_its_request_names_what_differs() {
        let text = |frame: &[u8], waiting: &mut Vec<Outstanding>| match take_answer(frame, waiting)
        {
            Err(PollError::Reply(text)) => text,
            other => panic!("{other:?}"),
        };
        let late = [0, 4, 0, 0, 0, 5, 100, 3, 2, 0x10, 0xe1];
        assert_eq!(
            text(&late, &mut vec![outstanding(5, 100, 1)]),
            "reply header does not match the request: transaction id 4, expected 5 \
             (a late reply to an earlier request?)"
        );
        let other_unit = [0, 5, 0, 0, 0, 5, 246, 3, 2, 0x10, 0xe1];
        assert_eq!(
            text(&other_unit, &mut vec![outstanding(5, 100, 1)]),
            "reply header does not match the request: unit id 246, expected 100"
        );
        let short = [0, 5, 0, 0, 0, 5, 100, 3, 2, 0, 1];
        assert_eq!(
            text(&short, &mut vec![outstanding(5, 100, 53)]),
            "asked for 53 registers at 840, got 1 registers"
        );
        let other_function = [0, 5, 0, 0, 0, 3, 100, 0x90, 0x04];
        assert_eq!(
            text(&other_function, &mut vec![outstanding(5, 100, 1)]),
            "reply does not match the request: exception 0x04 for function 0x10, \
             expected function 0x03"
        );
        let miscounted = [0, 5, 0, 0, 0, 5, 100, 3, 4, 0, 1];
        assert!(text(&miscounted, &mut vec![outstanding(5, 100, 1)]).contains("byte count 4"));
    }
}
