//! Quotas on costly work, beside the login and socket limits of
//! [`crate::limits`]: registrations per client address, and a gate that
//! bounds how many argon2 hashes run at once (19 MiB and tens of ms each)
//! and how many may wait for one.
//!
//! Every figure comes from the configuration (README's table). The defaults
//! are generous: a benchmark or a test registering a hundred accounts from
//! one address is not throttled. Like the other limits they are per node.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::http::StatusCode;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::{config::Config, error::ApiError};

pub struct Quotas {
    registrations: DefaultKeyedRateLimiter<IpAddr>,
    /// argon2 hashes and verifications (19 MiB and tens of ms each).
    pub hashing: Gate,
}

fn keyed<K: std::hash::Hash + Eq + Clone>(
    burst: u32,
    period: Duration,
) -> DefaultKeyedRateLimiter<K> {
    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("non-zero period")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("non-zero burst"));
    RateLimiter::dashmap(quota)
}

/// The number of cores, for gates configured with 0.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Quotas {
    pub fn new(config: &Config) -> Arc<Self> {
        let per_minute = Duration::from_secs(60) / config.register_per_minute.max(1);
        let concurrency = match config.password_hash_concurrency {
            0 => cores(),
            n => n as usize,
        };
        Arc::new(Self {
            registrations: keyed(config.register_burst, per_minute),
            hashing: Gate::new(
                "password hashing",
                concurrency,
                config.password_hash_queue as usize,
            ),
        })
    }

    /// Registrations from one address (`REGISTER_BURST`, `REGISTER_PER_MINUTE`).
    pub fn check_register(&self, address: IpAddr) -> Result<(), ApiError> {
        check(
            &self.registrations,
            &key(address),
            "too many registrations from this address",
        )
    }

    /// Forgets keys whose limits have fully recovered; run now and then.
    pub fn shrink(&self) {
        self.registrations.retain_recent();
    }
}

/// An IPv6 client by its /64, like the login limits.
fn key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    detail: &str,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail);
        err.retry_after = Some(wait.as_millis().div_ceil(1000).max(1) as u64);
        err
    })
}

/// At most `concurrency` at once, at most `queue` more waiting; beyond that
/// 503 `busy` with `Retry-After`, instead of an unbounded pile of work (and
/// of memory: each argon2 run holds 19 MiB).
pub struct Gate {
    what: &'static str,
    permits: Semaphore,
    waiting: AtomicUsize,
    queue: usize,
}

/// One waiter counted while it waits, uncounted however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    pub fn new(what: &'static str, concurrency: usize, queue: usize) -> Self {
        Self {
            what,
            permits: Semaphore::new(concurrency.max(1)),
            waiting: AtomicUsize::new(0),
            queue,
        }
    }

    /// A place to run, once one is free; 503 `busy` if too many wait already.
    pub async fn enter(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ApiError::unavailable(
                "busy",
                format!("the server is busy with {}; retry shortly", self.what),
                1,
            ));
        }
        let _waiting = Waiting(&self.waiting);
        self.permits.acquire().await.map_err(ApiError::internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_gate_refuses_beyond_its_queue() {
        let gate = Gate::new("work", 1, 1);
        let running = gate.enter().await.unwrap();
        let waiter = gate.enter();
        tokio::pin!(waiter);
        assert!(
            futures_util::poll!(&mut waiter).is_pending(),
            "the second waits"
        );
        let refused = gate.enter().await.unwrap_err();
        assert_eq!((refused.code, refused.retry_after), ("busy", Some(1)));
        drop(running);
        let _second = waiter.await.unwrap();
    }
}
