//! The one error type of the HTTP API: every failure leaves as RFC 9457
//! `application/problem+json` with a stable `code`.
//!
//! Internal errors are logged with their cause and shown to the client only as
//! `internal_error`; nothing else about them leaks.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// One invalid field of a request body or query.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({"field": "username", "message": "must be 3 to 32 characters"}))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable; clients switch on it.
    pub code: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Seconds, sent as `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// Sent as `WWW-Authenticate` on 401.
    pub challenge: bool,
}

/// An RFC 9457 problem, as every error is sent (`application/problem+json`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "about:blank", "title": "Conflict", "status": 409,
    "detail": "this private room already has two members", "code": "room_full"
}))]
pub struct Problem {
    pub r#type: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable and machine-readable: clients switch on it.
    pub code: String,
    /// The invalid fields, for `validation_failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    /// A 503 because the database cannot be reached (a temporary condition).
    pub fn is_database_unavailable(&self) -> bool {
        self.code == DATABASE_UNAVAILABLE
    }

    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            challenge: false,
        }
    }

    /// 400: the request cannot be read.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            challenge: true,
            ..Self::new(StatusCode::UNAUTHORIZED, code, detail)
        }
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    /// 404 for a named thing.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// 422 listing the invalid fields.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                detail,
            )
        }
    }

    /// 422 for one field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    /// 500: logs the cause, tells the client nothing more.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal server error",
        )
    }
}

/// The `code` of a 503 for a database that cannot be reached.
pub const DATABASE_UNAVAILABLE: &str = "database_unavailable";

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        // A database that is down is a temporary condition, not a bug.
        if database_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            return Self::unavailable(
                DATABASE_UNAVAILABLE,
                "the database is unavailable, retry shortly",
                2,
            );
        }
        Self::internal(err)
    }
}

/// A query's failure, as the client sees it.
impl From<crate::queries::QueryError> for ApiError {
    fn from(err: crate::queries::QueryError) -> Self {
        use crate::queries::QueryError;
        let detail = err.to_string();
        match err {
            QueryError::NotFound(what) => Self::not_found(what),
            QueryError::RoomNameTaken => Self::conflict("name_taken", detail),
            QueryError::UsernameTaken => Self::conflict("username_taken", detail),
            QueryError::EmailTaken => Self::conflict("email_taken", detail),
            QueryError::RoomFull => Self::conflict("room_full", detail),
            QueryError::LastAdmin => Self::conflict("last_admin", detail),
            QueryError::Db(err) => err.into(),
        }
    }
}

/// True when `err` says the database cannot be reached right now (down,
/// restarting, the connection cut mid-query) rather than that the query is
/// wrong: such errors are a 503 the client may retry, never a 500.
pub fn database_unavailable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx::Error};
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match e.as_ref() {
                Error::Io(_)
                | Error::Tls(_)
                | Error::PoolTimedOut
                | Error::PoolClosed
                | Error::WorkerCrashed
                | Error::Protocol(_) => true,
                // SQLSTATE class 08: connection exception; 57P: the server is
                // shutting down, crashed or not yet accepting connections.
                Error::Database(db) => db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
                _ => false,
            }
        }
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            r#type: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            errors: self.errors,
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::{DbErr, RuntimeErr, sqlx};

    use super::database_unavailable;

    fn query_err(err: sqlx::Error) -> DbErr {
        DbErr::Query(RuntimeErr::SqlxError(Arc::new(err)))
    }

    #[test]
    fn a_cut_connection_is_unavailable_not_a_bug() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(database_unavailable(&query_err(sqlx::Error::Io(reset))));
        assert!(database_unavailable(&query_err(sqlx::Error::PoolTimedOut)));
        assert!(database_unavailable(&DbErr::Conn(RuntimeErr::Internal(
            "refused".into()
        ))));
    }

    #[test]
    fn a_wrong_query_is_not_unavailable() {
        assert!(!database_unavailable(&query_err(sqlx::Error::RowNotFound)));
        assert!(!database_unavailable(&DbErr::RecordNotFound("x".into())));
        assert!(!database_unavailable(&DbErr::Custom("bad".into())));
    }
}
