//! One poll cycle of a GX ([`GxPoller::poll_once`]) and the loop of them
//! ([`GxPoller::run`]): the blocks of every device sent at once, each
//! device's answers settled (its registers, a finer plan after 0x02, or its
//! own failure), and a reading sent on for each device fully answered.

use std::io;
use std::sync::Arc;

use chrono::Utc;
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;

use super::transport::{Answer, Exchange, ReadRequest};
use super::{CycleReport, GxPoller, PollError, fields};
use crate::clock::{Mono, Taken};
use crate::reading::{Reading, SourceKind};
use crate::registers::plan::Block;

impl GxPoller {
    /// Polls on fixed-rate ticks until `cancel` fires; a poll in progress
    /// finishes first (the safe point). Gives the poller back.
    pub async fn run(mut self, cancel: CancellationToken) -> Self {
        let mut ticker = crate::schedule::common_ticker(self.poll_interval);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            self.poll_once().await;
            for device in &self.devices {
                self.status.heartbeat(&device.config.name);
            }
        }
        tracing::debug!(gx = %self.host, "Modbus poller stopped.");
        self
    }

    /// One poll of every device.
    pub async fn poll_once(&mut self) -> CycleReport {
        let mut report = CycleReport::default();
        let mut pending: Vec<usize> = (0..self.devices.len())
            .filter(|&d| self.leases.may_poll(&self.devices[d].config.name))
            .collect();
        if pending.is_empty() {
            // Another daemon polls them all: keep no connection to the GX.
            self.connection = None;
            report.skipped = true;
            return report;
        }
        if self.connection.is_none() {
            if self.next_connect.is_some_and(|at| Instant::now() < at) {
                report.skipped = true;
                return report;
            }
            if let Err(error) = self.connect().await {
                self.gx_down(&pending, &error, &mut report);
                self.schedule_reconnect();
                return report;
            }
        }
        // Rounds: a device whose block was refused (0x02) is read again in
        // finer blocks in the next round of the same poll.
        while !pending.is_empty() {
            let requests: Vec<ReadRequest> = pending
                .iter()
                .flat_map(|&d| {
                    let unit = self.devices[d].config.unit_id;
                    self.devices[d]
                        .blocks
                        .iter()
                        .map(move |&block| ReadRequest { unit, block })
                })
                .collect();
            report.requests += u32::try_from(requests.len()).unwrap_or(u32::MAX);
            let mut exchange = self.exchange(&requests).await;
            if exchange.answers.iter().any(Option::is_some) {
                self.gx_answered();
            }
            let mut again = Vec::new();
            let mut unanswered = Vec::new();
            let mut first = 0;
            for &d in &pending {
                let answers = &mut exchange.answers[first..first + self.devices[d].blocks.len()];
                first += answers.len();
                match self.settle(d, answers) {
                    Settled::Words { words, exchanged } => {
                        self.emit(d, words, &exchanged, &mut report).await;
                    }
                    Settled::ReadAgain => again.push(d),
                    Settled::Failed(error) => self.fail(&[d], &error, &mut report),
                    Settled::Unanswered => unanswered.push(d),
                }
            }
            if let Some(error) = exchange.failure {
                if exchange.stalled_mid_window && self.window > 1 {
                    tracing::info!(
                        gx = %self.address,
                        "The GX answered only some of several requests sent at once; \
                         asking it one request at a time from now on."
                    );
                    self.window = 1;
                }
                self.connection = None;
                unanswered.extend(again);
                self.gx_down(&unanswered, &error, &mut report);
                self.schedule_reconnect();
                break;
            }
            pending = again;
        }
        report
    }

    /// Sends `requests` on the connection, as many at once as the GX takes.
    async fn exchange(&mut self, requests: &[ReadRequest]) -> Exchange {
        match self.connection.as_mut() {
            Some(connection) => {
                connection
                    .exchange(requests, self.request_timeout, self.window)
                    .await
            }
            None => Exchange {
                answers: vec![None; requests.len()],
                failure: Some(PollError::Io(io::Error::from(io::ErrorKind::NotConnected))),
                stalled_mid_window: false,
            },
        }
    }

    /// What device `index`'s answers make: its registers, a finer plan to
    /// read again with (after 0x02), or a failure.
    fn settle(&mut self, index: usize, answers: &mut [Option<Answer>]) -> Settled {
        let Some(answers) = answers
            .iter_mut()
            .map(Option::take)
            .collect::<Option<Vec<Answer>>>()
        else {
            return Settled::Unanswered;
        };
        let refused = |a: &Answer| a.result == Err(ExceptionCode::IllegalDataAddress);
        if let Some(code) = answers
            .iter()
            .filter(|a| !refused(a))
            .find_map(|a| a.result.as_ref().err())
        {
            return Settled::Failed(PollError::Exception(*code));
        }
        let device = &mut self.devices[index];
        if let Some(block) = answers.iter().position(refused).map(|at| device.blocks[at]) {
            if let Some(finer) = device.level.finer() {
                tracing::info!(
                    device = %device.config.name,
                    block_start = block.start,
                    block_count = block.count,
                    level = ?finer,
                    "The GX refused a block read (0x02); reading this device in smaller blocks."
                );
                device.level = finer;
                device.replan(self.list);
                return Settled::ReadAgain;
            }
        }
        let mut words = Vec::with_capacity(answers.len());
        let mut exchanged = Vec::with_capacity(answers.len());
        let mut kept = Vec::with_capacity(answers.len());
        for (block, answer) in device.blocks.iter().zip(answers) {
            match answer.result {
                Ok(w) => {
                    words.push((*block, w));
                    exchanged.push((answer.sent, answer.received));
                    kept.push(*block);
                }
                Err(_) => {
                    tracing::warn!(
                        device = %device.config.name,
                        register = block.start,
                        "This GX does not map a register; its column stays empty."
                    );
                    device.unsupported.push(*block);
                }
            }
        }
        device.blocks = kept;
        if words.is_empty() {
            return Settled::Failed(PollError::Exception(ExceptionCode::IllegalDataAddress));
        }
        Settled::Words { words, exchanged }
    }

    /// Makes device `index`'s reading of `words` and sends it on.
    async fn emit(
        &mut self,
        index: usize,
        words: Vec<(Block, Vec<u16>)>,
        exchanged: &[(Mono, Mono)],
        report: &mut CycleReport,
    ) {
        let device = &self.devices[index];
        let taken = Taken::now();
        if let (Some(clock), Some((seconds, block))) = (&self.clock, device.map.gx_clock(&words)) {
            let (sent, received) = exchanged[block];
            clock.gx_sample(&self.address, sent, received, seconds);
        }
        let reading = Reading {
            site: Arc::clone(&self.site),
            device: device.config.name.clone(),
            table: fields::table(device.config.class),
            source: SourceKind::Modbus,
            measured_at: taken.wall,
            unconfirmed: Some(taken.mono),
            values: device.map.decode(&words),
        };
        if std::mem::take(&mut self.down_with_gx[index]) {
            self.status
                .success_unlogged(&device.config.name, taken.wall);
        } else {
            self.status.success(&device.config.name, taken.wall);
        }
        report.readings += 1;
        // A closed channel means shutdown: the reading has nowhere to go.
        let _ = self.readings.send(reading).await;
    }

    /// Marks the devices at `indices` failed with `error`, an error of
    /// theirs (the GX answered for them); each is logged as it goes down.
    fn fail(&mut self, indices: &[usize], error: &PollError, report: &mut CycleReport) {
        let now = Utc::now();
        let text = error.to_string();
        for &index in indices {
            report.failed += 1;
            self.down_with_gx[index] = false;
            self.status
                .failure(&self.devices[index].config.name, now, error.class(), &text);
        }
    }
}

/// What one device's answers in a round make.
#[derive(Debug)]
enum Settled {
    /// Every block read.
    Words {
        /// (block, registers), in plan order.
        words: Vec<(Block, Vec<u16>)>,
        /// When each block's request went out and its reply arrived.
        exchanged: Vec<(Mono, Mono)>,
    },
    /// A block was refused (0x02): the device is planned finer, to read again.
    ReadAgain,
    /// The GX raised an exception for the device.
    Failed(PollError),
    /// The connection failed before all its answers came.
    Unanswered,
}
