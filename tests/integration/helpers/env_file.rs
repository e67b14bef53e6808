//! A service environment file with every form of assignment systemd reads,
//! and how a test reads back what a command was given (`env -0`): the
//! package's reader and systemd's own are both held to it.

/// Assignments of every form systemd reads, and a password with a `;` that
/// a shell sourcing the file would run (`touch /tmp/pwned`).
pub const ENV_FILE: &str = "# a comment\n; another\n\n  \n\
    T_PASSWORD=a;touch /tmp/pwned;b\n\
    \x20 T_SPACED  =   inner  spaces   \t\n\
    T_SINGLE='it''s $HOME `id` \"x\"'\n\
    T_DOUBLE=\"a \\\"b\\\" \\\\ \\$x \\`y\\` \\n tail\"\n\
    T_MULTI=\"line1\nline2\"\n\
    T_JOINED=one\\\ntwo\n\
    T_ESCAPED=\\$HOME\\ x\n\
    T_MIXED=\"quoted\" then\n\
    T_EMPTY=\n\
    1T_BAD=x\n\
    T_BAD KEY=x\n\
    T_NOEQUALS\n\
    T_TWICE=first\n\
    T_TWICE=second\n\
    #T_COMMENTED=x \\\n\
    T_HIDDEN=by the comment's backslash\n\
    T_CRLF=win\r\n\
    T_LAST=no newline";

/// `env -0` output, the `T_` variables only, sorted.
pub fn t_variables(env0: &[u8]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = env0
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let (k, v) = std::str::from_utf8(kv).ok()?.split_once('=')?;
            k.starts_with("T_").then(|| (k.to_string(), v.to_string()))
        })
        .collect();
    vars.sort();
    vars
}
