//! The hub's per-user registry: every socket of a user on this node, whatever
//! it serves (a room, the echo channel, a stream of the user's own), with the
//! token it was opened with.
//!
//! User events act on it ([`Hub::apply_user_event`]): they close the sockets
//! a change shuts out (4001), hand the events meant for the user's own
//! streams to them (their room list's changes), and
//! tell the rest of the node (its caches) through [`Hub::user_events`]. A
//! node that may have missed events checks every registered token again
//! ([`Hub::socket_owners`], [`Hub::close_token`]).
//!
//! To serve a new kind of socket: register it with [`Hub::register_socket`]
//! (close only) or [`Hub::register_stream`] (close, and its user's streamed
//! events as JSON), and end the socket when its `close` says so.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

use crate::{
    event::{Closes, UserEvent},
    hub::{CloseReason, Hub, Outbound, SOCKET_QUEUE},
};

/// User events the node's other listeners (its caches) may fall behind by.
const LISTENER_QUEUE: usize = 1024;

impl CloseReason {
    /// The token the socket was opened with stopped working (logout,
    /// password change, account deleted, rights lost).
    pub const TOKEN_REVOKED: Self = Self {
        code: 4001,
        reason: "token revoked",
    };
}

/// Who opened a socket, and with which token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOwner {
    pub user_id: Uuid,
    /// The token's `jti`.
    pub jti: Uuid,
    /// The token's generation (see [`UserEvent::SessionsRevoked`]).
    pub generation: i32,
}

struct Entry {
    owner: SocketOwner,
    close: watch::Sender<Option<CloseReason>>,
    /// Set for the user's own streams: where their user events go.
    events: Option<mpsc::Sender<Outbound>>,
}

/// The sockets of each user on this node.
pub struct UserSockets {
    users: RwLock<HashMap<Uuid, HashMap<u64, Entry>>>,
    next_id: AtomicU64,
    listeners: broadcast::Sender<UserEvent>,
}

impl Default for UserSockets {
    fn default() -> Self {
        Self {
            users: RwLock::default(),
            next_id: AtomicU64::new(0),
            listeners: broadcast::channel(LISTENER_QUEUE).0,
        }
    }
}

/// A socket's place in the registry; dropping it leaves.
pub struct UserSocket {
    hub: Arc<Hub>,
    user_id: Uuid,
    id: u64,
    /// Becomes `Some` when the socket must close.
    pub close: watch::Receiver<Option<CloseReason>>,
    /// The user's events, for a stream registered with [`Hub::register_stream`].
    pub events: Option<mpsc::Receiver<Outbound>>,
}

impl Drop for UserSocket {
    fn drop(&mut self) {
        let mut users = self.hub.user_sockets.users.write().expect("user lock");
        if let Some(sockets) = users.get_mut(&self.user_id) {
            sockets.remove(&self.id);
            if sockets.is_empty() {
                users.remove(&self.user_id);
            }
        }
    }
}

impl Hub {
    /// Registers a socket of `owner`. `close` is the socket's own close
    /// signal if it has one already (a room subscription's); otherwise the
    /// returned [`UserSocket::close`] is.
    pub fn register_socket(
        self: &Arc<Self>,
        owner: SocketOwner,
        close: Option<watch::Sender<Option<CloseReason>>>,
    ) -> UserSocket {
        self.register(owner, close, None)
    }

    /// Registers a stream of `owner`'s own: it closes like any socket, and
    /// receives the user's streamed events (their JSON) through
    /// [`UserSocket::events`].
    pub fn register_stream(self: &Arc<Self>, owner: SocketOwner) -> UserSocket {
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
        let mut socket = self.register(owner, None, Some(tx));
        socket.events = Some(rx);
        socket
    }

    fn register(
        self: &Arc<Self>,
        owner: SocketOwner,
        close: Option<watch::Sender<Option<CloseReason>>>,
        events: Option<mpsc::Sender<Outbound>>,
    ) -> UserSocket {
        let close = close.unwrap_or_else(|| watch::channel(None).0);
        let receiver = close.subscribe();
        let registry = &self.user_sockets;
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        registry
            .users
            .write()
            .expect("user lock")
            .entry(owner.user_id)
            .or_default()
            .insert(
                id,
                Entry {
                    owner,
                    close,
                    events,
                },
            );
        UserSocket {
            hub: self.clone(),
            user_id: owner.user_id,
            id,
            close: receiver,
            events: None,
        }
    }

    /// Open sockets of `user_id` on this node.
    pub fn sockets_of(&self, user_id: Uuid) -> usize {
        self.user_sockets
            .users
            .read()
            .expect("user lock")
            .get(&user_id)
            .map_or(0, HashMap::len)
    }

    /// Who holds each registered socket (once per token).
    pub fn socket_owners(&self) -> Vec<SocketOwner> {
        let users = self.user_sockets.users.read().expect("user lock");
        let mut owners: Vec<SocketOwner> = users
            .values()
            .flat_map(|sockets| sockets.values().map(|e| e.owner))
            .collect();
        owners.sort_by_key(|o| o.jti);
        owners.dedup();
        owners
    }

    /// Closes the sockets of `user_id` opened with token `jti`.
    pub fn close_token(&self, user_id: Uuid, jti: Uuid, reason: CloseReason) {
        self.close_where(user_id, reason, |owner| owner.jti == jti);
    }

    /// Closes every socket of `user_id`.
    pub fn close_user(&self, user_id: Uuid, reason: CloseReason) {
        self.close_where(user_id, reason, |_| true);
    }

    fn close_where(
        &self,
        user_id: Uuid,
        reason: CloseReason,
        doomed: impl Fn(&SocketOwner) -> bool,
    ) {
        let users = self.user_sockets.users.read().expect("user lock");
        for entry in users.get(&user_id).into_iter().flat_map(HashMap::values) {
            if doomed(&entry.owner) {
                entry.close.send_replace(Some(reason));
            }
        }
    }

    /// Acts on a user event (`frame` is its JSON as published): closes the
    /// sockets it shuts out, hands it to the user's own streams if it is
    /// one of theirs ([`UserEvent::streamed`]), and tells
    /// the node's listeners. Applying one twice does no harm.
    pub fn apply_user_event(&self, event: &UserEvent, frame: Bytes) {
        let user_id = event.user_id();
        self.close_for(event);
        if event.streamed() {
            let users = self.user_sockets.users.read().expect("user lock");
            let audience: Box<dyn Iterator<Item = &HashMap<u64, Entry>>> = if event.for_everyone() {
                Box::new(users.values())
            } else {
                Box::new(users.get(&user_id).into_iter())
            };
            let streams = audience
                .flat_map(HashMap::values)
                .filter_map(|e| e.events.as_ref().map(|tx| (tx, &e.close)));
            for (tx, close) in streams {
                let sent = tx.try_send(Outbound {
                    seq: None,
                    frame: frame.clone(),
                });
                if let Err(mpsc::error::TrySendError::Full(_)) = sent {
                    close.send_replace(Some(CloseReason::SLOW_CONSUMER));
                }
            }
        }
        // No listener (a hub on its own, in tests) is fine.
        let _ = self.user_sockets.listeners.send(event.clone());
    }

    /// Closes the sockets `event` shuts out, and nothing else: what the node
    /// that makes a change does at once, before its own copy comes back from
    /// the broker (which then hands it to the user's streams, once).
    pub fn close_for(&self, event: &UserEvent) {
        let user_id = event.user_id();
        let reason = CloseReason::TOKEN_REVOKED;
        match event.closes() {
            Closes::None => {}
            Closes::Token(jti) => self.close_token(user_id, jti, reason),
            Closes::Older { generation, kept } => self.close_where(user_id, reason, |owner| {
                owner.generation < generation && Some(owner.jti) != kept
            }),
            Closes::All => self.close_user(user_id, reason),
        }
    }

    /// Every user event this hub applies from now on. A listener that falls
    /// behind gets `Lagged` and must assume it missed any.
    pub fn user_events(&self) -> broadcast::Receiver<UserEvent> {
        self.user_sockets.listeners.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{RevokeReason, RoomRemovedReason};

    fn owner(user_id: Uuid, generation: i32) -> SocketOwner {
        SocketOwner {
            user_id,
            jti: Uuid::new_v4(),
            generation,
        }
    }

    #[tokio::test]
    async fn user_events_close_the_sockets_they_shut_out() {
        let hub = Hub::new();
        let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let (a1, a2, b1) = (owner(ann, 0), owner(ann, 1), owner(bob, 0));
        let first = hub.register_socket(a1, None);
        let second = hub.register_socket(a2, None);
        let bobs = hub.register_socket(b1, None);
        let mut stream = hub.register_stream(owner(ann, 1));
        assert_eq!(hub.sockets_of(ann), 3);
        let mut heard = hub.user_events();

        let logout = UserEvent::SessionsRevoked {
            user_id: ann,
            jti: Some(a1.jti),
            generation: None,
            kept: None,
            reason: RevokeReason::Logout,
        };
        hub.apply_user_event(&logout, Bytes::from(logout.to_bytes()));
        assert_eq!(*first.close.borrow(), Some(CloseReason::TOKEN_REVOKED));
        assert_eq!(*second.close.borrow(), None);
        assert_eq!(heard.recv().await.unwrap(), logout);
        let events = stream.events.as_mut().unwrap();
        assert!(events.try_recv().is_err(), "a revocation is not streamed");

        let removed = UserEvent::RoomRemoved {
            user_id: ann,
            room_id: Uuid::new_v4(),
            reason: RoomRemovedReason::Removed,
        };
        hub.apply_user_event(&removed, Bytes::from(removed.to_bytes()));
        let frame = events.recv().await.unwrap();
        assert_eq!(UserEvent::from_frame(&frame.frame), Some(removed));
        assert_eq!(*stream.close.borrow(), None, "a room change closes nothing");

        // A public room's coming reaches every user's stream, not only its creator's.
        let mut bobs_stream = hub.register_stream(owner(bob, 0));
        let listed = UserEvent::RoomUnlisted {
            user_id: ann,
            room_id: Uuid::new_v4(),
        };
        hub.apply_user_event(&listed, Bytes::from(listed.to_bytes()));
        let frame = bobs_stream.events.as_mut().unwrap().recv().await.unwrap();
        assert_eq!(UserEvent::from_frame(&frame.frame), Some(listed.clone()));
        let frame = events.recv().await.unwrap();
        assert_eq!(UserEvent::from_frame(&frame.frame), Some(listed));
        drop(bobs_stream);

        let changed = UserEvent::SessionsRevoked {
            user_id: ann,
            jti: None,
            generation: Some(2),
            kept: Some(a2.jti),
            reason: RevokeReason::PasswordChanged,
        };
        hub.apply_user_event(&changed, Bytes::from(changed.to_bytes()));
        assert_eq!(*second.close.borrow(), None, "the kept token stays");
        assert_eq!(*stream.close.borrow(), Some(CloseReason::TOKEN_REVOKED));

        let deleted = UserEvent::AccountDeleted { user_id: ann };
        hub.apply_user_event(&deleted, Bytes::from(deleted.to_bytes()));
        assert_eq!(*second.close.borrow(), Some(CloseReason::TOKEN_REVOKED));
        assert_eq!(*bobs.close.borrow(), None, "others' sockets stay");

        drop((first, second, stream));
        assert_eq!(hub.sockets_of(ann), 0);
        assert_eq!(hub.socket_owners(), vec![b1]);
    }
}
