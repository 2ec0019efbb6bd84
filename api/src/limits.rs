//! Abuse limits, on governor's GCRA rate limiters.
//!
//! Logins are limited three ways. Strictly per account and client address,
//! so guessing one password from one place is slow; per address, so spraying
//! many accounts from one place is slow too; and leniently per account across
//! all addresses, so a botnet's guessing is capped without one attacker being
//! able to lock the owner out: the strict limit refuses the attacker before
//! the account-wide one counts the attempt, and the owner, from another
//! address, has a bucket of their own. An IPv6 client is keyed by its /64,
//! which one host usually holds whole. Socket connects are limited per user,
//! so one account cannot make a node spend its time on joins and leaves; each
//! socket has its own message rate. Limits are per node: with N nodes behind
//! a balancer, the cluster-wide figure is at most N times these.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, LazyLock},
    time::Duration,
};

use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use uuid::Uuid;

use crate::error::ApiError;

/// Login attempts per account from one address: a burst of 10, then one every 6 s.
const LOGIN_PER_ACCOUNT_AND_ADDRESS: (u32, Duration) = (10, Duration::from_secs(6));
/// Login attempts per client address: a burst of 30, then one a second.
const LOGIN_PER_ADDRESS: (u32, Duration) = (30, Duration::from_secs(1));
/// Login attempts per account from all addresses: a burst of 100, then one a second.
const LOGIN_PER_ACCOUNT: (u32, Duration) = (100, Duration::from_secs(1));

/// One clock for every limiter. Making a clock reads the CPU's features
/// (CPUID), which a virtual machine traps: it showed in profiles when each
/// socket and each refusal made its own.
pub(crate) static CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);

fn quota((burst, period): (u32, Duration)) -> Quota {
    Quota::with_period(period)
        .expect("non-zero period")
        .allow_burst(NonZeroU32::new(burst).expect("non-zero burst"))
}

pub struct Limits {
    login_by_account_and_address: DefaultKeyedRateLimiter<(String, IpAddr)>,
    login_by_address: DefaultKeyedRateLimiter<IpAddr>,
    login_by_account: DefaultKeyedRateLimiter<String>,
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
            login_by_account_and_address: RateLimiter::dashmap_with_clock(
                quota(LOGIN_PER_ACCOUNT_AND_ADDRESS),
                CLOCK.clone(),
            ),
            login_by_address: RateLimiter::dashmap_with_clock(
                quota(LOGIN_PER_ADDRESS),
                CLOCK.clone(),
            ),
            login_by_account: RateLimiter::dashmap_with_clock(
                quota(LOGIN_PER_ACCOUNT),
                CLOCK.clone(),
            ),
            connects_by_user: RateLimiter::dashmap_with_clock(quota(connects), CLOCK.clone()),
        })
    }

    /// 429 with `Retry-After` when this address, this account from this
    /// address, or this account from anywhere tried too often. Checked in that
    /// order, and a refusal stops the count: an attempt the narrower limits
    /// refuse never uses up the wider ones.
    pub fn check_login(&self, username: &str, address: IpAddr) -> Result<(), ApiError> {
        let clock = &*CLOCK;
        let refused = |wait: Duration| too_many("too many login attempts; wait and retry", wait);
        let address = address_key(address);
        let account = username.to_lowercase();
        self.login_by_address
            .check_key(&address)
            .map_err(|n| refused(n.wait_time_from(clock.now())))?;
        self.login_by_account_and_address
            .check_key(&(account.clone(), address))
            .map_err(|n| refused(n.wait_time_from(clock.now())))?;
        self.login_by_account
            .check_key(&account)
            .map_err(|n| refused(n.wait_time_from(clock.now())))
    }

    /// 429 with `Retry-After` when this user opened sockets too often.
    pub fn check_connect(&self, user: Uuid) -> Result<(), ApiError> {
        self.connects_by_user.check_key(&user).map_err(|n| {
            too_many(
                "too many socket connects; wait and retry",
                n.wait_time_from(CLOCK.now()),
            )
        })
    }

    /// Forgets keys whose limits have fully recovered; run now and then.
    pub fn shrink(&self) {
        self.login_by_account_and_address.retain_recent();
        self.login_by_address.retain_recent();
        self.login_by_account.retain_recent();
        self.connects_by_user.retain_recent();
    }
}

/// The key of an address: IPv4 (also mapped into IPv6) as it is, IPv6 by its
/// /64, since a host that has one address of a /64 usually has them all.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// 429 `rate_limited`, with `Retry-After` rounded up: a client that waits
/// exactly this long gets in.
pub(crate) fn too_many(detail: &str, wait: Duration) -> ApiError {
    let mut err = ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        detail,
    );
    err.retry_after = Some(wait.as_millis().div_ceil(1000).max(1) as u64);
    err
}

/// A fresh message-rate limiter for one socket: a burst of `burst` frames,
/// then `rate` a second (`SOCKET_MESSAGE_BURST`, `SOCKET_MESSAGE_RATE`).
pub fn socket_limiter(burst: u32, rate: u32) -> SocketLimiter {
    let quota = (burst.max(1), Duration::from_secs(1) / rate.max(1));
    SocketLimiter(RateLimiter::direct_with_clock(
        self::quota(quota),
        CLOCK.clone(),
    ))
}

/// One socket's message rate.
pub struct SocketLimiter(DefaultDirectRateLimiter);

impl SocketLimiter {
    /// Counts a frame; when it is over the rate, how long until one would pass.
    pub fn check(&self) -> Result<(), Duration> {
        self.0
            .check()
            .map_err(|not_until| not_until.wait_time_from(CLOCK.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_attacker_on_one_address_cannot_lock_the_owner_out() {
        let limits = Limits::new(1, 1);
        let attacker: IpAddr = "198.51.100.1".parse().unwrap();
        let owner: IpAddr = "203.0.113.9".parse().unwrap();
        let refused = (0..1000)
            .filter(|_| limits.check_login("victim", attacker).is_err())
            .count();
        assert_eq!(refused, 1000 - LOGIN_PER_ACCOUNT_AND_ADDRESS.0 as usize);
        assert!(limits.check_login("Victim", owner).is_ok());
    }
}
