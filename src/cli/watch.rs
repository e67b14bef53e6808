//! `victron-poller watch [--device D] [--interval S] [--address HOST:PORT]`: the running
//! daemon's readings as they come, one line per device per poll — the
//! values that matter, as `demo` prints them — from its API
//! (`/api/v1/readings` on `health.listen`, with `health.password`: the
//! last few readings of each device, kept in memory by the daemon).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use clap::Args;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

use super::Exit;
use crate::config::Config;
use crate::reading::{ColumnKind, Reading, ReadingTable, SourceKind, Value};

/// Options of `watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Only this device.
    #[arg(long)]
    device: Option<String>,
    /// Seconds between two looks (a device polled more often shows its
    /// newest reading then).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// The daemon's address (default: `health.listen`).
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<String>,
}

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the subcommand until Ctrl-C.
pub(crate) async fn exec(config: &Config, args: WatchArgs) -> anyhow::Result<Exit> {
    if !(0.1..=3600.0).contains(&args.interval) {
        return Err(super::UsageError(format!(
            "--interval {} is not from 0.1 to 3600 seconds",
            args.interval
        ))
        .into());
    }
    let address = match (&args.address, config.health.listen) {
        (Some(address), _) => address.clone(),
        // A listener on every address answers on loopback.
        (None, Some(listen)) if listen.ip().is_unspecified() => {
            format!("127.0.0.1:{}", listen.port())
        }
        (None, Some(listen)) => listen.to_string(),
        (None, None) => {
            return Err(super::UsageError(
                "health.listen is off: the daemon serves no API to watch (give --address)".into(),
            )
            .into());
        }
    };
    let auth = config.health.password.as_ref().map(|password| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("watch:{password}"))
        )
    });
    let mut shown: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(args.interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let device = args
        .device
        .as_deref()
        .map(|d| {
            format!(
                "&device={}",
                url::form_urlencoded::byte_serialize(d.as_bytes()).collect::<String>()
            )
        })
        .unwrap_or_default();
    // One listener for the whole run: a Ctrl-C during a request counts too.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(Exit::Ok),
            _ = ticker.tick() => {}
        }
        // At first, each device's newest reading; then every one since the
        // oldest newest shown (each device's own are filtered here).
        let since = shown.values().min().map_or_else(
            || {
                (Utc::now() - chrono::Duration::seconds(2))
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            },
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        let path = format!("/api/v1/readings?since={since}{device}");
        let answer = tokio::select! {
            _ = &mut interrupted => return Ok(Exit::Ok),
            answer = get(&address, &path, auth.as_deref()) => answer,
        };
        let body = match answer {
            Ok(body) => body,
            Err(error) => {
                if !failing {
                    eprintln!("The daemon at {address} does not answer ({error:#}); trying again.");
                    failing = true;
                }
                continue;
            }
        };
        failing = false;
        let answer: serde_json::Value =
            serde_json::from_slice(&body).context("The daemon's answer is not JSON")?;
        for reading in readings(&answer) {
            let key = (reading.site.to_string(), reading.device.clone());
            if shown
                .get(&key)
                .is_some_and(|last| *last >= reading.measured_at)
            {
                continue;
            }
            shown.insert(key, reading.measured_at);
            outln!("{}", super::now::line(&reading));
        }
    }
}

/// `GET path` from the daemon at `address`; the body of a 200.
async fn get(address: &str, path: &str, auth: Option<&str>) -> anyhow::Result<Bytes> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let stream = tokio::net::TcpStream::connect(address).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::get(path).header(hyper::header::HOST, address);
        if let Some(auth) = auth {
            request = request.header(hyper::header::AUTHORIZATION, auth);
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new())?)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            anyhow::bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
        }
        Ok(body)
    })
    .await
    .context("no answer in 5 s")?
}

/// The readings of an `/api/v1/readings` answer.
fn readings(answer: &serde_json::Value) -> Vec<Reading> {
    let mut found = Vec::new();
    for device in answer["readings"].as_array().cloned().unwrap_or_default() {
        let name: Arc<str> = Arc::from(device["site"].as_str().unwrap_or_default());
        let Some(table) = ReadingTable::ALL
            .into_iter()
            .find(|t| Some(crate::quantity::device_kind(*t)) == device["kind"].as_str())
        else {
            continue;
        };
        let Some(measured_at) = device["measured_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        else {
            continue;
        };
        let values = table
            .columns()
            .iter()
            .filter_map(|(column, kind)| {
                let value = &device["values"][*column]["value"];
                let value = match kind {
                    ColumnKind::Float => Value::Float(value.as_f64()?),
                    ColumnKind::Int => Value::Int(value.as_i64()?),
                    ColumnKind::Text => Value::Text(value.as_str()?.to_string().into()),
                };
                Some((*column, value))
            })
            .collect();
        found.push(Reading {
            site: Arc::clone(&name),
            device: device["device"].as_str().unwrap_or_default().to_string(),
            table,
            source: if device["source"] == "vedirect" {
                SourceKind::VeDirect
            } else {
                SourceKind::Modbus
            },
            measured_at: measured_at.with_timezone(&Utc),
            unconfirmed: None,
            values,
        });
    }
    found
}
