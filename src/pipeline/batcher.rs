//! Groups readings into batches — a batch closes at `max_readings`, or
//! `max_age` after its first reading (on a grid point in the second half of
//! that age, when given a [`Grid`]), whichever comes first — and hands each
//! to a [`BatchSink`]. A commit that fails is retried with backoff while the
//! readings wait in memory (the sink is the durability boundary: nothing is
//! dropped). When every source has dropped its sender, the partial batch is
//! committed and the batcher ends: that is how shutdown knows every reading
//! received is safe.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::reading::Reading;
use crate::schedule::{Alarm, Grid};
use crate::store::StoreError;

/// The first wait after a failed commit; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two commit attempts.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Where batches go.
pub trait BatchSink {
    /// Commits one batch, all or nothing. The sink may settle the readings'
    /// measurement times in place (see [`crate::clock`]).
    fn commit(
        &mut self,
        batch: &mut [Reading],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The batching stage.
#[derive(Debug)]
pub struct Batcher<S> {
    limits: BatchConfig,
    sink: S,
    batch: Vec<Reading>,
    grid: Option<Grid>,
    alarm: Alarm,
}

impl<S: BatchSink> Batcher<S> {
    /// A batcher committing into `sink`.
    pub fn new(limits: BatchConfig, sink: S) -> Self {
        Self {
            batch: Vec::with_capacity(limits.max_readings.min(10_000)),
            limits,
            sink,
            grid: None,
            alarm: Alarm::runtime(),
        }
    }

    /// Closes batches on points of `grid` where one falls in the second
    /// half of a batch's age: on the common grid with an age that is a
    /// multiple of the poll interval, a batch closes as a poll starts, in
    /// the same wake-up (with the polls' kind of `alarm`), not in one of
    /// its own.
    pub fn on_grid(mut self, grid: Grid, alarm: Alarm) -> Self {
        self.grid = Some(grid);
        self.alarm = alarm;
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
    /// batch, and gives the sink back.
    pub async fn run(mut self, mut readings: mpsc::Receiver<Reading>) -> S {
        while let Some(first) = readings.recv().await {
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
        self.sink
    }

    /// Commits the batch, retrying until the sink takes it.
    async fn commit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut delay = RETRY_FIRST;
        let mut failed = false;
        while let Err(error) = self.sink.commit(&mut self.batch).await {
            if !failed {
                failed = true;
                tracing::error!(%error, readings = self.batch.len(), "Cannot write to the local store; retrying.");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
        if failed {
            tracing::info!("The local store takes readings again.");
        }
        self.batch.clear();
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
        async fn commit(&mut self, batch: &mut [Reading]) -> Result<(), StoreError> {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(StoreError::Sql(sqlx::Error::PoolClosed));
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

    #[tokio::test(start_paused = true)]
    async fn a_failed_commit_is_retried_with_backoff_and_loses_nothing() {
        let sink = Recorder::default();
        *sink.failures.lock().unwrap() = 3;
        let (tx, rx) = mpsc::channel(16);
        let start = Instant::now();
        let task = tokio::spawn(Batcher::new(limits(2, 500), sink.clone()).run(rx));
        for soc in [1.0, 2.0, 3.0] {
            tx.send(reading(soc)).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        let batches = sink.batches();
        // Retries after 100, 200 and 400 ms; the readings waited in memory.
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].1, vec![1.0, 2.0]);
        assert_eq!(batches[0].0 - start, Duration::from_millis(700));
        assert_eq!(batches[1].1, vec![3.0]);
    }
}
