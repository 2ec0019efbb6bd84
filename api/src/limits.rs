//! Abuse limits, on governor's GCRA rate limiters.
//!
//! Logins are limited per account and per client address, so guessing one
//! password is slow and spraying many accounts from one address is too; a
//! locked-out account frees a slot every few seconds, so an attacker cannot
//! lock its owner out for long. Socket connects are limited per user, so one
//! account cannot make a node spend its time on joins and leaves; each
//! socket has its own message rate. Limits
//! are per node: with N nodes behind a balancer, the cluster-wide figure is at
//! most N times these.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use uuid::Uuid;

use crate::error::ApiError;

/// Login attempts per account: a burst of 10, then one every 6 s.
const LOGIN_PER_ACCOUNT: (u32, Duration) = (10, Duration::from_secs(6));
/// Login attempts per client address: a burst of 30, then one a second.
const LOGIN_PER_ADDRESS: (u32, Duration) = (30, Duration::from_secs(1));
/// Messages per socket: a burst of 30, then 20 a second.
const SOCKET_MESSAGES: (u32, Duration) = (30, Duration::from_millis(50));

fn quota((burst, period): (u32, Duration)) -> Quota {
    Quota::with_period(period)
        .expect("non-zero period")
        .allow_burst(NonZeroU32::new(burst).expect("non-zero burst"))
}

pub struct Limits {
    login_by_account: DefaultKeyedRateLimiter<String>,
    login_by_address: DefaultKeyedRateLimiter<IpAddr>,
    connects_by_user: DefaultKeyedRateLimiter<Uuid>,
}

impl Limits {
    /// Socket connects per user: a burst of `connect_burst` (a user with a
    /// few tabs, a reconnect storm after a deploy), then `connect_rate` a
    /// second; `SOCKET_CONNECT_BURST` and `SOCKET_CONNECT_RATE` set them.
    pub fn new(connect_burst: u32, connect_rate: u32) -> Arc<Self> {
        let connects = (
            connect_burst.max(1),
            Duration::from_secs(1) / connect_rate.max(1),
        );
        Arc::new(Self {
            login_by_account: RateLimiter::keyed(quota(LOGIN_PER_ACCOUNT)),
            login_by_address: RateLimiter::keyed(quota(LOGIN_PER_ADDRESS)),
            connects_by_user: RateLimiter::keyed(quota(connects)),
        })
    }

    /// 429 with `Retry-After` when this account or this address tried too often.
    pub fn check_login(&self, username: &str, address: IpAddr) -> Result<(), ApiError> {
        let clock = DefaultClock::default();
        let refused = |wait: Duration| too_many("too many login attempts; wait and retry", wait);
        self.login_by_address
            .check_key(&address)
            .map_err(|n| refused(n.wait_time_from(clock.now())))?;
        self.login_by_account
            .check_key(&username.to_lowercase())
            .map_err(|n| refused(n.wait_time_from(clock.now())))
    }

    /// 429 with `Retry-After` when this user opened sockets too often.
    pub fn check_connect(&self, user: Uuid) -> Result<(), ApiError> {
        self.connects_by_user.check_key(&user).map_err(|n| {
            too_many(
                "too many socket connects; wait and retry",
                n.wait_time_from(DefaultClock::default().now()),
            )
        })
    }

    /// Forgets keys whose limits have fully recovered; run now and then.
    pub fn shrink(&self) {
        self.login_by_account.retain_recent();
        self.login_by_address.retain_recent();
        self.connects_by_user.retain_recent();
    }
}

/// 429 `rate_limited`, with `Retry-After` rounded up: a client that waits
/// exactly this long gets in.
fn too_many(detail: &str, wait: Duration) -> ApiError {
    let mut err = ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        detail,
    );
    err.retry_after = Some(wait.as_millis().div_ceil(1000).max(1) as u64);
    err
}

/// A fresh message-rate limiter for one socket.
pub fn socket_limiter() -> DefaultDirectRateLimiter {
    RateLimiter::direct(quota(SOCKET_MESSAGES))
}
