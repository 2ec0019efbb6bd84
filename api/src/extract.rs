//! Request-body extractors whose every rejection is a problem+json [`ApiError`].
//!
//! [`Json`] reports the path of a field with the wrong type or an unknown name;
//! [`Valid`] also runs the body's `validator` rules.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Query, Request, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

use crate::error::{ApiError, FieldError};

/// A JSON body.
pub struct Json<T>(pub T);

/// A JSON body that passed its `validator` rules.
pub struct Valid<T>(pub T);

/// Query parameters.
pub struct QueryParams<T>(pub T);

pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Reads the whole body within the router's body limit.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is too large",
            )
        } else {
            ApiError::bad_request("unreadable_body", rejection.body_text())
        }
    })
}

/// Parses JSON, telling syntax errors (400) from shape errors (422 with the field path).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // JSON may smuggle NUL in as `\u0000`; databases refuse it in text.
    if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        return Err(ApiError::invalid_field(
            "body",
            "text must not contain NUL characters",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let inner = err.inner();
        if inner.is_data() {
            let field = err.path().to_string();
            let field = if field == "." {
                "body".to_owned()
            } else {
                field
            };
            ApiError::validation(vec![FieldError {
                field,
                message: strip_position(&inner.to_string()),
            }])
        } else {
            malformed(inner)
        }
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

fn malformed(err: &serde_json::Error) -> ApiError {
    ApiError::bad_request(
        "malformed_json",
        format!("the body is not valid JSON: {err}"),
    )
}

/// serde's messages end in " at line 1 column 20", which means nothing to a client.
fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Validate> FromRequest<S> for Valid<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        validate(&value)?;
        Ok(Valid(value))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|rejection: QueryRejection| {
                ApiError::bad_request("invalid_query", rejection.body_text())
            })
    }
}

/// Runs `validator` rules, listing every failed field.
pub fn validate<T: Validate>(value: &T) -> Result<(), ApiError> {
    value
        .validate()
        .map_err(|errors| ApiError::validation(field_errors(&errors)))
}

fn field_errors(errors: &ValidationErrors) -> Vec<FieldError> {
    let mut out = Vec::new();
    for (field, kind) in errors.errors() {
        if let ValidationErrorsKind::Field(list) = kind {
            for e in list {
                let message = e
                    .message
                    .as_ref()
                    .map_or_else(|| e.code.to_string(), |m| m.to_string());
                out.push(FieldError {
                    field: field.to_string(),
                    message,
                });
            }
        }
    }
    out.sort_by(|a, b| a.field.cmp(&b.field));
    out
}

/// `?search=&limit=&offset=` of the list endpoints.
#[derive(Debug, serde::Deserialize, Validate, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchPage {
    /// A case-insensitive fragment of the name.
    #[validate(length(max = 64, message = "must be at most 64 characters"))]
    pub search: Option<String>,
    /// 1 to 200; 50 when absent.
    #[validate(range(min = 1, max = 200, message = "must be 1 to 200"))]
    pub limit: Option<u64>,
    #[validate(range(max = 1_000_000, message = "must be at most 1000000"))]
    pub offset: Option<u64>,
}
