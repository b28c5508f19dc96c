//! `--print`: say what was heard on stdout, as the tutorial servers do.
//!
//! Off by default: it costs a write to stdout per message read.

use std::fmt::Display;
use std::io::Write;

/// `Server heard "…" from PEER`: bytes decoded lossily, control characters, quotes and
/// backslashes escaped, so binary input cannot garble the terminal.
pub(crate) fn print_heard(peer: impl Display, bytes: &[u8]) {
    print_line(format!("Server heard \"{}\" from {peer}\n", escape(bytes)));
}

/// The line for a message too long for one read, printed as its first part arrives:
/// `Server heard "…" and N bytes more from PEER`.
pub(crate) fn print_heard_start(peer: impl Display, first: &[u8], len: usize) {
    let more = len - first.len();
    print_line(format!(
        "Server heard \"{}\" and {more} bytes more from {peer}\n",
        escape(first)
    ));
}

fn print_line(line: String) {
    // A closed stdout must not take the server down with it: the echo goes on regardless.
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

/// Lossy UTF-8 with `escape_debug` applied, minus its escaping of `'` (we quote with `"`).
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut escaped = String::with_capacity(bytes.len());
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '\'' => escaped.push(c),
            c => escaped.extend(c.escape_debug()),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_control_bytes_and_keeps_unicode() {
        assert_eq!(
            escape("汉语 it's\r\n\"x\"".as_bytes()),
            "汉语 it's\\r\\n\\\"x\\\""
        );
        assert_eq!(escape(&[0x00, 0xff, b'a']), "\\0\u{fffd}a");
    }
}
