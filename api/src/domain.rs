//! The rules for names people choose, shared by requests and the CLI.

use validator::ValidationError;

/// 3–32 ASCII letters, digits, `_`, `-` or `.`, starting with a letter or digit.
pub fn validate_username(name: &str) -> Result<(), ValidationError> {
    check_name(name, 3, 32).map_err(|m| ValidationError::new("username").with_message(m.into()))
}

/// 1–64 of the same characters; not shaped like a UUID, since `{room}` in a
/// path is either.
pub fn validate_room_name(name: &str) -> Result<(), ValidationError> {
    check_name(name, 1, 64)
        .and_then(|()| match uuid::Uuid::parse_str(name) {
            Ok(_) => Err("must not look like a UUID".to_owned()),
            Err(_) => Ok(()),
        })
        .map_err(|m| ValidationError::new("room_name").with_message(m.into()))
}

fn check_name(name: &str, min: usize, max: usize) -> Result<(), String> {
    let len = name.chars().count();
    if len < min || len > max {
        return Err(format!("must be {min} to {max} characters"));
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err("must start with a letter or a digit".to_owned());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err("may hold only letters, digits, '_', '-' and '.'".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["bob", "Alice_99", "x.y-z"] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "_bob",
            "bob smith",
            "émile",
            &"a".repeat(33),
            "bob;drop",
        ] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn room_names() {
        assert!(validate_room_name("general").is_ok());
        assert!(validate_room_name("0190d1a2-0000-7000-8000-000000000001").is_err());
        assert!(validate_room_name("a/b").is_err());
    }
}
