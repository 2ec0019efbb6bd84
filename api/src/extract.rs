//! Body and query extractors whose every rejection is a problem+json [`ApiError`].
//!
//! [`Json`] reports the path of a field with the wrong type or an unknown name;
//! [`Valid`] also runs the body's `validator` rules; [`QueryParams`] names a
//! bad query parameter the same way.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, StatusCode, header, request::Parts},
};
use serde::de::{DeserializeOwned, IgnoredAny};
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

/// Parses a JSON object, telling syntax errors (400 `malformed_json`) from
/// shape errors (422 `validation_failed` with the field path).
///
/// A well-formed body is read once. Only when that read fails is the whole
/// body's syntax checked, because a single pass stops at the first thing it
/// dislikes: a truncated body would be reported as its first unknown field,
/// and a number where an enum belongs as a syntax error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // JSON may smuggle NUL in as `\u0000`; databases refuse it in text.
    if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        return Err(ApiError::invalid_field(
            "body",
            "text must not contain NUL characters",
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        ApiError::bad_request("malformed_json", "the body is not valid JSON: not UTF-8")
    })?;
    let syntax = || serde_json::from_str::<IgnoredAny>(text).map_err(|e| malformed(&e));
    // serde would also read a struct from an array, by position.
    if !text.trim_start().starts_with('{') {
        syntax()?;
        return Err(ApiError::invalid_field("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize(&mut de) {
        Ok(value) => {
            de.end().map_err(|e| malformed(&e))?;
            Ok(value)
        }
        Err(err) => {
            syntax()?;
            let message = if err.inner().is_data() {
                strip_position(&err.inner().to_string())
            } else {
                "has the wrong type".to_owned()
            };
            Err(ApiError::validation(vec![FieldError {
                field: field_name(&err.path().to_string(), &message),
                message,
            }]))
        }
    }
}

/// The field an error is about: serde's path names the object that lacks a
/// field, so a missing one is taken from the message. `.` is the whole value.
fn field_name(path: &str, message: &str) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'));
    match (path, missing) {
        ("." | "", Some(field)) => field.to_owned(),
        ("." | "", None) => "body".to_owned(),
        (path, Some(field)) => format!("{path}.{field}"),
        (path, None) => path.to_owned(),
    }
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

    /// A parameter that is unknown or not of its type is 422, naming it, like
    /// a body field: a query string has no syntax of its own to get wrong.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|err| {
                let message = err.inner().to_string();
                ApiError::validation(vec![FieldError {
                    field: field_name(&err.path().to_string(), &message),
                    message,
                }])
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

#[cfg(test)]
mod tests {
    use super::parse_json;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        role: entity::user::Role,
    }

    /// (status, code, first field) of what `body` gets.
    fn answer(body: &str) -> (u16, &'static str, String) {
        let err = parse_json::<Body>(body.as_bytes()).unwrap_err();
        let field = err
            .errors
            .first()
            .map(|e| e.field.clone())
            .unwrap_or_default();
        (err.status.as_u16(), err.code, field)
    }

    #[test]
    fn syntax_is_judged_over_the_whole_body_before_its_shape() {
        for truncated in [r#"{"colour": "#, r#"{"name": "a", "role": 5"#, "", "[1,"] {
            assert_eq!(answer(truncated).1, "malformed_json", "{truncated}");
        }
        let not_utf8 = parse_json::<Body>(b"{\"name\": \"\xff\", \"role\": \"user\"}");
        assert_eq!(not_utf8.unwrap_err().code, "malformed_json");
    }

    #[test]
    fn shape_errors_name_the_field() {
        for (body, field) in [
            (r#"{"name": "a", "role": 5}"#, "role"),
            (r#"{"name": 5, "role": "user"}"#, "name"),
            (r#"{"name": "a", "role": "user", "colour": 1}"#, "colour"),
            (r#"{"role": "user"}"#, "name"),
            (r#"["a", "user"]"#, "body"),
        ] {
            assert_eq!(
                answer(body),
                (422, "validation_failed", field.into()),
                "{body}"
            );
        }
    }
}
