//! The [`Hub`]: this node's sockets, by room.
//!
//! It tells the broker which rooms it holds ([`Hub::room_interest`]), so that
//! only their events come to this node; a new socket waits
//! ([`Subscription::bound`]) until its room's events do.
//!
//! Each socket has a bounded queue. Handing an event to a room never waits: a
//! socket whose queue is full is told to close (1013, `slow_consumer`) and
//! dropped, so one slow reader never stalls the room.

pub mod user_sockets;

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::{
    broker::Interest,
    event::{EventHeader, EventKind},
};

/// Events a socket may fall behind by before it is closed as a slow consumer.
pub const SOCKET_QUEUE: usize = 1024;
/// Longest a new socket waits for its room's events to come to this node
/// (while RabbitMQ is down, a join is answered at once: the room is bound
/// when it is back). Past it the room could not be bound, and the socket is
/// told to try again later.
const BIND_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the hub closes a socket: a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const SLOW_CONSUMER: Self = Self {
        code: 1013,
        reason: "slow_consumer",
    };
    pub const REMOVED: Self = Self {
        code: 4403,
        reason: "removed from room",
    };
    pub const ROOM_DELETED: Self = Self {
        code: 4404,
        reason: "room deleted",
    };
}

/// One event for one socket: the JSON text as published, and its `seq` if it
/// is a new message (the socket drops a `seq` it already has).
#[derive(Debug, Clone)]
pub struct Outbound {
    pub seq: Option<i64>,
    pub frame: Bytes,
}

struct Member {
    user_id: Uuid,
    tx: mpsc::Sender<Outbound>,
    close: watch::Sender<Option<CloseReason>>,
}

/// A socket's place in the hub; leaving it (drop) unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    room_id: Uuid,
    id: u64,
    pub events: mpsc::Receiver<Outbound>,
    /// Becomes `Some` when the hub wants the socket closed.
    pub close: watch::Receiver<Option<CloseReason>>,
    /// What closes it: also registered with the user's sockets.
    closer: watch::Sender<Option<CloseReason>>,
    /// Answered once the room's events come to this node.
    bound: Option<oneshot::Receiver<()>>,
}

impl Subscription {
    /// Returns once the room's events come to this node: what is published
    /// after this reaches the socket. `false` when they do not within
    /// [`BIND_WAIT`] (the bind failed or is stuck), or the broker side has
    /// gone: the socket would miss its room's events.
    pub async fn bound(&mut self) -> bool {
        match self.bound.take() {
            Some(bound) => matches!(tokio::time::timeout(BIND_WAIT, bound).await, Ok(Ok(()))),
            None => true,
        }
    }

    /// Its close signal, for [`Hub::register_socket`]: a user event then
    /// closes this room socket too.
    pub fn closer(&self) -> watch::Sender<Option<CloseReason>> {
        self.closer.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.room_id, self.id);
    }
}

#[derive(Default)]
pub struct Hub {
    rooms: RwLock<HashMap<Uuid, HashMap<u64, Member>>>,
    /// Where changes of the rooms held go, sent under the `rooms` lock so
    /// that they arrive in the order they happened.
    interest: std::sync::Mutex<Option<mpsc::UnboundedSender<Interest>>>,
    next_id: AtomicU64,
    /// Every socket by user, for user events (see `user_sockets`).
    pub(crate) user_sockets: user_sockets::UserSockets,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The rooms this hub holds sockets in, as they change, for
    /// [`Rooms::Joined`](crate::broker::Rooms::Joined): a join for each room
    /// held now, then every change. A new call takes over from the last.
    pub fn room_interest(&self) -> mpsc::UnboundedReceiver<Interest> {
        let (tx, rx) = mpsc::unbounded_channel();
        let rooms = self.rooms.write().expect("hub lock");
        for room_id in rooms.keys() {
            let (bound, _) = oneshot::channel();
            let _ = tx.send(Interest::Join {
                room_id: *room_id,
                bound,
            });
        }
        *self.interest.lock().expect("hub interest") = Some(tx);
        rx
    }

    /// Sends a change of the rooms held; call it under the `rooms` lock.
    /// `false` when no one listens.
    fn tell(&self, change: Interest) -> bool {
        match &*self.interest.lock().expect("hub interest") {
            Some(interest) => interest.send(change).is_ok(),
            None => false,
        }
    }

    /// Registers a socket of `user_id` in `room_id`.
    pub fn subscribe(self: &Arc<Self>, room_id: Uuid, user_id: Uuid) -> Subscription {
        let (tx, events) = mpsc::channel(SOCKET_QUEUE);
        let (close_tx, close) = watch::channel(None);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut rooms = self.rooms.write().expect("hub lock");
        rooms.entry(room_id).or_default().insert(
            id,
            Member {
                user_id,
                tx,
                close: close_tx.clone(),
            },
        );
        // Every socket asks, not only a room's first: a second socket must
        // wait too while the first one's bind is on its way.
        let (bound_tx, bound) = oneshot::channel();
        let join = Interest::Join {
            room_id,
            bound: bound_tx,
        };
        let bound = self.tell(join).then_some(bound);
        drop(rooms);
        Subscription {
            hub: self.clone(),
            room_id,
            id,
            events,
            close,
            closer: close_tx,
            bound,
        }
    }

    fn remove(&self, room_id: Uuid, id: u64) {
        let mut rooms = self.rooms.write().expect("hub lock");
        if let Some(members) = rooms.get_mut(&room_id) {
            members.remove(&id);
            if members.is_empty() {
                rooms.remove(&room_id);
                self.tell(Interest::Leave(room_id));
            }
        }
    }

    /// Hands what one `room.events` message carries to the room's sockets
    /// here: a single event (JSON, as published), or a room's batch of events
    /// ([`crate::event::room_batch`]), each in its turn, in the batch's order.
    pub fn dispatch(&self, frame: Bytes) {
        match crate::event::room_frames(&frame) {
            Some(events) => events
                .into_iter()
                .for_each(|event| self.dispatch_one(event)),
            None => tracing::warn!("unreadable batch of room events dropped"),
        }
    }

    /// Hands one room event to the room's sockets here.
    fn dispatch_one(&self, frame: Bytes) {
        let header: EventHeader = match serde_json::from_slice(&frame) {
            Ok(header) => header,
            Err(err) => {
                tracing::warn!(error = %err, "unreadable room event dropped");
                return;
            }
        };
        let (seq, close_all, removed) = match header.kind {
            EventKind::Message => (header.seq, None, None),
            EventKind::RoomDeleted => (None, Some(CloseReason::ROOM_DELETED), None),
            EventKind::MemberRemoved => (None, None, header.user_id),
            EventKind::MessageEdited
            | EventKind::MessageDeleted
            | EventKind::Presence
            | EventKind::Other => (None, None, None),
        };

        if let (Some(_), Some(created_at)) = (seq, header.created_at) {
            let latency = (chrono::Utc::now() - created_at)
                .to_std()
                .unwrap_or_default();
            metrics::histogram!(crate::metrics::DELIVERY_LATENCY).record(latency.as_secs_f64());
        }
        let rooms = self.rooms.read().expect("hub lock");
        let Some(members) = rooms.get(&header.room_id) else {
            return;
        };
        let mut delivered = 0;
        for member in members.values() {
            if let Some(reason) = close_all {
                member.close.send_replace(Some(reason));
                continue;
            }
            if removed == Some(member.user_id) {
                member.close.send_replace(Some(CloseReason::REMOVED));
                continue;
            }
            let sent = member.tx.try_send(Outbound {
                seq,
                frame: frame.clone(),
            });
            if sent.is_ok() && seq.is_some() {
                delivered += 1;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = sent {
                if member.close.borrow().is_none() {
                    metrics::counter!(crate::metrics::SLOW_CONSUMER_DISCONNECTS).increment(1);
                    tracing::info!(room = %header.room_id, user = %member.user_id, "closing slow consumer");
                }
                member.close.send_replace(Some(CloseReason::SLOW_CONSUMER));
            }
        }
        // Counted once per event, not per socket: each count looks the
        // counter up in the registry.
        if delivered > 0 {
            metrics::counter!(crate::metrics::MESSAGES_DELIVERED).increment(delivered);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: Uuid, seq: i64) -> Bytes {
        Bytes::from(format!(
            r#"{{"type":"message","room_id":"{room}","seq":{seq},"content":"x"}}"#
        ))
    }

    #[tokio::test]
    async fn routes_by_room_and_unsubscribes_on_drop() {
        let hub = Hub::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut in_a = hub.subscribe(a, Uuid::new_v4());
        let mut in_b = hub.subscribe(b, Uuid::new_v4());
        hub.dispatch(event(a, 1));
        assert_eq!(in_a.events.recv().await.unwrap().seq, Some(1));
        assert!(in_b.events.try_recv().is_err());
        drop(in_a);
        let rooms = hub.rooms.read().unwrap();
        assert!(!rooms.contains_key(&a), "an empty room is dropped");
        assert_eq!(rooms[&b].len(), 1);
    }

    /// The broker hears of the rooms held in order: a join per socket (each
    /// waits for its answer), a leave when a room's last socket goes, and on
    /// a new `room_interest` a join for each room held then.
    #[tokio::test]
    async fn rooms_held_are_told_in_order() {
        let hub = Hub::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let early = hub.subscribe(a, Uuid::new_v4());
        assert!(
            early.bound.is_none(),
            "no one listens yet: nothing to wait for"
        );
        let mut interest = hub.room_interest();
        let mut next = || match interest.try_recv().expect("a change") {
            Interest::Join { room_id, bound } => {
                let _ = bound.send(());
                format!("join {}", room_id == a)
            }
            Interest::Leave(room_id) => format!("leave {}", room_id == a),
        };
        assert_eq!(next(), "join true", "the room held before");
        let mut second = hub.subscribe(a, Uuid::new_v4());
        let in_b = hub.subscribe(b, Uuid::new_v4());
        assert_eq!(next(), "join true", "every socket asks");
        assert!(second.bound().await);
        assert_eq!(next(), "join false");
        drop(early);
        drop(in_b);
        assert_eq!(next(), "leave false", "only b is empty");
        drop(second);
        assert_eq!(next(), "leave true");
        assert!(interest.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_closes_only_that_socket() {
        let hub = Hub::new();
        let room = Uuid::new_v4();
        let slow = hub.subscribe(room, Uuid::new_v4());
        let mut fast = hub.subscribe(room, Uuid::new_v4());
        for seq in 1..=(SOCKET_QUEUE as i64 + 1) {
            hub.dispatch(event(room, seq));
            fast.events.recv().await.unwrap();
        }
        assert_eq!(*slow.close.borrow(), Some(CloseReason::SLOW_CONSUMER));
        assert_eq!(*fast.close.borrow(), None);
    }

    /// Every event the store stage and presence publish has its own kind, so
    /// the hub's routing and the wire names cannot drift apart.
    #[test]
    fn every_room_event_has_its_kind() {
        use crate::event::{MessageView, RoomEvent, SenderView};
        let room_id = Uuid::new_v4();
        let user = SenderView::new(Uuid::new_v4(), "ann", 0);
        let message = MessageView {
            id: Uuid::new_v4(),
            room_id,
            seq: 7,
            sender: Some(user.clone()),
            sender_deleted: false,
            content: Some("hi".into()),
            client_id: None,
            created_at: chrono::Utc::now(),
            edited_at: None,
            deleted: false,
        };
        let cases = [
            (RoomEvent::Message(message.clone()), EventKind::Message),
            (
                RoomEvent::MessageEdited(message.clone()),
                EventKind::MessageEdited,
            ),
            (
                RoomEvent::MessageDeleted(message),
                EventKind::MessageDeleted,
            ),
            (
                RoomEvent::Presence {
                    room_id,
                    joined: vec![user.clone()],
                    left: vec![user],
                },
                EventKind::Presence,
            ),
            (
                RoomEvent::MemberRemoved {
                    room_id,
                    user_id: Uuid::new_v4(),
                },
                EventKind::MemberRemoved,
            ),
            (RoomEvent::RoomDeleted { room_id }, EventKind::RoomDeleted),
        ];
        for (event, kind) in cases {
            let header: EventHeader = serde_json::from_slice(&event.to_bytes()).unwrap();
            assert_eq!((header.kind, header.room_id), (kind, room_id), "{event:?}");
        }
    }

    /// An edit carries its message's `seq`, but it is not a new message: a
    /// socket that already has that `seq` still gets it.
    #[tokio::test]
    async fn only_new_messages_carry_a_seq_to_the_socket() {
        let hub = Hub::new();
        let room = Uuid::new_v4();
        let mut sub = hub.subscribe(room, Uuid::new_v4());
        hub.dispatch(Bytes::from(format!(
            r#"{{"type":"message_edited","room_id":"{room}","seq":3}}"#
        )));
        hub.dispatch(Bytes::from(format!(
            r#"{{"type":"from_a_newer_node","room_id":"{room}","seq":4}}"#
        )));
        hub.dispatch(event(room, 5));
        let seqs: Vec<Option<i64>> = [
            sub.events.recv().await.unwrap(),
            sub.events.recv().await.unwrap(),
            sub.events.recv().await.unwrap(),
        ]
        .iter()
        .map(|o| o.seq)
        .collect();
        assert_eq!(seqs, [None, None, Some(5)]);
    }

    /// A room's batch reaches each socket as its events, one frame each, in
    /// order, with their seqs; a single event beside it still does.
    #[tokio::test]
    async fn a_batch_is_unpacked_in_order() {
        let hub = Hub::new();
        let room = Uuid::new_v4();
        let mut sub = hub.subscribe(room, Uuid::new_v4());
        let events: Vec<Bytes> = (1..=5).map(|seq| event(room, seq)).collect();
        hub.dispatch(Bytes::from(crate::event::room_batch(
            events.iter().map(|e| &e[..]),
        )));
        hub.dispatch(event(room, 6));
        for (seq, expected) in (1..=6).zip(events.iter().chain([&event(room, 6)])) {
            let got = sub.events.recv().await.unwrap();
            assert_eq!((got.seq, &got.frame), (Some(seq), expected));
        }
        hub.dispatch(Bytes::from_static(b"[{\"type\":"));
        assert!(sub.events.try_recv().is_err(), "a broken batch is dropped");
    }

    #[tokio::test]
    async fn removal_and_deletion_close_sockets() {
        let hub = Hub::new();
        let room = Uuid::new_v4();
        let (bob, carol) = (Uuid::new_v4(), Uuid::new_v4());
        let bobs = hub.subscribe(room, bob);
        let mut carols = hub.subscribe(room, carol);
        hub.dispatch(Bytes::from(format!(
            r#"{{"type":"member_removed","room_id":"{room}","user_id":"{bob}"}}"#
        )));
        assert_eq!(*bobs.close.borrow(), Some(CloseReason::REMOVED));
        assert!(
            carols.events.recv().await.is_some(),
            "others see the removal"
        );
        hub.dispatch(Bytes::from(format!(
            r#"{{"type":"room_deleted","room_id":"{room}"}}"#
        )));
        assert_eq!(*carols.close.borrow(), Some(CloseReason::ROOM_DELETED));
    }
}
