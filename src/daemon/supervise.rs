//! Keeps the daemon's long-running tasks alive. A task that panics is
//! logged as an error naming it and its devices, its devices are marked
//! failed in the status, the restart is counted (a reason in the health
//! verdict for [`RESTART_LASTS`]), and it starts again after a backoff —
//! the source's own reconnect backoff for a source. A panic anywhere else
//! is logged by the process's panic hook ([`log_panics`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::report::TaskRestart;
use crate::status::{ErrorClass, StatusBoard};

/// How long a restart stays a reason in the health verdict.
pub(crate) const RESTART_LASTS: Duration = Duration::from_secs(3600);

/// A task that ran this long without panicking starts its backoff afresh.
const STEADY_AFTER: Duration = Duration::from_secs(60);

/// Every restart since start, shared with the status.
#[derive(Debug, Default)]
pub(crate) struct Restarts(Mutex<Vec<TaskRestart>>);

impl Restarts {
    /// The tasks restarted within [`RESTART_LASTS`].
    pub(crate) fn recent(&self) -> Vec<TaskRestart> {
        let since = Utc::now() - chrono::Duration::from_std(RESTART_LASTS).unwrap_or_default();
        self.lock()
            .iter()
            .filter(|r| r.at >= since)
            .cloned()
            .collect()
    }

    fn record(&self, task: &str, message: &str) {
        let mut restarts = self.lock();
        let now = Utc::now();
        match restarts.iter_mut().find(|r| r.task == task) {
            Some(r) => {
                r.panics += 1;
                r.last_panic = message.to_string();
                r.at = now;
            }
            None => restarts.push(TaskRestart {
                task: task.to_string(),
                panics: 1,
                last_panic: message.to_string(),
                at: now,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TaskRestart>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a supervised task is, for the log and the status.
#[derive(Debug, Clone)]
pub(crate) struct Supervised {
    /// Its name.
    pub(crate) task: String,
    /// The devices it polls (none for a helper task).
    pub(crate) devices: Vec<String>,
    /// The first and the longest wait before a restart.
    pub(crate) backoff: (Duration, Duration),
}

impl Supervised {
    /// A helper task (no device of its own): restarted after 1 s, at most
    /// 30 s after repeated panics.
    pub(crate) fn helper(task: &str) -> Self {
        Self {
            task: task.to_string(),
            devices: Vec::new(),
            backoff: (Duration::from_secs(1), Duration::from_secs(30)),
        }
    }
}

/// Runs `start()`'s task until it ends by itself or `cancel` fires,
/// starting it again whenever it panics.
pub(crate) async fn supervise<F, Fut>(
    what: Supervised,
    status: StatusBoard,
    restarts: Arc<Restarts>,
    cancel: CancellationToken,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (first, longest) = what.backoff;
    let mut delay = first;
    loop {
        let started = Instant::now();
        let Err(error) = tokio::spawn(start()).await else {
            return;
        };
        let Ok(panic) = error.try_into_panic() else {
            return; // cancelled with the runtime
        };
        let message = panic_message(panic.as_ref());
        if started.elapsed() >= STEADY_AFTER {
            delay = first;
        }
        tracing::error!(
            task = %what.task,
            devices = %what.devices.join(", "),
            panic = %message,
            restart_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "A task of the daemon panicked; it is restarted."
        );
        let error = format!("its task panicked ({message}); restarting");
        for device in &what.devices {
            status.failure(device, Utc::now(), ErrorClass::Internal, &error);
        }
        restarts.record(&what.task, &message);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(longest.max(first));
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Logs every panic of the process as an error (with where it happened),
/// through the daemon's log rather than bare stderr: one that kills a task
/// outside a supervisor is never a silent hole.
pub fn log_panics() {
    let before_logging = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Before the log is set up (reading the configuration), the
        // standard report on stderr is the only one there is.
        if !tracing::dispatcher::has_been_set() {
            before_logging(info);
            return;
        }
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            panic = %panic_message(info.payload()),
            at = %place,
            thread = thread.name().unwrap_or("unnamed"),
            "Panic."
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::SourceKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A task that panics twice is restarted twice, after its backoff; its
    /// device is marked failed with the panic's text, and the restarts are
    /// counted; the third run ends normally and so does the supervisor.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_reported() {
        let status = StatusBoard::new();
        status.register("bank", SourceKind::VeDirect, "/dev/ttyUSB0".into());
        let restarts = Arc::new(Restarts::default());
        let runs = Arc::new(AtomicU32::new(0));
        let began = Instant::now();
        let counted = Arc::clone(&runs);
        supervise(
            Supervised {
                task: "source vedirect bank".into(),
                devices: vec!["bank".into()],
                backoff: (Duration::from_millis(500), Duration::from_secs(30)),
            },
            status.clone(),
            Arc::clone(&restarts),
            CancellationToken::new(),
            move || {
                let run = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert!(run >= 2, "odd byte in run {run}");
                }
            },
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        // 500 ms, then 1000 ms.
        assert_eq!(began.elapsed(), Duration::from_millis(1500));
        let recent = restarts.recent();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].panics, 2);
        assert!(recent[0].last_panic.contains("odd byte in run 1"));
        let bank = status.get("bank").unwrap();
        assert_eq!(bank.last_error_class, Some(ErrorClass::Internal));
        assert!(bank.last_error.unwrap().contains("odd byte in run 1"));
    }

    /// A cancelled supervisor does not wait out its backoff.
    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_before_a_restart() {
        let cancel = CancellationToken::new();
        let began = Instant::now();
        let stop = cancel.clone();
        supervise(
            Supervised {
                task: "forwarder".into(),
                devices: Vec::new(),
                backoff: (Duration::from_secs(60), Duration::from_secs(60)),
            },
            StatusBoard::new(),
            Arc::default(),
            cancel,
            move || {
                stop.cancel();
                async { panic!("always") }
            },
        )
        .await;
        assert_eq!(began.elapsed(), Duration::ZERO);
    }
}
