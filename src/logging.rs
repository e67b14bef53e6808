//! Log output: `tracing` events as plain text lines on standard error or as
//! JSON lines on standard output (`log.format`), filtered by `log.level`.
//!
//! Text lines get no colours unless standard error is a terminal. When
//! standard error is connected to journald (systemd sets `JOURNAL_STREAM`),
//! lines carry no timestamp of their own (the journal stamps each line) and
//! start with a `<N>` syslog priority prefix, so `journalctl -p warning`
//! works. JSON lines go to standard output, where platforms such as Railway
//! expect structured logs (they show standard error as errors).
//!
//! Lines are written by a background thread (`tracing-appender`): logging
//! never blocks polling or shutdown, even when whatever reads the daemon's
//! output stops reading (a full pipe, a stuck log collector). Past 1024
//! queued lines, new ones are dropped rather than waited for. [`flush`]
//! writes what is queued before the process exits.

use std::fmt;
use std::io::IsTerminal as _;
use std::sync::Mutex;

use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogConfig, LogFormat};

/// Keeps the background writer alive; taken and dropped by [`flush`].
static WRITER_GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);
/// Counts the lines dropped because the queue was full.
static DROPPED: Mutex<Option<ErrorCounter>> = Mutex::new(None);

/// Log lines dropped so far because whoever reads the output fell behind.
pub(crate) fn dropped_lines() -> u64 {
    DROPPED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map_or(0, |c| c.dropped_lines() as u64)
}

/// A writer that queues lines for a background thread, dropping lines
/// rather than blocking when the queue is full.
fn queued(output: impl std::io::Write + Send + 'static) -> NonBlocking {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(1024)
        .thread_name("victron-poller-log")
        .finish(output);
    *WRITER_GUARD.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    *DROPPED.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer.error_counter());
    writer
}

/// Writes the queued log lines (waiting at most about a second).
pub fn flush() {
    let guard = WRITER_GUARD
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    drop(guard);
}

/// Installs the global subscriber; a second call is a no-op.
pub(crate) fn init(config: &LogConfig) {
    let mut filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // The driver's own warnings (slow statements, a connection reset while
    // being returned to the pool) repeat what the daemon reports once per
    // outage, and server notices ("already exists, skipping") are noise:
    // only the driver's errors show, unless its logs are asked for.
    if !config.level.contains("sqlx") {
        for directive in ["sqlx=error", "sqlx::postgres::notice=off"] {
            if let Ok(directive) = directive.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if tracing::dispatcher::has_been_set() {
        return;
    }
    let _ = match config.format {
        LogFormat::Json => builder
            .with_writer(queued(std::io::stdout()))
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .try_init(),
        LogFormat::Text if stderr_is_journal() => builder
            .with_writer(queued(std::io::stderr()))
            .with_ansi(false)
            .event_format(JournalLine(
                Format::default().without_time().with_target(false),
            ))
            .try_init(),
        LogFormat::Text => builder
            .with_writer(queued(std::io::stderr()))
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Whether standard error is the journal stream systemd named in
/// `JOURNAL_STREAM` (`device:inode`), rather than, say, a redirection the
/// service set up itself.
pub(crate) fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The default line format without a timestamp, behind a priority prefix.
struct JournalLine(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for JournalLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::DEBUG), 7);
    }
}
