//! The id rule of DESIGN.md §2: users, groups and devices are named by
//! `^[A-Za-z0-9_.-]{1,64}$`, so an id embedded in a topic or a conversation id can
//! never carry `/`, `+`, `#`, `$` or `:`.

use std::fmt;

/// The longest id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Whether `s` is a valid user, group or device id (`^[A-Za-z0-9_.-]{1,64}$`).
pub fn is_valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks `s` against the id rule, returning it unchanged when it passes.
pub fn check_id(s: &str) -> Result<&str, InvalidId> {
    if is_valid_id(s) {
        Ok(s)
    } else {
        Err(InvalidId::new(s))
    }
}

/// A string that is not a valid id. Its message quotes at most the first 80
/// characters of the input, so a huge input cannot make a huge error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidId {
    shown: String,
}

/// Characters of the offending input kept for the message.
const SHOWN_CHARS: usize = 80;

impl InvalidId {
    /// The error for `input`.
    pub fn new(input: &str) -> InvalidId {
        InvalidId {
            shown: quoted(input),
        }
    }
}

/// `input` quoted for an error message, cut after [`SHOWN_CHARS`] characters.
pub(super) fn quoted(input: &str) -> String {
    match input.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}...", &input[..cut]),
        None => format!("{input:?}"),
    }
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not a valid id (1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 _ . -)",
            self.shown
        )
    }
}

impl std::error::Error for InvalidId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_rule_of_the_design() {
        for ok in ["alice", "A", "u_1.dev-2", &"x".repeat(64)] {
            assert!(is_valid_id(ok), "{ok}");
            assert_eq!(check_id(ok), Ok(ok));
        }
        for bad in [
            "",
            "a/b",
            "a+b",
            "a#",
            "$SYS",
            "dm:a",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_id(bad), "{bad}");
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_huge_invalid_id_makes_a_short_message() {
        let huge = "é".repeat(1 << 20);
        let msg = InvalidId::new(&huge).to_string();
        assert!(msg.len() < 300, "{}", msg.len());
        assert!(msg.contains("not a valid id"), "{msg}");
    }
}
