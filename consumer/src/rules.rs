//! The rules a message's fields must meet, in one place: ingest applies them
//! before it answers 202, and the store stage again before it writes (a
//! message published by hand never went through ingest).

use chrono::{DateTime, Datelike, Utc};

/// Longest `client_id`, in bytes (the column holds 64 characters; a byte is
/// never more than a character).
pub const MAX_CLIENT_ID_BYTES: usize = 64;

/// Why content is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// Nothing but whitespace.
    #[error("must not be empty")]
    Empty,
    /// A NUL character, which the databases refuse in text.
    #[error("must not contain NUL characters")]
    Nul,
    /// Over the configured size, in bytes.
    #[error("content is over {0} bytes")]
    TooLarge(usize),
}

/// Content must have something in it, no NUL, and fit `max_bytes`.
pub fn check_content(content: &str, max_bytes: usize) -> Result<(), ContentError> {
    if content.trim().is_empty() {
        return Err(ContentError::Empty);
    }
    if content.contains('\0') {
        return Err(ContentError::Nul);
    }
    if content.len() > max_bytes {
        return Err(ContentError::TooLarge(max_bytes));
    }
    Ok(())
}

/// A client id is 1 to [`MAX_CLIENT_ID_BYTES`] bytes with no NUL.
pub fn client_id_ok(client_id: &str) -> bool {
    !client_id.is_empty() && client_id.len() <= MAX_CLIENT_ID_BYTES && !client_id.contains('\0')
}

/// A `created_at` every backend and client represents the same way: a
/// four-digit year from 1970 (PostgreSQL refuses years before 4713 BC, and
/// RFC 3339 has four-digit years).
pub fn created_at_ok(created_at: DateTime<Utc>) -> bool {
    (1970..=9999).contains(&created_at.year())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_rules() {
        assert_eq!(check_content("hi", 2), Ok(()));
        assert_eq!(check_content(" \n\t", 10), Err(ContentError::Empty));
        assert_eq!(check_content("a\0b", 10), Err(ContentError::Nul));
        assert_eq!(check_content("abc", 2), Err(ContentError::TooLarge(2)));
        // Bytes, not characters.
        assert_eq!(check_content("é", 1), Err(ContentError::TooLarge(1)));
    }

    #[test]
    fn client_id_rules() {
        assert!(client_id_ok("web-1"));
        assert!(client_id_ok(&"x".repeat(MAX_CLIENT_ID_BYTES)));
        assert!(!client_id_ok(""));
        assert!(!client_id_ok(&"x".repeat(MAX_CLIENT_ID_BYTES + 1)));
        assert!(!client_id_ok("a\0"));
    }

    #[test]
    fn created_at_rules() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert!(created_at_ok(Utc::now()));
        assert!(created_at_ok(at("1970-01-01T00:00:00Z")));
        assert!(created_at_ok(at("9999-12-31T23:59:59Z")));
        assert!(!created_at_ok(at("1969-12-31T23:59:59Z")));
        assert!(!created_at_ok(at("-5000-01-01T00:00:00Z")));
        assert!(!created_at_ok(at("+10000-01-01T00:00:00Z")));
    }
}
