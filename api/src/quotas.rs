//! Quotas on costly work, beside the login and socket limits of
//! [`crate::limits`]: registrations and guest tokens per client address,
//! messages (and edits) and room creations per user, gates that bound how many
//! argon2 hashes (19 MiB and tens of ms each) and avatar decodes (up to
//! 64 MiB each) run at once and how many may wait, and each user's open
//! sockets ([`SocketSlots`]).
//!
//! Every figure comes from the configuration (README's table). The defaults
//! are what a stranger may do with an open sign-up: a few accounts from one
//! address, and from each a person's pace of messages with room for a paste
//! or a reconnect's resend, so that one account cannot flood a room or the
//! store stage. Admins are not counted (a backend posts as one); benchmarks
//! and tests that post flat out raise the figures. Like the other limits
//! they are per node.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use tokio::sync::{Semaphore, SemaphorePermit};

use uuid::Uuid;

use crate::{
    auth::AuthUser,
    config::Config,
    error::ApiError,
    limits::{CLOCK, too_many},
};

pub use crate::socket_slots::{SocketSlot, SocketSlots};

pub struct Quotas {
    registrations: DefaultKeyedRateLimiter<IpAddr>,
    guest_tokens: DefaultKeyedRateLimiter<IpAddr>,
    messages: DefaultKeyedRateLimiter<Uuid>,
    room_creations: DefaultKeyedRateLimiter<Uuid>,
    /// argon2 hashes and verifications (19 MiB and tens of ms each).
    pub hashing: Gate,
    /// Avatar uploads being decoded and scaled (up to 64 MiB each).
    pub avatars: Gate,
    /// Each user's open sockets on this node (`SOCKETS_PER_USER`).
    pub sockets: Arc<SocketSlots>,
}

fn keyed<K: std::hash::Hash + Eq + Clone>(
    burst: u32,
    period: Duration,
) -> DefaultKeyedRateLimiter<K> {
    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("non-zero period")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("non-zero burst"));
    RateLimiter::dashmap_with_clock(quota, CLOCK.clone())
}

/// The number of cores, for gates configured with 0.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The interval between two of `n` per `period`.
fn every(period: Duration, n: u32) -> Duration {
    period / n.max(1)
}

/// A gate's concurrency: `n`, or one per core for 0.
fn concurrency(n: u32) -> usize {
    match n {
        0 => cores(),
        n => n as usize,
    }
}

impl Quotas {
    pub fn new(config: &Config) -> Arc<Self> {
        let (minute, second) = (Duration::from_secs(60), Duration::from_secs(1));
        Arc::new(Self {
            registrations: keyed(
                config.register_burst,
                every(minute, config.register_per_minute),
            ),
            guest_tokens: keyed(
                config.guest_token_burst,
                every(minute, config.guest_tokens_per_minute),
            ),
            messages: keyed(config.message_burst, every(second, config.message_rate)),
            room_creations: keyed(
                config.room_create_burst,
                every(minute, config.room_create_per_minute),
            ),
            hashing: Gate::new(
                "password hashing",
                concurrency(config.password_hash_concurrency),
                config.password_hash_queue as usize,
            ),
            avatars: Gate::new(
                "avatar images",
                concurrency(config.avatar_decode_concurrency),
                config.avatar_decode_queue as usize,
            ),
            sockets: Arc::new(SocketSlots::new(config.sockets_per_user as usize)),
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

    /// Guest tokens asked for from one address (`GUEST_TOKEN_BURST`,
    /// `GUEST_TOKENS_PER_MINUTE`).
    pub fn check_guest_token(&self, address: IpAddr) -> Result<(), ApiError> {
        check(
            &self.guest_tokens,
            &key(address),
            "too many guest tokens from this address",
        )
    }

    /// Counts a message or an edit one user sends, over HTTP or any socket
    /// (`MESSAGE_BURST`, `MESSAGE_RATE`); admins are not counted. Over the
    /// rate, how long until one would pass (a socket's `retry_after_ms`).
    pub fn take_message(&self, user: &AuthUser) -> Result<(), Duration> {
        if user.is_admin() {
            return Ok(());
        }
        self.messages
            .check_key(&user.id)
            .map_err(|not_until| not_until.wait_time_from(CLOCK.now()))
    }

    /// [`Self::take_message`] for HTTP: 429 `rate_limited` with `Retry-After`.
    pub fn check_message(&self, user: &AuthUser) -> Result<(), ApiError> {
        self.take_message(user)
            .map_err(|wait| too_many("too many messages; wait and retry", wait))
    }

    /// Rooms one user creates, by hand or by opening an unknown room
    /// (`ROOM_CREATE_BURST`, `ROOM_CREATE_PER_MINUTE`).
    pub fn check_room_create(&self, user: Uuid) -> Result<(), ApiError> {
        check(
            &self.room_creations,
            &user,
            "too many rooms created; wait and retry",
        )
    }

    /// Forgets keys whose limits have fully recovered; run now and then.
    pub fn shrink(&self) {
        self.registrations.retain_recent();
        self.guest_tokens.retain_recent();
        self.messages.retain_recent();
        self.room_creations.retain_recent();
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
    limiter
        .check_key(key)
        .map_err(|not_until| too_many(detail, not_until.wait_time_from(CLOCK.now())))
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
