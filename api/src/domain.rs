//! The rules for names people choose, shared by requests and the CLI.

use uuid::Uuid;
use validator::ValidationError;

/// 3–32 ASCII letters, digits, `_`, `-` or `.`, starting with a letter or digit.
pub fn validate_username(name: &str) -> Result<(), ValidationError> {
    check_name(name, 3, 32).map_err(|m| ValidationError::new("username").with_message(m.into()))
}

/// 1–64 of the same characters; not shaped like a UUID, since `{room}` in a
/// path is either; not starting with `dm.`, which names a pair's private
/// room ([`pair_room_name`]) and is kept for them.
pub fn validate_room_name(name: &str) -> Result<(), ValidationError> {
    check_name(name, 1, 64)
        .and_then(|()| match uuid::Uuid::parse_str(name) {
            Ok(_) => Err("must not look like a UUID".to_owned()),
            Err(_) => Ok(()),
        })
        .and_then(|()| match is_pair_room(name) {
            true => Err(format!(
                "names starting with '{PAIR_ROOM_PREFIX}' are kept for private rooms opened with a person"
            )),
            false => Ok(()),
        })
        .map_err(|m| ValidationError::new("room_name").with_message(m.into()))
}

/// How a pair's private room name starts.
const PAIR_ROOM_PREFIX: &str = "dm.";

/// The name of the private room `POST /users/{id}/private-room` opens for a
/// pair: `dm.` and a digest of the two ids, the same whichever of the two
/// opens it, so that two opening it at once collide on the unique name and
/// share one room. (If the name is taken, the room gets it with `.` and a
/// suffix.) The name is the record of whose room it is: only those two take
/// a seat in it ([`is_pair_room_of`]).
pub fn pair_room_name(a: Uuid, b: Uuid) -> String {
    let (first, second) = if a < b { (a, b) } else { (b, a) };
    let mut pair = first.as_bytes().to_vec();
    pair.extend_from_slice(second.as_bytes());
    let digest = Uuid::new_v5(&PAIR_ROOM_NAMESPACE, &pair)
        .simple()
        .to_string();
    format!("{PAIR_ROOM_PREFIX}{}", &digest[..16])
}

/// Namespace of the pairs' room names.
const PAIR_ROOM_NAMESPACE: Uuid = Uuid::from_u128(0x1c3e_5a7b_9d0f_4e21_8a6c_b3d5_f7e9_0a42);

/// Is `name` a pair's private room name (or kept for one)?
pub fn is_pair_room(name: &str) -> bool {
    name.get(..PAIR_ROOM_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PAIR_ROOM_PREFIX))
}

/// Is `name` the private room of `a` and `b` ([`pair_room_name`], with or
/// without a suffix)?
pub fn is_pair_room_of(name: &str, a: Uuid, b: Uuid) -> bool {
    let pair = pair_room_name(a, b);
    name.strip_prefix(pair.as_str())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
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
        assert!(validate_room_name("dm.anything").is_err(), "kept for pairs");
        assert!(validate_room_name("DM.x").is_err(), "kept for pairs");
        assert!(validate_room_name("dmx").is_ok());
    }

    #[test]
    fn a_pair_names_its_private_room_alike_either_way() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::new_v4(), Uuid::new_v4());
        let name = pair_room_name(a, b);
        assert_eq!(name, pair_room_name(b, a));
        assert_ne!(name, pair_room_name(a, c));
        assert!(check_name(&name, 1, 64).is_ok(), "{name}");
        assert!(is_pair_room(&name));
        assert!(is_pair_room_of(&name, b, a));
        assert!(is_pair_room_of(&format!("{name}.1a2b3c4d"), a, b));
        assert!(!is_pair_room_of(&name, a, c));
        assert!(!is_pair_room_of(&format!("{name}0"), a, b));
    }
}
