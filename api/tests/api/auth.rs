use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TEST_SECRET, spawn_app};

async fn register_login_me_logout(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let user = api.register("Alice").await;
    assert_eq!(user["username"], "Alice");
    assert_eq!(user["role"], "user");
    assert!(user.get("password_hash").is_none());

    // JSON login, case-insensitive username.
    let res = api
        .client
        .post(api.url("/auth/login"))
        .json(&json!({"username": "alice", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("roomcast_token=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 1800);
    let token = body["access_token"].as_str().unwrap().to_owned();

    // The cookie alone authenticates.
    let cookie_pair = cookie.split(';').next().unwrap();
    let res = api
        .client
        .get(api.url("/users/me"))
        .header("cookie", cookie_pair)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["email"],
        "alice@example.com"
    );
    // ...but not from another site.
    let res = api
        .client
        .get(api.url("/users/me"))
        .header("cookie", cookie_pair)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    let res = api
        .client
        .get(api.url("/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let res = api
        .client
        .post(api.url("/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("roomcast_token=")
    );
    let res = api
        .client
        .get(api.url("/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "token_revoked");
}

async fn oauth2_password_form_login(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    api.register("formuser").await;
    let res = api
        .client
        .post(api.url("/auth/login"))
        .form(&[
            ("grant_type", "password"),
            ("username", "formuser"),
            ("password", "password123"),
            ("scope", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.json::<Value>().await.unwrap()["access_token"].is_string());
}

async fn wrong_password_and_unknown_user_look_the_same(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    api.register("carol").await;
    for (user, pass) in [("carol", "wrong-password"), ("nobody", "password123")] {
        let res = api
            .client
            .post(api.url("/auth/login"))
            .json(&json!({"username": user, "password": pass}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(
            res.json::<Value>().await.unwrap()["code"],
            "invalid_credentials"
        );
    }
}

async fn uniqueness_is_case_insensitive(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    api.register("dave").await;
    let register = |username: &str, email: &str| {
        api.client
            .post(api.url("/auth/register"))
            .json(&json!({"username": username, "email": email, "password": "password123"}))
            .send()
    };
    let res = register("DAVE", "other@example.com").await.unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "username_taken");
    let res = register("dave2", "Dave@Example.com").await.unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "email_taken");
}

async fn registration_validation_lists_fields(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let res = api
        .client
        .post(api.url("/auth/register"))
        .json(&json!({"username": "a b", "email": "not-an-email", "password": "short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "validation_failed");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password", "username"]);

    let res = api
        .client
        .post(api.url("/auth/register"))
        .json(&json!({"username": "eve", "email": "eve@example.com", "password": "x".repeat(129)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
}

/// Every forged, broken or stale token is refused with 401 and a code.
async fn hostile_tokens_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (user_id, good) = api.user("mallory").await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = chrono_now();
    let claims = |exp: i64| json!({"sub": user_id, "name": "mallory", "role": "admin", "iat": now, "exp": exp, "jti": uuid::Uuid::new_v4()});

    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut payload: Value = serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    payload["role"] = json!("admin");
    parts[1] = b64.encode(payload.to_string());
    let tampered = parts.join(".");

    let alg_none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims(now + 600).to_string())
    );
    let other_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(now + 600),
        &EncodingKey::from_secret(b"some-other-key-some-other-key-some-other-key"),
    )
    .unwrap();
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims(now + 600),
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(now - 60),
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user_id, "name": "m", "role": "user", "iat": now, "jti": uuid::Uuid::new_v4()}),
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();

    for (what, token, code) in [
        ("tampered payload", tampered.as_str(), "invalid_token"),
        ("alg none", alg_none.as_str(), "invalid_token"),
        ("another key", other_key.as_str(), "invalid_token"),
        ("HS512 instead of HS256", hs512.as_str(), "invalid_token"),
        ("expired", expired.as_str(), "token_expired"),
        ("no exp", no_exp.as_str(), "invalid_token"),
        ("garbage", "not.a.jwt", "invalid_token"),
    ] {
        let res = api
            .client
            .get(api.url("/users/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer", "{what}");
        assert_eq!(res.json::<Value>().await.unwrap()["code"], code, "{what}");
    }
    let res = api.client.get(api.url("/users/me")).send().await.unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "missing_token");
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn bootstrap_admin_is_created(backend: Backend) {
    let Some(app) = crate::helpers::spawn_app_with(backend, crate::helpers::with_root).await else {
        return;
    };
    let api = app.api();
    let res = api
        .client
        .post(api.url("/auth/login"))
        .json(&json!({"username": "root", "password": crate::helpers::ROOT_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Value = api
        .client
        .get(api.url("/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");
}

/// `ADMIN_USERNAME` naming an account someone registered does not make it
/// admin unless its password is `ADMIN_PASSWORD`.
async fn bootstrap_admin_promotes_only_with_its_password(backend: Backend) {
    let Some(env) = crate::helpers::TestEnv::new(backend).await else {
        return;
    };
    let role = |node: &crate::helpers::Node, token: String| {
        let api = crate::helpers::Api::new(node.addr);
        async move {
            let me: Value = api
                .client
                .get(api.url("/users/me"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            me["role"].as_str().unwrap_or_default().to_owned()
        }
    };
    let node = crate::helpers::spawn_env_node(&env, &[]);
    let (_, token) = crate::helpers::Api::new(node.addr).user("root").await; // password123
    drop(node);

    let (node, logs) = crate::helpers::spawn_node_with_logs(
        &env.db.url,
        &[
            ("ADMIN_USERNAME", "root"),
            ("ADMIN_PASSWORD", "the-operators-password"),
        ],
    );
    assert_eq!(role(&node, token.clone()).await, "user");
    assert!(
        logs.lines().iter().any(|l| l.contains("promoting no one")),
        "no warning: {:?}",
        logs.lines()
    );
    drop(node);

    let node = crate::helpers::spawn_node(
        &env.db.url,
        &[
            ("ADMIN_USERNAME", "root"),
            ("ADMIN_PASSWORD", "password123"),
        ],
    );
    assert_eq!(role(&node, token).await, "admin");
}

/// Rows of revoked tokens past their expiry are deleted (a logout sweeps
/// them); the rows of tokens still alive stay.
async fn expired_revoked_tokens_are_pruned(backend: Backend) {
    use sea_orm::{ActiveModelTrait, EntityTrait, Set};
    let Some(app) = crate::helpers::spawn_app(backend).await else {
        return;
    };
    let db = sea_orm::Database::connect(&app.env.db.url).await.unwrap();
    let stale = uuid::Uuid::new_v4();
    entity::revoked_token::ActiveModel {
        jti: Set(stale),
        expires_at: Set(chrono::Utc::now() - chrono::Duration::hours(2)),
    }
    .insert(&db)
    .await
    .unwrap();
    let api = app.api();
    let (_, token) = api.user("leaver").await;
    let res = api
        .client
        .post(api.url("/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let rows = entity::RevokedToken::find().all(&db).await.unwrap();
    assert!(
        rows.iter().all(|r| r.jti != stale),
        "the expired row is still there"
    );
    assert_eq!(rows.len(), 1, "the fresh logout's row stays");
    db.close().await.ok();
}

/// The `name` cookie a response sets, as `name=value`, and its attributes.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<(String, String)> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| (c.split(';').next().unwrap().to_owned(), c))
}

async fn refresh(api: &crate::helpers::Api, cookie: &str) -> reqwest::Response {
    api.client
        .post(api.url("/auth/refresh"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// Stay signed in: login sets an HttpOnly refresh cookie; each refresh gives
/// an access token and rotates the cookie; logout revokes it; a rotated one
/// used again later revokes its whole sign-in, the current one too.
async fn refresh_cookie_rotates_and_reuse_revokes_the_family(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    api.register("alice").await;
    let login = || async {
        let res = api
            .client
            .post(api.url("/auth/login"))
            .json(&json!({"username": "alice", "password": "password123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let first = res.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(first.starts_with("roomcast_token="), "{first}");
        let (refresh, attributes) = set_cookie(&res, "roomcast_refresh").expect("a refresh cookie");
        for want in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/auth",
            "Max-Age=1209600",
        ] {
            assert!(attributes.contains(want), "{attributes}");
        }
        refresh
    };
    let first = login().await;

    // A refresh: a working access token, and a new refresh cookie.
    let res = refresh(&api, &first).await;
    assert_eq!(res.status(), 200);
    let (access_cookie, _) = set_cookie(&res, "roomcast_token").expect("an access cookie");
    let (second, _) = set_cookie(&res, "roomcast_refresh").expect("a rotated refresh cookie");
    assert_ne!(second, first);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    for auth in [
        (
            "authorization",
            format!("Bearer {}", body["access_token"].as_str().unwrap()),
        ),
        ("cookie", access_cookie),
    ] {
        let res = api
            .client
            .get(api.url("/users/me"))
            .header(auth.0, auth.1)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // The spent one, again at once (a second tab): an access token, no new cookie.
    let res = refresh(&api, &first).await;
    assert_eq!(res.status(), 200);
    assert!(set_cookie(&res, "roomcast_refresh").is_none());
    let res = refresh(&api, &second).await;
    assert_eq!(res.status(), 200);
    let (third, _) = set_cookie(&res, "roomcast_refresh").unwrap();

    // The spent one, later: a stolen copy. The whole sign-in ends.
    let db = sea_orm::Database::connect(&app.env.db.url).await.unwrap();
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(&format!(
        "UPDATE refresh_tokens SET used_at = {} WHERE used_at IS NOT NULL",
        match backend {
            Backend::Sqlite => "'2000-01-01T00:00:00+00:00'",
            Backend::Postgres => "now() - interval '1 hour'",
        }
    ))
    .await
    .unwrap();
    let res = refresh(&api, &first).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "token_reused");
    let res = refresh(&api, &third).await;
    assert_eq!(res.status(), 401);
    let (cleared, _) = set_cookie(&res, "roomcast_refresh").expect("the dead cookie cleared");
    assert_eq!(cleared, "roomcast_refresh=");
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "token_revoked");

    // Another sign-in is not touched; its logout revokes it.
    let other = login().await;
    let res = refresh(&api, &other).await;
    assert_eq!(res.status(), 200);
    let (other, _) = set_cookie(&res, "roomcast_refresh").unwrap();
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = api
        .client
        .post(api.url("/auth/logout"))
        .bearer_auth(&token)
        .header("cookie", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        set_cookie(&res, "roomcast_refresh").unwrap().0,
        "roomcast_refresh="
    );
    let res = refresh(&api, &other).await;
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "token_revoked");

    // Refusals: none, unknown, from another site; a deleted account's.
    let res = api
        .client
        .post(api.url("/auth/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "missing_token");
    let res = refresh(&api, "roomcast_refresh=not-a-token").await;
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "invalid_token");
    let fresh = login().await;
    let res = api
        .client
        .post(api.url("/auth/refresh"))
        .header("cookie", &fresh)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = refresh(&api, &fresh).await;
    let (fresh, _) = set_cookie(&res, "roomcast_refresh").unwrap();
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = api
        .client
        .delete(api.url("/users/me"))
        .bearer_auth(&token)
        .json(&json!({"current_password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = refresh(&api, &fresh).await;
    assert_eq!(res.status(), 401);
}

/// Log out everywhere ends every sign-in: both access tokens and both refresh
/// cookies. A password change ends the other sign-ins' refresh cookies too
/// (not only their access tokens) and hands the caller a fresh one.
async fn logout_everywhere_and_password_change_end_refresh_cookies(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    api.register("alice").await;
    let login = |password: &'static str| {
        let api = &api;
        async move {
            let res = api
                .client
                .post(api.url("/auth/login"))
                .json(&json!({"username": "alice", "password": password}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let (cookie, _) = set_cookie(&res, "roomcast_refresh").expect("a refresh cookie");
            let body: Value = res.json().await.unwrap();
            (body["access_token"].as_str().unwrap().to_owned(), cookie)
        }
    };
    let me = |token: String| {
        let api = &api;
        async move {
            api.client
                .get(api.url("/users/me"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };

    // A password change: the laptop's refresh cookie dies with its token.
    let (phone, _phone_refresh) = login("password123").await;
    let (_laptop, laptop_refresh) = login("password123").await;
    let res = api
        .client
        .patch(api.url("/users/me"))
        .bearer_auth(&phone)
        .json(&json!({"password": "a-new-password-1", "current_password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (fresh, _) = set_cookie(&res, "roomcast_refresh").expect("the caller gets a fresh cookie");
    assert_eq!(refresh(&api, &laptop_refresh).await.status(), 401);
    assert_eq!(refresh(&api, &fresh).await.status(), 200);

    // Log out everywhere from one sign-in: the other's token and cookie die too.
    let (a, a_refresh) = login("a-new-password-1").await;
    let (b, b_refresh) = login("a-new-password-1").await;
    assert_eq!(me(b.clone()).await, 200);
    let res = api
        .client
        .post(api.url("/auth/logout-all"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(
        set_cookie(&res, "roomcast_refresh").is_some(),
        "the cookie is cleared"
    );
    for token in [a, b, phone] {
        assert_eq!(me(token).await, 401);
    }
    for cookie in [a_refresh, b_refresh] {
        assert_eq!(refresh(&api, &cookie).await.status(), 401);
    }
}

const EVIL: &str = "https://evil.example";

/// A tab whose access token has expired (its cookie gone with it) still
/// signs out: the refresh cookie alone ends its sign-in. A page on another
/// site can neither do that nor sign anyone in (login CSRF) or up.
async fn logout_with_only_the_refresh_cookie_and_cross_site_refusals(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    api.register("alice").await;
    let login = |origin: Option<String>| {
        let api = &api;
        async move {
            let mut req = api
                .client
                .post(api.url("/auth/login"))
                .form(&[("username", "alice"), ("password", "password123")]);
            if let Some(origin) = origin {
                req = req.header("origin", origin);
            }
            req.send().await.unwrap()
        }
    };
    let logout = |cookie: String, origin: Option<String>| {
        let api = &api;
        async move {
            let mut req = api
                .client
                .post(api.url("/auth/logout"))
                .header("cookie", cookie);
            if let Some(origin) = origin {
                req = req.header("origin", origin);
            }
            req.send().await.unwrap()
        }
    };

    // Another site's form: refused, and no cookie is set.
    let res = login(Some(EVIL.into())).await;
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("set-cookie").is_none());
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "origin_not_allowed"
    );
    let res = api
        .client
        .post(api.url("/auth/register"))
        .header("origin", EVIL)
        .json(&json!({"username": "mallory", "email": "m@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // Refused before the body is read: a bad one is not even looked at.
    let res = api
        .client
        .post(api.url("/auth/register"))
        .header("origin", EVIL)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // This site's own page, and clients that send no Origin, sign in.
    let own = format!("http://{}", app.addr);
    assert_eq!(login(Some(own.clone())).await.status(), 200);
    let res = login(None).await;
    assert_eq!(res.status(), 200);
    let (cookie, _) = set_cookie(&res, "roomcast_refresh").expect("a refresh cookie");

    // Neither token nor cookie: 401 as before.
    let res = api
        .client
        .post(api.url("/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // The refresh cookie alone, from another site: refused, and it still works.
    assert_eq!(
        logout(cookie.clone(), Some(EVIL.into())).await.status(),
        403
    );
    let res = refresh(&api, &cookie).await;
    assert_eq!(res.status(), 200);
    let (cookie, _) = set_cookie(&res, "roomcast_refresh").expect("rotated");
    // From this site: the sign-in ends, both cookies are cleared.
    let res = logout(cookie.clone(), Some(own)).await;
    assert_eq!(res.status(), 204);
    let (cleared, _) = set_cookie(&res, "roomcast_refresh").expect("the cookie is cleared");
    assert_eq!(cleared, "roomcast_refresh=");
    let res = refresh(&api, &cookie).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "token_revoked");
}

crate::on_both_backends!(
    logout_with_only_the_refresh_cookie_and_cross_site_refusals,
    logout_everywhere_and_password_change_end_refresh_cookies,
    expired_revoked_tokens_are_pruned,
    bootstrap_admin_promotes_only_with_its_password,
    register_login_me_logout,
    refresh_cookie_rotates_and_reuse_revokes_the_family,
    oauth2_password_form_login,
    wrong_password_and_unknown_user_look_the_same,
    uniqueness_is_case_insensitive,
    registration_validation_lists_fields,
    hostile_tokens_are_refused,
    bootstrap_admin_is_created,
);
