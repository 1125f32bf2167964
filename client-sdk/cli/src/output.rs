//! What the commands print: lines and tables for people, or (`--json`) JSON for
//! scripts. Every line is flushed as it is written, so a reader on a pipe sees it
//! at once. Text from the server (message bodies, names) has its control
//! characters escaped: a message can neither break a line in two nor send the
//! terminal escape sequences.

use std::io::Write;

use anyhow::Context;
use imqtt_client::wire::Envelope;
use serde::Serialize;
use serde_json::Value;

/// Where and how a command prints.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Out {
    json: bool,
}

impl Out {
    pub(crate) fn new(json: bool) -> Out {
        Out { json }
    }

    /// Whether `--json` was given.
    pub(crate) fn json(self) -> bool {
        self.json
    }

    /// One line of text.
    pub(crate) fn line(self, text: &str) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .context("writing to stdout")
    }

    /// `value` as JSON on one line.
    pub(crate) fn value<T: Serialize + ?Sized>(self, value: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string(value).context("encoding the output")?;
        self.line(&text)
    }

    /// A table with a header row; columns are padded to their widest cell (the
    /// last one is not padded). Cells are cleaned.
    pub(crate) fn table(self, header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
        let rows: Vec<Vec<String>> =
            std::iter::once(header.iter().map(|h| h.to_string()).collect())
                .chain(rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()))
                .collect();
        let mut widths = vec![0; header.len()];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in &rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let width = widths.get(i).copied().unwrap_or(0);
                    let pad = width.saturating_sub(cell.chars().count()) + 2;
                    line.push_str(&" ".repeat(pad));
                }
            }
            self.line(line.trim_end())?;
        }
        Ok(())
    }
}

/// A stored message on one line: `dm:alice:bob #3 alice: hello`.
pub(crate) fn message_line(m: &Envelope) -> String {
    let (conv, seq, from) = (&m.conv, m.seq, clean(&m.from));
    let of = m.ref_seq.unwrap_or(0);
    match m.kind {
        Some(imqtt_client::wire::Kind::Edit) => {
            format!("{conv} #{seq} {from} edited #{of}: {}", body_text(&m.body))
        }
        Some(imqtt_client::wire::Kind::Recall) => format!("{conv} #{seq} {from} recalled #{of}"),
        None if m.recalled => format!("{conv} #{seq} {from}: (message recalled)"),
        None if m.edited_ts.is_some() => {
            format!("{conv} #{seq} {from}: {} (edited)", body_text(&m.body))
        }
        None => format!("{conv} #{seq} {from}: {}", body_text(&m.body)),
    }
}

/// A body for people: the text of `{"text": "..."}`, else the JSON itself.
pub(crate) fn body_text(body: &Value) -> String {
    match body
        .as_object()
        .and_then(|o| match (o.len(), o.get("text")) {
            (1, Some(Value::String(t))) => Some(t),
            _ => None,
        }) {
        Some(text) => clean(text),
        None => body.to_string(),
    }
}

/// `s` with its control characters escaped (`\n`, `\t`, `\u{1b}`, ...), so that it
/// stays on its line and cannot drive the terminal.
pub(crate) fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The word serde gives a unit variant (`"owner"`, `"since_join"`, `"online"`).
pub(crate) fn word<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// Unix milliseconds as UTC, `2026-12-02 10:00:00Z`.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Year, month, day of the `days`-th day after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Whether `e` comes from writing to a closed pipe.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_732_262_400_123), "2024-11-22 08:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(4_102_444_799_000), "2099-12-31 23:59:59Z");
    }

    #[test]
    fn bodies_show_their_text_or_their_json() {
        assert_eq!(body_text(&json!({"text": "hello"})), "hello");
        assert_eq!(
            body_text(&json!({"text": "a\nb\u{1b}[2J"})),
            "a\\nb\\u{1b}[2J"
        );
        assert_eq!(
            body_text(&json!({"text": "hi", "n": 2})),
            r#"{"n":2,"text":"hi"}"#
        );
        assert_eq!(body_text(&json!("typing")), r#""typing""#);
        assert_eq!(body_text(&json!(null)), "null");
    }

    #[test]
    fn a_message_is_one_line() {
        let m: Envelope = serde_json::from_value(json!({
            "id": "01J", "conv": "dm:alice:bob", "seq": 3, "from": "alice", "to": "bob",
            "ts": 1, "qos": 1, "body": {"text": "hello\r\nthere"}
        }))
        .expect("envelope");
        assert_eq!(message_line(&m), "dm:alice:bob #3 alice: hello\\r\\nthere");
    }
}
