//! `[log]`: the format, and a level filter checked directive by directive
//! (`tracing` itself would take a misspelt level for a target).

use super::super::keys;
use super::super::reader::{Problems, Table};
use super::super::{LogConfig, LogFormat};

/// The levels a log filter may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A log filter is comma-separated directives, each a level (`info`) or
/// `target=level` (`victron_poller=debug`); returns it without the spaces
/// around its directives. `tracing` itself would take a misspelt level as a
/// target name and log nothing at all.
fn log_filter(filter: &str) -> Result<String, String> {
    let is_level = |word: &str| {
        LOG_LEVELS
            .iter()
            .any(|l| l.eq_ignore_ascii_case(word.trim()))
    };
    let valid = "a level (off, error, warn, info, debug, trace) or target=level, comma-separated";
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(format!("is empty: use {valid}"));
    }
    for directive in &directives {
        let ok = match directive.split_once('=') {
            Some((target, level)) => {
                !target.trim().is_empty()
                    && !target.contains(char::is_whitespace)
                    && is_level(level)
            }
            None => is_level(directive),
        };
        if !ok {
            return Err(format!("\"{directive}\" is not {valid}"));
        }
    }
    let filter = directives
        .iter()
        .map(|d| d.replace(' ', ""))
        .collect::<Vec<_>>()
        .join(",");
    tracing_subscriber::EnvFilter::try_new(&filter)
        .map(|_| filter.clone())
        .map_err(|e| format!("\"{filter}\" is not a log filter ({e})"))
}

pub(super) fn log(t: &mut Table, problems: &mut Problems) -> LogConfig {
    let defaults = LogConfig::default();
    let format = match t.string(&keys::LOG_FORMAT, problems) {
        None => defaults.format,
        Some(written) => LogFormat::parse(&written).unwrap_or_else(|| {
            let message = format!("\"{written}\" is not a log format (use \"text\" or \"json\")");
            problems.push(&t.key("format"), message);
            defaults.format
        }),
    };
    let written = t
        .string(&keys::LOG_LEVEL, problems)
        .unwrap_or(defaults.level);
    let level = match log_filter(&written) {
        Ok(filter) => filter,
        Err(message) => {
            problems.push(&t.key("level"), message);
            written
        }
    };
    LogConfig { format, level }
}
