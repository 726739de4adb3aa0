//! Identifiers: generating UUID v7 ids and parsing what users type for them.
//!
//! A session id becomes a directory name, so nothing reaches the file system unless it
//! is a well-formed UUID or a prefix made only of hex digits and hyphens. Validation
//! happens here, before any path is built.

use uuid::Uuid;

use crate::error::UserError;

/// Shortest prefix accepted, so that a slip of the keyboard cannot select (or remove)
/// an unrelated session. Four characters, as git does for commits.
pub const MIN_PREFIX: usize = 4;

/// A source of fresh ids, passed in so tests can make them deterministic.
pub trait IdGen: Send + Sync {
    fn new_id(&self) -> Uuid;
}

/// Time-ordered UUID v7 ids: listing a directory of them sorts by creation time.
pub struct V7Ids;

impl IdGen for V7Ids {
    fn new_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}

/// What a user gave for an id: a whole id, or a prefix to be matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdQuery {
    Full(Uuid),
    /// Lowercase, hyphens kept as typed; matched against the hyphenated form.
    Prefix(String),
}

impl IdQuery {
    /// Parses a whole id or a prefix of one. Anything else is refused with exit code 2.
    pub fn parse(input: &str) -> Result<IdQuery, UserError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(UserError::usage("the session id is empty"));
        }
        if let Ok(id) = Uuid::try_parse(text)
            && text.len() == 36
        {
            return Ok(IdQuery::Full(id));
        }
        let valid_chars = text.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if !valid_chars || text.len() > 36 {
            return Err(UserError::usage(format!(
                "`{}` is not a session id: ids are UUIDs such as 0193a7c2-5b1e-7d3f-9a41-1c2d3e4f5a6b, or a prefix of one",
                printable(text)
            )));
        }
        if text.len() < MIN_PREFIX {
            return Err(UserError::usage(format!(
                "the id prefix `{text}` is too short: give at least {MIN_PREFIX} characters"
            )));
        }
        Ok(IdQuery::Prefix(text.to_ascii_lowercase()))
    }

    pub fn matches(&self, id: &Uuid) -> bool {
        match self {
            IdQuery::Full(full) => full == id,
            IdQuery::Prefix(prefix) => id.hyphenated().to_string().starts_with(prefix.as_str()),
        }
    }
}

/// Shows untrusted input in an error message without control characters.
fn printable(text: &str) -> String {
    let shown: String = text.chars().take(60).collect();
    shown.escape_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_id_is_accepted_in_either_case() {
        let id = Uuid::now_v7();
        assert_eq!(IdQuery::parse(&id.to_string()).unwrap(), IdQuery::Full(id));
        let upper = id.to_string().to_uppercase();
        assert_eq!(IdQuery::parse(&upper).unwrap(), IdQuery::Full(id));
    }

    #[test]
    fn a_prefix_matches_the_hyphenated_form() {
        let id = Uuid::parse_str("0193a7c2-5b1e-7d3f-9a41-1c2d3e4f5a6b").unwrap();
        let q = IdQuery::parse("0193A7C2-5b").unwrap();
        assert!(q.matches(&id));
        assert!(!IdQuery::parse("0193a7c3").unwrap().matches(&id));
    }

    #[test]
    fn anything_that_could_name_another_path_is_refused() {
        for bad in [
            "",
            "../etc",
            "/etc/passwd",
            "0193a7c2/..",
            "abc\0def",
            "0193 a7c2",
            "zzzz",
            "0193a7c2-5b1e-7d3f-9a41-1c2d3e4f5a6b0",
            ".ready",
        ] {
            let err = IdQuery::parse(bad).unwrap_err();
            assert_eq!(err.kind.code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn prefixes_shorter_than_four_characters_are_refused() {
        let err = IdQuery::parse("019").unwrap_err();
        assert!(err.message.contains("too short"), "{}", err.message);
        assert!(IdQuery::parse("0193").is_ok());
    }
}
