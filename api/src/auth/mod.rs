//! Who is calling: password hashing, access and refresh tokens, and the [`AuthUser`] extractor.

pub mod cookies;
pub mod extractor;
pub mod password;
pub mod refresh;
pub mod token;

pub use extractor::{AuthUser, TokenSource};
pub use token::{Claims, TokenKeys};

/// Name of the cookie that carries the access token for browsers.
pub const COOKIE_NAME: &str = "roomcast_token";
