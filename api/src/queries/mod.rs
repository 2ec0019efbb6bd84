//! Queries, one module per aggregate; handlers and the CLI stay thin on top.
//! They fail with [`QueryError`], which says what went wrong in the data's
//! terms; the HTTP edge turns it into an `ApiError` (see `error.rs`).

pub mod messages;
pub mod rooms;
pub mod tokens;
pub mod users;

use sea_orm::{DbErr, SqlErr};

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The named thing (a room, a user, a message) does not exist, or went
    /// while the query ran.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Another room has that name (names are unique, ignoring case).
    #[error("a room with that name exists")]
    RoomNameTaken,
    /// Another account has that username (ignoring case).
    #[error("that username is taken")]
    UsernameTaken,
    /// Another account has that email.
    #[error("that email is already registered")]
    EmailTaken,
    /// The private room already has its two members.
    #[error("this private room already has two members")]
    RoomFull,
    /// The change would leave the server without an admin.
    #[error("this is the only admin: make another admin first")]
    LastAdmin,
    /// The database failed (or cannot be reached).
    #[error(transparent)]
    Db(#[from] DbErr),
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;

/// True when `err` is a unique-constraint violation (on either backend).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// A row refers to one that is gone (deleted by a concurrent request).
pub fn is_foreign_key_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(SqlErr::ForeignKeyConstraintViolation(_))
    )
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
pub fn like_pattern(search: &str) -> String {
    let mut out = String::with_capacity(search.len() + 2);
    out.push('%');
    for c in search.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}
