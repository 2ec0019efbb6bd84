//! Short-lived caches for the ingest hot path (and socket upgrades): whose a
//! token is, which room a key names, who is a member of it.
//!
//! An entry is *fresh* for [`FRESH`]: used without asking the database. After
//! that it is kept, up to [`KEEP`], only as a fallback for when the database
//! is unavailable or does not answer within [`REFRESH_WAIT`] (then the
//! database is left alone for [`RETRY_DOWN`]), so that ingest keeps accepting
//! messages from users it knows while the broker holds the backlog. Nothing that a cached answer lets
//! through can break a rule: the store stage checks membership and the room
//! again against the database before it stores anything.
//!
//! A change made through this node (logout, account deletion, role change,
//! member removal, room deletion) drops the entries it affects at once. The
//! account changes also travel to every node as user events (through the
//! broker, before the change is answered): each node drops that user's
//! entries and, for a while, refuses the revoked token or account before any
//! cached answer (see [`Caches::refuse`]). Other changes reach other nodes
//! within [`FRESH`]. Only answers that let a request through are cached;
//! refusals always ask the database again.

use std::{future::Future, hash::Hash, time::Duration};

use tokio::time::Instant;

use crate::error::ApiError;

/// How long an entry answers without the database.
pub const FRESH: Duration = Duration::from_secs(1);
/// How long an entry stays as the fallback while the database is down.
pub const KEEP: Duration = Duration::from_secs(60);
/// How long a read of a stale entry may take before the kept value answers:
/// a database that is gone often does not refuse, it just never answers.
pub const REFRESH_WAIT: Duration = Duration::from_millis(200);
/// After the kept value answered for a database that is down, how long it
/// answers alone before the database is tried again.
pub const RETRY_DOWN: Duration = Duration::from_secs(5);
/// Entries per cache; the least used go first.
const CAPACITY: u64 = 100_000;

/// One cache: values with the time they were read from the database.
pub struct Cached<K, V> {
    entries: moka::sync::Cache<K, Entry<V>>,
}

#[derive(Clone)]
struct Entry<V> {
    value: V,
    /// When the database last gave this value: it is kept until [`KEEP`] after.
    read_at: Instant,
    /// Until when the value answers without asking the database.
    fresh_until: Instant,
}

impl<K, V> Cached<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self {
            entries: moka::sync::Cache::builder().max_capacity(CAPACITY).build(),
        }
    }

    /// The fresh cached value, or what `fetch` reads now (and is cached). If
    /// the database is unavailable, or does not answer within
    /// [`REFRESH_WAIT`], a kept value answers instead, and goes on answering
    /// for [`RETRY_DOWN`] before the database is tried again.
    pub async fn get_or_fetch<F, Fut>(&self, key: K, fetch: F) -> Result<V, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, ApiError>>,
    {
        let kept = self
            .entries
            .get(&key)
            .filter(|entry| entry.read_at.elapsed() < KEEP);
        if let Some(entry) = &kept
            && Instant::now() < entry.fresh_until
        {
            return Ok(entry.value.clone());
        }
        let fetched = match &kept {
            Some(_) => match tokio::time::timeout(REFRESH_WAIT, fetch()).await {
                Ok(fetched) => fetched,
                Err(_) => return Ok(self.fall_back(key, kept)),
            },
            None => fetch().await,
        };
        match fetched {
            Ok(value) => {
                let now = Instant::now();
                let entry = Entry {
                    value: value.clone(),
                    read_at: now,
                    fresh_until: now + FRESH,
                };
                self.entries.insert(key, entry);
                Ok(value)
            }
            Err(err) if err.is_database_unavailable() && kept.is_some() => {
                Ok(self.fall_back(key, kept))
            }
            Err(err) => {
                self.entries.invalidate(&key);
                Err(err)
            }
        }
    }

    /// Answers with the kept entry, and spares the next callers for
    /// [`RETRY_DOWN`] the wait on a database that is not there.
    fn fall_back(&self, key: K, kept: Option<Entry<V>>) -> V {
        let mut entry = kept.expect("only called with a kept entry");
        entry.fresh_until = Instant::now() + RETRY_DOWN;
        let value = entry.value.clone();
        self.entries.insert(key, entry);
        value
    }

    pub fn invalidate(&self, key: &K) {
        self.entries.invalidate(key);
    }

    /// Drops the entries `doomed` picks (a walk over them all: for the rare
    /// change that concerns one user's entries only).
    pub fn forget_if(&self, doomed: impl Fn(&K, &V) -> bool) {
        for (key, entry) in &self.entries {
            if doomed(&key, &entry.value) {
                self.entries.invalidate(&*key);
            }
        }
    }

    pub fn clear(&self) {
        self.entries.invalidate_all();
    }
}

impl<K, V> Default for Cached<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

/// The caches the ingest path reads, one per question it asks.
pub struct Caches {
    /// Token id (`jti`) → the caller it authenticates.
    pub tokens: Cached<uuid::Uuid, crate::auth::AuthUser>,
    /// Room key as given (UUID or name) → the room.
    pub rooms: Cached<String, entity::room::Model>,
    /// (room, user) pairs known to be members.
    pub members: Cached<(uuid::Uuid, uuid::Uuid), ()>,
    /// Tokens and accounts that user events revoked: refused before any
    /// cached answer, so that a value read just before the event (or kept
    /// while the database is down) never lets one through.
    revoked: Revoked,
}

impl Default for Caches {
    fn default() -> Self {
        Self {
            tokens: Cached::new(),
            rooms: Cached::new(),
            members: Cached::new(),
            revoked: Revoked::new(),
        }
    }
}

/// What [`Caches::refuse`] checks: revocations for as long as a cached value
/// from before them could still answer.
struct Revoked {
    tokens: moka::sync::Cache<uuid::Uuid, ()>,
    users: moka::sync::Cache<uuid::Uuid, UserRevoked>,
}

#[derive(Clone, Copy)]
enum UserRevoked {
    Deleted,
    /// Tokens of a generation before this one, except `kept`.
    Before {
        generation: i32,
        kept: Option<uuid::Uuid>,
    },
}

impl Revoked {
    fn new() -> Self {
        // An entry read before the revocation answers for at most KEEP; a
        // read in flight at that moment finishes within REFRESH_WAIT or is
        // refused by the database itself.
        let ttl = KEEP * 2;
        Self {
            tokens: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build(),
            users: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build(),
        }
    }
}

impl Caches {
    /// A user's account changed (deleted, new role): forget every token.
    pub fn accounts_changed(&self) {
        self.tokens.clear();
        self.members.clear();
    }

    /// A room was deleted: forget rooms and memberships.
    pub fn room_deleted(&self) {
        self.rooms.clear();
        self.members.clear();
    }

    /// 401 if a user event revoked this token (or its account) lately,
    /// whatever a cache or a slow read says.
    pub fn refuse(&self, claims: &crate::auth::Claims) -> Result<(), ApiError> {
        if self.revoked.tokens.contains_key(&claims.jti) {
            return Err(ApiError::unauthorized(
                "token_revoked",
                "the token was logged out",
            ));
        }
        match self.revoked.users.get(&claims.sub) {
            Some(UserRevoked::Deleted) => Err(ApiError::unauthorized(
                "invalid_token",
                "the account no longer exists",
            )),
            Some(UserRevoked::Before { generation, kept })
                if claims.generation < generation && kept != Some(claims.jti) =>
            {
                Err(ApiError::unauthorized(
                    "token_revoked",
                    "the password was changed since this token was issued",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Applies a user event (from this node or another): revocations are
    /// remembered, and whatever is cached about the user is dropped; a
    /// room added or removed drops only the user's membership of it.
    pub fn apply(&self, event: &consumer::event::UserEvent) {
        use consumer::event::UserEvent;
        let user_id = event.user_id();
        match event {
            UserEvent::SessionsRevoked { jti: Some(jti), .. } => {
                self.revoked.tokens.insert(*jti, ());
            }
            UserEvent::SessionsRevoked {
                jti: None,
                generation,
                kept,
                ..
            } => {
                let generation = generation.unwrap_or(i32::MAX);
                self.revoked.users.insert(
                    user_id,
                    UserRevoked::Before {
                        generation,
                        kept: *kept,
                    },
                );
            }
            UserEvent::AccountDeleted { .. } => {
                self.revoked.users.insert(user_id, UserRevoked::Deleted);
                self.members
                    .forget_if(move |(_, member), _| *member == user_id);
            }
            UserEvent::RoleChanged { .. } => {}
            // A room change leaves the user's tokens as they were; only
            // their membership of that room is read again.
            UserEvent::RoomAdded { room, .. } => {
                self.members.invalidate(&(room.id, user_id));
                return;
            }
            UserEvent::RoomRemoved { room_id, .. } => {
                self.members.invalidate(&(*room_id, user_id));
                return;
            }
            // For the lists alone: nothing cached changes.
            UserEvent::RoomListed { .. } | UserEvent::RoomUnlisted { .. } => return,
        }
        self.tokens.forget_if(move |_, caller| caller.id == user_id);
    }

    /// Events may have been missed (the broker connection was lost): forget
    /// every token and membership, so each is read again.
    pub fn events_missed(&self) {
        self.accounts_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> ApiError {
        ApiError::unavailable(crate::error::DATABASE_UNAVAILABLE, "down", 1)
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_entries_answer_without_fetching() {
        let cache: Cached<u8, &str> = Cached::new();
        assert_eq!(
            cache.get_or_fetch(1, || async { Ok("a") }).await.unwrap(),
            "a"
        );
        let again = cache
            .get_or_fetch(1, || async { panic!("a fresh entry must not fetch") })
            .await;
        assert_eq!(again.unwrap(), "a");
    }

    #[tokio::test(start_paused = true)]
    async fn stale_entries_fetch_again_and_answer_only_while_the_database_is_down() {
        let cache: Cached<u8, &str> = Cached::new();
        cache.get_or_fetch(1, || async { Ok("old") }).await.unwrap();
        tokio::time::advance(FRESH + Duration::from_millis(1)).await;
        let read = cache.get_or_fetch(1, || async { Ok("new") }).await;
        assert_eq!(read.unwrap(), "new", "a stale entry is read again");

        tokio::time::advance(FRESH * 2).await;
        let down = cache.get_or_fetch(1, || async { Err(unavailable()) }).await;
        assert_eq!(
            down.unwrap(),
            "new",
            "the kept value answers while the database is down"
        );

        let missing = cache.get_or_fetch(2, || async { Err(unavailable()) }).await;
        assert_eq!(
            missing.unwrap_err().code,
            crate::error::DATABASE_UNAVAILABLE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_database_that_does_not_answer_is_not_waited_for() {
        let cache: Cached<u8, &str> = Cached::new();
        cache
            .get_or_fetch(1, || async { Ok("kept") })
            .await
            .unwrap();
        tokio::time::advance(FRESH * 2).await;
        let started = Instant::now();
        let hung = cache
            .get_or_fetch(1, std::future::pending::<Result<&str, ApiError>>)
            .await;
        assert_eq!(hung.unwrap(), "kept");
        assert!(started.elapsed() <= REFRESH_WAIT + Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_cached_and_drops_the_entry() {
        let cache: Cached<u8, &str> = Cached::new();
        cache
            .get_or_fetch(1, || async { Ok("member") })
            .await
            .unwrap();
        tokio::time::advance(FRESH * 2).await;
        let refused = cache
            .get_or_fetch(1, || async {
                Err(ApiError::forbidden("not_a_member", "no"))
            })
            .await;
        assert_eq!(refused.unwrap_err().code, "not_a_member");
        let down = cache.get_or_fetch(1, || async { Err(unavailable()) }).await;
        assert!(down.is_err(), "a refused entry is no fallback");
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_forces_a_fetch() {
        let cache: Cached<u8, &str> = Cached::new();
        cache.get_or_fetch(1, || async { Ok("a") }).await.unwrap();
        cache.invalidate(&1);
        assert_eq!(
            cache.get_or_fetch(1, || async { Ok("b") }).await.unwrap(),
            "b"
        );
        cache.clear();
        assert_eq!(
            cache.get_or_fetch(1, || async { Ok("c") }).await.unwrap(),
            "c"
        );
    }
}
