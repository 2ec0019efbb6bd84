//! The cookies a browser signs in with: the access token's (sent everywhere
//! on this site) and the refresh token's (sent only to `/auth/…`).

use std::time::Duration;

use axum_extra::extract::cookie::{Cookie, SameSite};

use super::COOKIE_NAME;

/// Name of the refresh token's cookie.
pub const REFRESH_COOKIE: &str = "roomcast_refresh";
/// The refresh cookie goes to these paths only (refresh and logout).
const REFRESH_PATH: &str = "/auth";

/// The access token's cookie: HttpOnly, `SameSite=Lax`, for the whole site.
pub fn access(token: String, ttl: Duration) -> Cookie<'static> {
    Cookie::build((COOKIE_NAME, token))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .max_age(max_age(ttl))
        .build()
}

/// The refresh cookie: HttpOnly, sent only to `/auth/…` and only by this
/// site's own pages.
pub fn refresh(token: String, ttl: Duration) -> Cookie<'static> {
    Cookie::build((REFRESH_COOKIE, token))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path(REFRESH_PATH)
        .max_age(max_age(ttl))
        .build()
}

/// An access cookie that tells the browser to forget the one it holds.
pub fn cleared_access() -> Cookie<'static> {
    access(String::new(), Duration::ZERO)
}

/// A refresh cookie that tells the browser to forget the one it holds.
pub fn cleared_refresh() -> Cookie<'static> {
    refresh(String::new(), Duration::ZERO)
}

fn max_age(ttl: Duration) -> time::Duration {
    time::Duration::seconds(ttl.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_cookie_goes_only_to_auth_and_only_from_this_site() {
        let cookie = refresh("t".into(), Duration::from_secs(60)).to_string();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(cookie.contains("Path=/auth"), "{cookie}");
        assert!(cookie.contains("Max-Age=60"), "{cookie}");
        let cleared = cleared_refresh().to_string();
        assert!(
            cleared.contains("Max-Age=0") && cleared.contains("Path=/auth"),
            "{cleared}"
        );
        let cleared = cleared_access().to_string();
        assert!(
            cleared.contains("Max-Age=0") && cleared.contains("Path=/;"),
            "{cleared}"
        );
        let access = access("t".into(), Duration::from_secs(5)).to_string();
        assert!(
            access.contains("SameSite=Lax") && access.contains("Path=/"),
            "{access}"
        );
    }
}
