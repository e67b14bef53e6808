//! The configuration reference, `docs/configuration-reference.md`, rendered
//! from the table of keys ([`KNOWN_KEYS`]): every key with its environment
//! variable, what it holds, its default and its description. A test below
//! holds the file equal to the rendering, so the reference cannot drift from
//! the keys the daemon accepts.

use std::fmt::Write as _;

use super::keys::{KNOWN_KEYS, KeyKind, KnownKey};
use super::{CONFIG_PATH_ENV, LIST_VARIABLES, env_var_for};

/// The path of the rendered reference, relative to the repository root.
pub(crate) const REFERENCE_PATH: &str = "docs/configuration-reference.md";

/// Renders every configuration key as Markdown, one table per TOML table in
/// the order of [`KNOWN_KEYS`]: the key, the environment variable that sets
/// it, what it holds (type and accepted range), its default and its
/// description.
pub(crate) fn reference_markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\
         \n\
         <!-- Generated from src/config/keys.rs by config::reference_markdown(); do not edit.\n     \
         Regenerate: VP_UPDATE_DOCS=1 cargo test --lib config::reference -->\n\
         \n\
         Every key the configuration accepts. Keys go in the TOML file under their\n\
         table (`[database]` then `url = ...`); each key outside a list of tables can\n\
         also be set by its environment variable, which wins over the file. The\n\
         lists of tables (`[[gx]]`, `[[vedirect]]`) come from the environment whole,\n\
         as TOML:\n\n",
    );
    for (variable, key) in LIST_VARIABLES {
        let _ = writeln!(out, "- `{variable}` holds what `[[{key}]]` would.");
    }
    let _ = writeln!(
        out,
        "\n`{CONFIG_PATH_ENV}` names the file, as `--config` does. Three variables a \
         hosting platform sets are honoured below the prefixed ones: `DATABASE_URL` \
         (`database.url`), `LOG_FORMAT` (`log.format`) and `PORT` (`health.listen` \
         becomes `0.0.0.0:$PORT`).\n\n\
         `victron-poller check-config` validates a configuration against this table \
         and prints every key with its value. How configuration works: \
         [configuration.md](configuration.md)."
    );
    let mut table = None;
    for known in KNOWN_KEYS {
        if table != Some(known.table()) {
            table = Some(known.table());
            let _ = write!(
                out,
                "\n## `{}`\n\n\
                 | key | environment variable | type | default | description |\n\
                 |---|---|---|---|---|\n",
                header(known.table())
            );
        }
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            known.name(),
            variable(known),
            kind(known),
            cell(&default(known)),
            cell(known.doc),
        );
    }
    out
}

/// `gx[].devices[]` → `[[gx.devices]]`, `batch` → `[batch]`.
fn header(table: &str) -> String {
    if table.contains("[]") {
        format!("[[{}]]", table.replace("[]", ""))
    } else {
        format!("[{table}]")
    }
}

/// The variable that sets a key; for a key in a list of tables, the list's.
fn variable(known: &KnownKey) -> String {
    if !known.in_list() {
        return format!("`{}`", env_var_for(known.key));
    }
    let list = known.key.split("[]").next().unwrap_or_default();
    LIST_VARIABLES
        .iter()
        .find(|(_, key)| *key == list)
        .map_or_else(String::new, |(variable, _)| format!("in `{variable}`"))
}

/// What a key holds: `integer, 1 to 600000 ms`, `true or false`, `text`.
fn kind(known: &KnownKey) -> String {
    match known.kind {
        KeyKind::Integer { min, max, .. } | KeyKind::OptionalInteger { min, max, .. } => {
            format!("integer, {min} to {}", known.with_unit(max))
        }
        KeyKind::Boolean { .. } => "`true` or `false`".to_string(),
        KeyKind::Text { .. } | KeyKind::OptionalText { .. } => "text".to_string(),
    }
}

/// The default as the file would write it, or what an absent key means.
fn default(known: &KnownKey) -> String {
    match known.kind {
        KeyKind::Text { default } => format!("`\"{default}\"`"),
        KeyKind::Boolean { default } => format!("`{default}`"),
        _ => known.default_text(),
    }
}

/// Text made safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/configuration-reference.md is the rendering of the key table.
    /// `VP_UPDATE_DOCS=1` writes it instead of comparing.
    #[test]
    fn the_reference_in_docs_is_up_to_date() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(REFERENCE_PATH);
        let rendered = reference_markdown();
        if std::env::var_os("VP_UPDATE_DOCS").is_some_and(|v| v == "1") {
            std::fs::write(&path, &rendered).unwrap();
            return;
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == rendered,
            "{REFERENCE_PATH} does not match the key table in src/config/keys.rs; \
             regenerate it with: VP_UPDATE_DOCS=1 cargo test --lib config::reference"
        );
    }

    #[test]
    fn every_key_has_a_row() {
        let text = reference_markdown();
        for known in KNOWN_KEYS {
            assert!(
                text.contains(&format!("| `{}` |", known.name())),
                "{}",
                known.key
            );
        }
        assert!(text.contains("## `[[gx.devices]]`"), "{text}");
        assert!(
            text.contains(
                "| `connect_timeout_ms` | `VICTRON_POLLER_DATABASE__CONNECT_TIMEOUT_MS` |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| `host` | in `VICTRON_POLLER_GX` |"),
            "{text}"
        );
    }
}
