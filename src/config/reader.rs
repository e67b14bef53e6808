//! Reading raw configuration values key by key: each read removes the key
//! from its table and records a problem (naming the full key) instead of
//! failing, so that every problem of a file is reported at once. A key is
//! read by its entry in the table of keys ([`super::keys`]), which gives its
//! name, default and range. What is left in a table after its owner has
//! taken its keys is unknown.

use config::{Map, Value, ValueKind};

use super::ConfigProblem;
use super::keys::{self, KnownKey};

/// Problems found so far, with where environment variables set keys.
pub(super) struct Problems {
    pub(super) list: Vec<ConfigProblem>,
    /// (dotted key or list name, the environment variable that set it).
    origins: Vec<(String, String)>,
}

impl Problems {
    /// `origins`: the keys environment variables set (`log.level`, or a
    /// whole list such as `gx`) and the variable that set each.
    pub(super) fn new(origins: Vec<(String, String)>) -> Self {
        Self {
            list: Vec::new(),
            origins,
        }
    }

    /// Records a problem with `key`, naming the environment variable that
    /// set it, if one did: the user looks there, not in the file.
    pub(super) fn push(&mut self, key: &str, message: impl Into<String>) {
        let mut message = message.into();
        if let Some(variable) = self.origin(key) {
            if !message.contains(variable) {
                message.push_str(&format!(" (from environment variable {variable})"));
            }
        }
        self.list.push(ConfigProblem {
            key: key.to_string(),
            message,
        });
    }

    /// The variable that set `key`, or the list it is in (`gx[0].host` → `gx`).
    fn origin(&self, key: &str) -> Option<&str> {
        self.origins
            .iter()
            .find(|(set, _)| {
                key == set
                    || key
                        .strip_prefix(set.as_str())
                        .is_some_and(|rest| rest.starts_with('[') || rest.starts_with('.'))
            })
            .map(|(_, variable)| variable.as_str())
    }
}

/// One table of the configuration and its dotted path (`gx[0]`).
pub(super) struct Table {
    path: String,
    entries: Map<String, Value>,
}

impl Table {
    pub(super) fn new(path: impl Into<String>, entries: Map<String, Value>) -> Self {
        Self {
            path: path.into(),
            entries,
        }
    }

    /// The full key of `name` in this table.
    pub(super) fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.entries.remove(name)
    }

    /// The name of `known` in this table; debug builds check that `known` is
    /// in the table of keys and belongs to this table.
    fn name_of(&self, known: &KnownKey) -> &'static str {
        debug_assert!(keys::is_known(known), "{} is not in the table", known.key);
        debug_assert_eq!(
            keys::without_indexes(&self.key(known.name())),
            known.key,
            "read from the wrong table"
        );
        known.name()
    }

    /// A text key; secrets are never quoted back.
    pub(super) fn string(&mut self, known: &KnownKey, problems: &mut Problems) -> Option<String> {
        let name = self.name_of(known);
        let value = self.take(name)?;
        match value.kind {
            ValueKind::String(s) => Some(s),
            ValueKind::Table(_) | ValueKind::Array(_) | ValueKind::Nil => {
                problems.push(&self.key(name), "expected a string");
                None
            }
            other => Some(other.to_string()),
        }
    }

    /// A number key in its range; its default when absent or invalid.
    pub(super) fn integer(&mut self, known: &KnownKey, problems: &mut Problems) -> u64 {
        self.integer_opt(known, problems)
            .unwrap_or_else(|| known.integer_default())
    }

    /// A number key in its range, or `None` when absent or invalid.
    pub(super) fn integer_opt(&mut self, known: &KnownKey, problems: &mut Problems) -> Option<u64> {
        let name = self.name_of(known);
        let (min, max) = known.range();
        let value = self.take(name)?;
        let parsed = match &value.kind {
            ValueKind::I64(n) => u64::try_from(*n).map_err(|_| n.to_string()),
            ValueKind::I128(n) => u64::try_from(*n).map_err(|_| n.to_string()),
            ValueKind::U64(n) => Ok(*n),
            ValueKind::U128(n) => u64::try_from(*n).map_err(|_| n.to_string()),
            ValueKind::String(s) => s.trim().parse::<u64>().map_err(|_| format!("\"{s}\"")),
            other => Err(describe(other)),
        };
        match parsed {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            Ok(n) => {
                problems.push(
                    &self.key(name),
                    format!("{n} is out of range ({min} to {max})"),
                );
                None
            }
            Err(found) if found.starts_with('-') => {
                problems.push(
                    &self.key(name),
                    format!("{found} is out of range ({min} to {max})"),
                );
                None
            }
            Err(found) => {
                problems.push(
                    &self.key(name),
                    format!("expected a whole number, found {found}"),
                );
                None
            }
        }
    }

    /// A `true`/`false` key (also as the strings environment variables
    /// give); its default when absent or invalid.
    pub(super) fn boolean(&mut self, known: &KnownKey, problems: &mut Problems) -> bool {
        let name = self.name_of(known);
        let default = known.boolean_default();
        let Some(value) = self.take(name) else {
            return default;
        };
        match &value.kind {
            ValueKind::Boolean(b) => *b,
            ValueKind::String(s) if s.trim().eq_ignore_ascii_case("true") => true,
            ValueKind::String(s) if s.trim().eq_ignore_ascii_case("false") => false,
            other => {
                let found = describe(other);
                problems.push(
                    &self.key(name),
                    format!("expected true or false, found {found}"),
                );
                default
            }
        }
    }

    /// A sub-table (`[database]`); an empty one when absent.
    pub(super) fn table(&mut self, name: &str, problems: &mut Problems) -> Table {
        let key = self.key(name);
        match self.take(name).map(|v| v.kind) {
            None => Table::new(key, Map::new()),
            Some(ValueKind::Table(entries)) => Table::new(key, entries),
            Some(other) => {
                problems.push(
                    &key,
                    format!("expected a table, found {}", describe(&other)),
                );
                Table::new(key, Map::new())
            }
        }
    }

    /// An array of tables (`[[gx]]`); empty when absent.
    pub(super) fn tables(&mut self, name: &str, problems: &mut Problems) -> Vec<Table> {
        let key = self.key(name);
        match self.take(name).map(|v| v.kind) {
            None => Vec::new(),
            Some(ValueKind::Array(items)) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| match item.kind {
                    ValueKind::Table(entries) => Some(Table::new(format!("{key}[{i}]"), entries)),
                    other => {
                        problems.push(
                            &format!("{key}[{i}]"),
                            format!("expected a table, found {}", describe(&other)),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                problems.push(
                    &key,
                    format!("expected a list of tables, found {}", describe(&other)),
                );
                Vec::new()
            }
        }
    }

    /// Reports every key nobody took as unknown, with a suggestion.
    pub(super) fn finish(self, problems: &mut Problems) {
        let mut leftover: Vec<String> = Vec::new();
        collect_leaves(&self.path, self.entries, &mut leftover);
        leftover.sort();
        for key in leftover {
            let hint = keys::closest(&key)
                .map(|known| format!("; did you mean `{known}`?"))
                .unwrap_or_default();
            problems.push(&key, format!("unknown key{hint}"));
        }
    }
}

fn collect_leaves(prefix: &str, entries: Map<String, Value>, out: &mut Vec<String>) {
    for (name, value) in entries {
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        match value.kind {
            ValueKind::Table(inner) if !inner.is_empty() => collect_leaves(&key, inner, out),
            _ => out.push(key),
        }
    }
}

pub(super) fn describe(kind: &ValueKind) -> String {
    match kind {
        ValueKind::String(s) => format!("\"{s}\""),
        ValueKind::Table(_) => "a table".into(),
        ValueKind::Array(_) => "a list".into(),
        ValueKind::Nil => "nothing".into(),
        other => other.to_string(),
    }
}
