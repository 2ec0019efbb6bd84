//! Access tokens: HS256 JWTs with the algorithm pinned and `exp` required.

use std::time::Duration;

use chrono::Utc;
use entity::user::Role;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

/// Leeway for clock skew between nodes when checking `exp`.
pub const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user's id.
    pub sub: Uuid,
    pub name: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
    /// Unique per token, so logout can revoke this one token.
    pub jti: Uuid,
    /// Guest tokens are valid for this one room only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<Uuid>,
    /// The user's token generation when it was issued: a password change
    /// moves to the next, and the tokens of earlier ones stop working.
    #[serde(rename = "gen", default)]
    pub generation: i32,
}

/// Signs and checks tokens with the configured key.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Issues a token for `user` that lives `ttl`.
    pub fn issue(
        &self,
        user: &entity::user::Model,
        ttl: Duration,
        room: Option<Uuid>,
    ) -> Result<(String, Claims), ApiError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.id,
            name: user.username.clone(),
            role: user.role,
            iat: now,
            exp: now + ttl.as_secs() as i64,
            jti: Uuid::new_v4(),
            room,
            generation: user.token_generation,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok((token, claims))
    }

    /// Checks signature, algorithm and expiry; says which of them failed.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::unauthorized("token_expired", "the token has expired")
                }
                _ => ApiError::unauthorized("invalid_token", "the token is not valid"),
            })
    }
}
