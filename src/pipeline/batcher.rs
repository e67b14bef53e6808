//! Groups readings into batches — a batch closes at `max_readings`, or
//! `max_age` after its first reading (on a grid point in the second half of
//! that age, when given a [`Grid`]), whichever comes first — and hands each
//! to a [`BatchSink`]. A batch the sink refuses (a full disk) waits in
//! memory while new batches keep forming behind it, and is retried with
//! backoff (at most 2 s apart), oldest first; the readings waiting
//! are bounded (`store.max_readings_in_memory`): beyond it the oldest are
//! dropped and counted, never silently. When every source has dropped its
//! sender, the partial batch and whatever waits are committed (with a
//! bounded patience) and the batcher ends, saying how many readings it
//! could not store: that is how shutdown knows what is safe.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::WriteHealth;
use crate::config::BatchConfig;
use crate::reading::Reading;
use crate::schedule::{Alarm, Grid};

/// The first wait after a failed commit; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two commit attempts: writing resumes within
/// this of the store taking writes again (space freed on a full disk).
const RETRY_MAX: Duration = Duration::from_secs(2);
/// At most this many waiting readings go to the sink in one commit.
const RETRY_CHUNK: usize = 2_000;
/// How often dropping readings is logged again while it goes on.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// Where batches go.
pub(crate) trait BatchSink {
    /// Why the sink refused a batch.
    type Error: std::fmt::Display;

    /// Commits one batch, all or nothing. The sink may settle the readings'
    /// measurement times in place (see [`crate::clock`]).
    fn commit(
        &mut self,
        batch: &mut [Reading],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What the batcher gives back when its sources are gone.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Readings the sink never took, even at the stop: lost.
    pub(crate) unstored: usize,
}

/// The batching stage.
#[derive(Debug)]
pub(crate) struct Batcher<S> {
    limits: BatchConfig,
    sink: S,
    batch: Vec<Reading>,
    grid: Option<Grid>,
    alarm: Alarm,
    /// Readings the sink refused, oldest first: they wait here and go
    /// first at the next attempt.
    waiting: VecDeque<Reading>,
    /// The most readings that may wait; beyond it the oldest are dropped.
    max_waiting: usize,
    /// While readings wait: when the next attempt is due, and the wait
    /// after it.
    retry: Option<(Instant, Duration)>,
    /// When dropping readings was last logged.
    drop_logged: Option<Instant>,
    /// What the daemon's status says of the writes.
    health: Arc<WriteHealth>,
    /// How long the last commit at a stop keeps trying.
    stop_patience: Duration,
}

/// What the batcher waits for next.
enum Next {
    Reading(Reading),
    Retry,
    Closed,
}

impl<S: BatchSink> Batcher<S> {
    /// A batcher committing into `sink`.
    pub(crate) fn new(limits: BatchConfig, sink: S) -> Self {
        Self {
            batch: Vec::with_capacity(limits.max_readings.min(10_000)),
            limits,
            sink,
            grid: None,
            alarm: Alarm::runtime(),
            waiting: VecDeque::new(),
            max_waiting: usize::MAX,
            retry: None,
            drop_logged: None,
            health: Arc::default(),
            stop_patience: Duration::from_secs(10),
        }
    }

    /// Closes batches on points of `grid` where one falls in the second
    /// half of a batch's age: on the common grid with an age that is a
    /// multiple of the poll interval, a batch closes as a poll starts, in
    /// the same wake-up (with the polls' kind of `alarm`), not in one of
    /// its own.
    pub(crate) fn on_grid(mut self, grid: Grid, alarm: Alarm) -> Self {
        self.grid = Some(grid);
        self.alarm = alarm;
        self
    }

    /// While the sink refuses batches, keeps at most `max_waiting` readings
    /// in memory (the oldest beyond it are dropped and counted), reporting
    /// in `health`; at the stop, tries for at most `stop_patience`.
    pub(crate) fn holding(
        mut self,
        max_waiting: usize,
        health: Arc<WriteHealth>,
        stop_patience: Duration,
    ) -> Self {
        self.max_waiting = max_waiting.max(1);
        self.health = health;
        self.stop_patience = stop_patience;
        self
    }

    /// When a batch opened at `opened` closes: `batch.max_age` after, or the
    /// latest grid point of that period in the second half of its age.
    fn deadline(&self, opened: Instant) -> Instant {
        let latest = opened + self.limits.max_age;
        match self
            .grid
            .and_then(|grid| grid.point_at_or_before(latest, self.limits.max_age))
        {
            Some(point) if point >= opened + self.limits.max_age / 2 => point,
            _ => latest,
        }
    }

    /// Batches `readings` until every sender is gone, commits the partial
    /// batch and whatever waits, and gives the sink back with how many
    /// readings it could not take.
    pub(crate) async fn run(mut self, mut readings: mpsc::Receiver<Reading>) -> Finished {
        loop {
            let next = match self.retry {
                Some((at, _)) => tokio::select! {
                    biased;
                    reading = readings.recv() => reading.map_or(Next::Closed, Next::Reading),
                    () = tokio::time::sleep_until(at) => Next::Retry,
                },
                None => readings.recv().await.map_or(Next::Closed, Next::Reading),
            };
            let first = match next {
                Next::Closed => break,
                Next::Retry => {
                    self.write_waiting().await;
                    continue;
                }
                Next::Reading(first) => first,
            };
            self.batch.push(first);
            let deadline = self.deadline(Instant::now());
            let mut closed = false;
            {
                let aged = self.alarm.sleep_until(deadline);
                tokio::pin!(aged);
                while self.batch.len() < self.limits.max_readings {
                    tokio::select! {
                        biased;
                        reading = readings.recv() => match reading {
                            Some(reading) => self.batch.push(reading),
                            None => {
                                closed = true;
                                break;
                            }
                        },
                        () = &mut aged => break,
                    }
                }
            }
            self.commit().await;
            if closed {
                break;
            }
        }
        self.finish().await
    }

    /// Commits the batch; one the sink refuses waits in memory, after any
    /// older readings still waiting (so readings are stored in order).
    async fn commit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if self.waiting.is_empty() {
            match self.sink.commit(&mut self.batch).await {
                Ok(()) => {
                    self.batch.clear();
                    return;
                }
                Err(error) => self.refused(&error),
            }
        }
        self.waiting.extend(self.batch.drain(..));
        self.bound();
        if self.retry.is_some_and(|(at, _)| at <= Instant::now()) {
            self.write_waiting().await;
        }
    }

    /// Commits the waiting readings, oldest first, until they are all in
    /// or the sink refuses again (then the next attempt is scheduled).
    async fn write_waiting(&mut self) {
        let mut written = 0usize;
        while !self.waiting.is_empty() {
            let n = self.waiting.len().min(RETRY_CHUNK);
            let chunk = &mut self.waiting.make_contiguous()[..n];
            if let Err(error) = self.sink.commit(chunk).await {
                self.refused(&error);
                self.health
                    .update(|h| h.readings_in_memory = self.waiting.len() as u64);
                return;
            }
            self.waiting.drain(..n);
            written += n;
        }
        self.retry = None;
        self.health.update(|h| {
            h.failing_since = None;
            h.readings_in_memory = 0;
        });
        tracing::info!(
            readings = written,
            "The local store takes readings again: the readings that waited in memory are written."
        );
    }

    /// Notes a refused commit: the first of an episode is logged, and the
    /// next attempt is scheduled with backoff.
    fn refused(&mut self, error: &S::Error) {
        let delay = match self.retry {
            None => {
                tracing::error!(
                    %error,
                    readings = self.waiting.len() + self.batch.len(),
                    max_in_memory = self.max_waiting,
                    "Cannot write to the local store; readings wait in memory and writing is retried."
                );
                RETRY_FIRST
            }
            Some((_, delay)) => delay,
        };
        self.retry = Some((Instant::now() + delay, (delay * 2).min(RETRY_MAX)));
        let message = error.to_string();
        self.health.update(|h| {
            h.failing_since.get_or_insert_with(chrono::Utc::now);
            h.last_error = Some(message);
        });
    }

    /// Drops the oldest waiting readings beyond the bound, counting them.
    fn bound(&mut self) {
        let excess = self.waiting.len().saturating_sub(self.max_waiting);
        if excess > 0 {
            self.waiting.drain(..excess);
            let now = chrono::Utc::now();
            let mut total = 0;
            self.health.update(|h| {
                h.readings_dropped += excess as u64;
                h.last_dropped_at = Some(now);
                total = h.readings_dropped;
            });
            if self
                .drop_logged
                .is_none_or(|at| at.elapsed() >= DROP_LOG_EVERY)
            {
                self.drop_logged = Some(Instant::now());
                tracing::error!(
                    dropped = excess,
                    dropped_since_start = total,
                    max_in_memory = self.max_waiting,
                    "The local store still refuses writes and the readings waiting in memory reached their bound: the oldest are dropped."
                );
            }
        }
        let in_memory = self.waiting.len() as u64;
        self.health.update(|h| h.readings_in_memory = in_memory);
    }

    /// At the stop: what still waits gets `stop_patience` to be written.
    async fn finish(mut self) -> Finished {
        self.commit().await;
        let give_up = Instant::now() + self.stop_patience;
        while !self.waiting.is_empty() {
            let at = self.retry.map_or_else(Instant::now, |(at, _)| at);
            if at > give_up {
                break;
            }
            tokio::time::sleep_until(at).await;
            self.write_waiting().await;
        }
        let unstored = self.waiting.len();
        if unstored > 0 {
            self.health.update(|h| {
                h.readings_dropped += unstored as u64;
                h.last_dropped_at = Some(chrono::Utc::now());
            });
        }
        Finished { unstored }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use chrono::{TimeZone as _, Utc};
    use tokio::time::Instant;

    use super::*;
    use crate::reading::{ReadingTable, SourceKind, Value};

    /// When a batch was committed, and the SOC values it held.
    type Committed = (Instant, Vec<f64>);

    /// Records what it commits, and when; refuses the first `failures` commits.
    #[derive(Debug, Clone, Default)]
    struct Recorder {
        batches: Arc<Mutex<Vec<Committed>>>,
        failures: Arc<Mutex<u32>>,
    }

    impl BatchSink for Recorder {
        type Error = &'static str;

        async fn commit(&mut self, batch: &mut [Reading]) -> Result<(), &'static str> {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err("the store is closed");
            }
            let values = batch.iter().filter_map(|r| r.float("soc")).collect();
            self.batches.lock().unwrap().push((Instant::now(), values));
            Ok(())
        }
    }

    impl Recorder {
        fn batches(&self) -> Vec<Committed> {
            self.batches.lock().unwrap().clone()
        }
    }

    fn reading(soc: f64) -> Reading {
        Reading {
            site: "ranch".into(),
            device: "bank".into(),
            table: ReadingTable::Battery,
            source: SourceKind::Modbus,
            measured_at: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
            unconfirmed: None,
            values: vec![("soc", Value::Float(soc))],
        }
    }

    fn limits(max_readings: usize, max_age_ms: u64) -> BatchConfig {
        BatchConfig {
            max_readings,
            max_age: Duration::from_millis(max_age_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_closes_at_its_size_or_its_age() {
        let sink = Recorder::default();
        let (tx, rx) = mpsc::channel(16);
        let start = Instant::now();
        let task = tokio::spawn(Batcher::new(limits(3, 500), sink.clone()).run(rx));
        for soc in [1.0, 2.0, 3.0, 4.0, 5.0] {
            tx.send(reading(soc)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Three readings close a batch at once; the other two wait.
        let batches = sink.batches();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].1, vec![1.0, 2.0, 3.0]);
        assert_eq!(batches[0].0, start);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let batches = sink.batches();
        assert_eq!(
            batches.len(),
            2,
            "the second batch closes 500 ms after its first reading"
        );
        assert_eq!(batches[1].1, vec![4.0, 5.0]);
        assert_eq!(batches[1].0 - start, Duration::from_millis(500));
        drop(tx);
        task.await.unwrap();
    }

    /// On a grid, a batch closes on the grid point in the second half of
    /// its age: opened 300 ms past a point of a 1-s grid, it closes 700 ms
    /// later (on the next point), not 1 s later; opened 700 ms past one
    /// (the next point only 300 ms away, less than half its age), after
    /// its full age.
    #[tokio::test(start_paused = true)]
    async fn on_a_grid_a_batch_closes_on_a_grid_point() {
        for (past_point, closes_after) in [(300, 700), (700, 1000)] {
            let sink = Recorder::default();
            let (tx, rx) = mpsc::channel(16);
            let start = Instant::now();
            let grid = Grid::starting_at(start - Duration::from_millis(past_point));
            let batcher =
                Batcher::new(limits(200, 1000), sink.clone()).on_grid(grid, Alarm::runtime());
            let task = tokio::spawn(batcher.run(rx));
            tx.send(reading(1.0)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let batches = sink.batches();
            assert_eq!(batches.len(), 1);
            assert_eq!(
                batches[0].0 - start,
                Duration::from_millis(closes_after),
                "opened {past_point} ms past a grid point"
            );
            drop(tx);
            task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_partial_batch_is_committed_when_the_sources_close() {
        let sink = Recorder::default();
        let (tx, rx) = mpsc::channel(16);
        let start = Instant::now();
        let task = tokio::spawn(Batcher::new(limits(200, 60_000), sink.clone()).run(rx));
        tx.send(reading(1.0)).await.unwrap();
        tx.send(reading(2.0)).await.unwrap();
        drop(tx);
        task.await.unwrap();
        let batches = sink.batches();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].1, vec![1.0, 2.0]);
        assert_eq!(batches[0].0, start, "without waiting for the batch's age");
    }

    /// A batch the sink refuses waits in memory; the next batch forms
    /// behind it, and both go in one commit, in order, once the sink takes
    /// writes again (retries after 100, 200 and 400 ms here, the third due
    /// while the next batch was open, so taken when it closes).
    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_waits_in_memory_and_goes_first_when_writes_resume() {
        let sink = Recorder::default();
        *sink.failures.lock().unwrap() = 3;
        let health = Arc::new(WriteHealth::default());
        let (tx, rx) = mpsc::channel(16);
        let start = Instant::now();
        let batcher = Batcher::new(limits(2, 500), sink.clone()).holding(
            100,
            Arc::clone(&health),
            Duration::from_secs(10),
        );
        let task = tokio::spawn(batcher.run(rx));
        tx.send(reading(1.0)).await.unwrap();
        tx.send(reading(2.0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
        let now = health.now();
        assert!(now.failing_since.is_some(), "{now:?}");
        assert_eq!(now.readings_in_memory, 2);
        assert!(now.last_error.is_some());
        tx.send(reading(3.0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let batches = sink.batches();
        assert_eq!(batches.len(), 1, "{batches:?}");
        assert_eq!(batches[0].1, vec![1.0, 2.0, 3.0]);
        assert_eq!(batches[0].0 - start, Duration::from_millis(850));
        let now = health.now();
        assert_eq!(
            (
                now.failing_since,
                now.readings_in_memory,
                now.readings_dropped
            ),
            (None, 0, 0)
        );
        drop(tx);
        assert_eq!(task.await.unwrap().unstored, 0);
    }

    /// Beyond the bound the oldest readings are dropped and counted; the
    /// rest are written once the sink takes writes again, without any new
    /// reading arriving (the retry's own timer).
    #[tokio::test(start_paused = true)]
    async fn beyond_the_bound_the_oldest_readings_are_dropped_and_counted() {
        let sink = Recorder::default();
        *sink.failures.lock().unwrap() = u32::MAX;
        let health = Arc::new(WriteHealth::default());
        let (tx, rx) = mpsc::channel(16);
        let batcher = Batcher::new(limits(1, 500), sink.clone()).holding(
            3,
            Arc::clone(&health),
            Duration::from_secs(10),
        );
        let task = tokio::spawn(batcher.run(rx));
        for soc in [1.0, 2.0, 3.0, 4.0, 5.0] {
            tx.send(reading(soc)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = health.now();
        assert_eq!((now.readings_in_memory, now.readings_dropped), (3, 2));
        assert!(now.last_dropped_at.is_some());
        *sink.failures.lock().unwrap() = 0;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let batches = sink.batches();
        assert_eq!(batches.len(), 1, "{batches:?}");
        assert_eq!(batches[0].1, vec![3.0, 4.0, 5.0]);
        let now = health.now();
        assert_eq!((now.readings_in_memory, now.readings_dropped), (0, 2));
        assert_eq!(now.failing_since, None);
        drop(tx);
        assert_eq!(task.await.unwrap().unstored, 0);
    }

    /// At a stop, what the sink never takes within the patience is counted
    /// as not stored (and as dropped), never reported as safe.
    #[tokio::test(start_paused = true)]
    async fn at_a_stop_readings_the_store_refuses_are_counted_as_unstored() {
        let sink = Recorder::default();
        *sink.failures.lock().unwrap() = u32::MAX;
        let health = Arc::new(WriteHealth::default());
        let (tx, rx) = mpsc::channel(16);
        let start = Instant::now();
        let batcher = Batcher::new(limits(200, 500), sink.clone()).holding(
            100,
            Arc::clone(&health),
            Duration::from_secs(5),
        );
        let task = tokio::spawn(batcher.run(rx));
        for soc in [1.0, 2.0] {
            tx.send(reading(soc)).await.unwrap();
        }
        drop(tx);
        let finished = task.await.unwrap();
        assert_eq!(finished.unstored, 2);
        assert!(start.elapsed() <= Duration::from_secs(5));
        assert_eq!(health.now().readings_dropped, 2);
        assert!(sink.batches().is_empty());
    }
}
