//! The names a configuration gives: device names (`gx[].devices[].name`,
//! `vedirect[].name`) and site names (`site.installation_id`, `gx[].site`,
//! `vedirect[].site`), one rule of characters for both.

use super::super::reader::Problems;

/// A device's `name`: set, and made of the characters a stable identity may have.
pub(super) fn device_name(
    name: Option<String>,
    key: &str,
    problems: &mut Problems,
) -> Option<String> {
    match name {
        Some(n) if is_name(&n, 64) => Some(n),
        Some(n) => {
            let message =
                format!("\"{n}\" is not a device name (1 to 64 letters, digits, '-', '_' or '.')");
            problems.push(key, message);
            None
        }
        None => {
            problems.push(
                key,
                "not set (the device's stable name, e.g. \"house-bank\")",
            );
            None
        }
    }
}

/// A site's name (`site.installation_id`, `gx[].site`, `vedirect[].site`):
/// the characters of a device name, at most 100 of them (a VRM installation
/// id fits).
pub(super) fn site_name(name: String, key: &str, problems: &mut Problems) -> Option<String> {
    if is_name(&name, 100) {
        Some(name)
    } else {
        let message =
            format!("\"{name}\" is not a site name (1 to 100 letters, digits, '-', '_' or '.')");
        problems.push(key, message);
        None
    }
}

/// 1 to `longest` letters, digits, `-`, `_` or `.`: the characters of a
/// stable identity, safe in a URL, a file name and a log line.
fn is_name(name: &str, longest: usize) -> bool {
    (1..=longest).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
