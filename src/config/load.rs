//! Loading: the layers (built-in defaults, the TOML file, the plain
//! variables a platform sets, the prefixed `VICTRON_POLLER_…` variables, the
//! device lists as TOML in `VICTRON_POLLER_GX` / `VICTRON_POLLER_VEDIRECT`),
//! which key each variable set (so that a problem names it), and TOML
//! syntax errors as a user needs them (position, reason, the line unless it
//! may hold a secret).

use std::collections::HashMap;
use std::path::Path;

use config::{Environment, File, FileFormat};

use super::{
    CONFIG_PATH_ENV, Config, ConfigError, ConfigProblem, ENV_PREFIX, LIST_VARIABLES, STATE_DIR_ENV,
    env_var_for, redact, validate,
};

impl Config {
    /// Loads the configuration from an optional file and the given environment.
    pub fn load_with_env(
        path: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.display().to_string(),
                    reason: "no such file".into(),
                });
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        let mut early_problems = Vec::new();
        // Which keys the environment sets, to name the variable in problems.
        let mut origins: Vec<(String, String)> = Vec::new();
        for (variable, key) in LIST_VARIABLES {
            let Some(value) = env.get(variable).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            origins.push((key.to_string(), variable.to_string()));
            let source = File::from_str(&format!("{key} = {value}"), FileFormat::Toml);
            match config::Config::builder().add_source(source.clone()).build() {
                Ok(_) => builder = builder.add_source(source),
                Err(e) => early_problems.push(ConfigProblem {
                    key: key.into(),
                    message: format!(
                        "{variable} is not a TOML list of tables like [{{ name = \"…\" }}] ({})",
                        redact_file_error(&e.to_string())
                    ),
                }),
            }
        }
        let prefixed: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| {
                k.starts_with(&format!("{ENV_PREFIX}_"))
                    && k.as_str() != CONFIG_PATH_ENV
                    && !LIST_VARIABLES.iter().any(|(v, _)| v == k)
                    && k.as_str() != STATE_DIR_ENV
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for name in prefixed.keys() {
            let key = name[ENV_PREFIX.len() + 1..]
                .to_ascii_lowercase()
                .replace("__", ".");
            origins.push((key, name.clone()));
        }
        // Plain variables a platform sets: below the prefixed ones, above the file.
        let plain = [
            ("DATABASE_URL", "database.url"),
            ("LOG_FORMAT", "log.format"),
            ("PORT", "health.listen"),
        ];
        for (variable, key) in plain {
            let Some(value) = env.get(variable).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            if prefixed.contains_key(&env_var_for(key)) {
                continue;
            }
            origins.push((key.to_string(), variable.to_string()));
            let value = if variable == "PORT" {
                format!("0.0.0.0:{}", value.trim())
            } else {
                value.trim().to_string()
            };
            builder = builder
                .set_override(key, value)
                .expect("a string override is always accepted");
        }
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .source(Some(prefixed)),
        );
        let raw = builder.build().map_err(|e| ConfigError::File {
            path: path.map(|p| p.display().to_string()).unwrap_or_default(),
            reason: redact_file_error(&e.to_string()),
        })?;
        match validate::validate(raw, origins) {
            Ok(config) if early_problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError::Invalid(early_problems)),
            Err(ConfigError::Invalid(mut problems)) => {
                early_problems.append(&mut problems);
                Err(ConfigError::Invalid(early_problems))
            }
            Err(other) => Err(other),
        }
    }
}

/// A TOML parse error as the user needs it: the position, the reason, and
/// the offending line, unless it may hold a secret: then its key alone
/// ([`redact::redact_toml_line`]). The `config` crate's
/// text spreads that over a drawing (`3 | level = "debug"`, carets) and
/// names no key for a duplicate; this names it.
fn redact_file_error(message: &str) -> String {
    let mut lines = message.lines();
    let position = lines.next().unwrap_or(message).trim().to_string();
    let mut quoted: Option<String> = None;
    let mut reason = String::new();
    for line in lines {
        let trimmed = line.trim();
        match trimmed.split_once('|') {
            Some((number, text)) if number.trim().chars().all(|c| c.is_ascii_digit()) => {
                if !number.trim().is_empty() && quoted.is_none() {
                    quoted = Some(text.strip_prefix(' ').unwrap_or(text).to_string());
                }
            }
            _ if trimmed.is_empty() || trimmed.starts_with("in ") => {}
            _ => {
                if !reason.is_empty() {
                    reason.push(' ');
                }
                reason.push_str(trimmed);
            }
        }
    }
    let quoted = quoted.map(|line| redact::redact_toml_line(&line));
    if reason == "duplicate key" {
        if let Some(key) = quoted
            .as_deref()
            .and_then(|line| line.split_once('='))
            .map(|(key, _)| key.trim())
        {
            reason = format!("duplicate key `{key}`");
        }
    }
    let mut out = position;
    if !reason.is_empty() {
        out.push_str(": ");
        out.push_str(&reason);
    }
    if let Some(line) = quoted {
        out.push_str(&format!(", in `{}`", line.trim()));
    }
    out
}
