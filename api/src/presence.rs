//! Presence: who is in each room on this node, and telling the room when
//! that changes (`join` and `leave` frames, DESIGN.md §5).
//!
//! A socket counts once it has stayed open for `PRESENCE_DELAY` (1 s by
//! default): a client that connects and drops at once — a reconnect loop, a
//! flapping network, a connect flood — costs the room's other users nothing.
//! A user is announced (`join`) when their first counted socket in a room on
//! this node appears and `leave` when the last one goes, so a user with two
//! tabs is one user to the room.
//!
//! The announcements leave this node in the order the changes happened, from
//! one task that publishes whatever has queued up as one batch.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use consumer::{
    Broker,
    event::{RoomEvent, SenderView},
};
use tokio::{sync::mpsc, task::JoinHandle};
use uuid::Uuid;

/// Announcements sent to the broker in one batch, at most.
const BATCH: usize = 256;
/// How long shutdown waits for the last announcements to be published.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// This node's counted sockets, by room and user.
pub struct Presence {
    inner: Mutex<Inner>,
    publisher: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    rooms: HashMap<Uuid, HashMap<Uuid, Here>>,
    /// `None` once shutdown has flushed the queue.
    announce: Option<mpsc::UnboundedSender<RoomEvent>>,
}

struct Here {
    user: SenderView,
    sockets: usize,
}

/// A counted socket; dropping it takes the socket out again.
pub struct Present {
    presence: Arc<Presence>,
    room_id: Uuid,
    user_id: Uuid,
}

impl Drop for Present {
    fn drop(&mut self) {
        self.presence.depart(self.room_id, self.user_id);
    }
}

impl Presence {
    /// Starts the task that publishes the announcements to `broker`.
    pub fn start(broker: Arc<dyn Broker>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            inner: Mutex::new(Inner {
                rooms: HashMap::new(),
                announce: Some(tx),
            }),
            publisher: Mutex::new(Some(tokio::spawn(publish(broker, rx)))),
        })
    }

    /// Counts a socket of `user` in `room_id`; announces the user if it is
    /// their first one here.
    pub fn arrive(self: &Arc<Self>, room_id: Uuid, user: SenderView) -> Present {
        let user_id = user.id;
        let mut inner = self.inner.lock().expect("presence lock");
        let here = inner
            .rooms
            .entry(room_id)
            .or_default()
            .entry(user_id)
            .or_insert_with(|| Here {
                user: user.clone(),
                sockets: 0,
            });
        here.sockets += 1;
        if here.sockets == 1 {
            inner.send(RoomEvent::Join { room_id, user });
        }
        Present {
            presence: self.clone(),
            room_id,
            user_id,
        }
    }

    fn depart(&self, room_id: Uuid, user_id: Uuid) {
        let mut inner = self.inner.lock().expect("presence lock");
        let Some(users) = inner.rooms.get_mut(&room_id) else {
            return;
        };
        let Some(here) = users.get_mut(&user_id) else {
            return;
        };
        here.sockets -= 1;
        if here.sockets > 0 {
            return;
        }
        let user = users.remove(&user_id).expect("present").user;
        if users.is_empty() {
            inner.rooms.remove(&room_id);
        }
        inner.send(RoomEvent::Leave { room_id, user });
    }

    /// The users announced in `room_id` on this node, by name.
    pub fn online(&self, room_id: Uuid) -> Vec<SenderView> {
        let inner = self.inner.lock().expect("presence lock");
        let mut users: Vec<SenderView> = inner
            .rooms
            .get(&room_id)
            .map(|users| users.values().map(|h| h.user.clone()).collect())
            .unwrap_or_default();
        users.sort_by(|a, b| a.username.cmp(&b.username));
        users
    }

    /// Publishes what is still queued (the `leave`s of sockets closed by the
    /// shutdown), for at most [`FLUSH_WAIT`]; later changes are not announced.
    pub async fn close(&self) {
        self.inner.lock().expect("presence lock").announce = None;
        let publisher = self.publisher.lock().expect("presence lock").take();
        if let Some(publisher) = publisher
            && tokio::time::timeout(FLUSH_WAIT, publisher).await.is_err()
        {
            tracing::warn!("presence announcements not all published before shutdown");
        }
    }
}

impl Inner {
    /// Queued under the lock, so announcements keep the order of the changes.
    fn send(&self, event: RoomEvent) {
        if let Some(announce) = &self.announce {
            let _ = announce.send(event);
        }
    }
}

/// Publishes announcements in order, each batch as one broker round trip.
/// A batch the broker refuses is logged and dropped: presence is a hint, and
/// a client's next `welcome` has the truth.
async fn publish(broker: Arc<dyn Broker>, mut queue: mpsc::UnboundedReceiver<RoomEvent>) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let events: Vec<(Uuid, Vec<u8>)> = batch
            .drain(..)
            .map(|event| (event.room_id(), event.to_bytes()))
            .collect();
        if let Err(err) = broker.publish_events(&events).await {
            tracing::warn!(error = %err, events = events.len(), "presence not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consumer::broker::memory::MemoryBroker;

    fn user(name: &str) -> SenderView {
        SenderView::new(Uuid::new_v4(), name, 0)
    }

    fn kinds(events: &[RoomEvent]) -> Vec<(&'static str, String)> {
        events
            .iter()
            .map(|e| match e {
                RoomEvent::Join { user, .. } => ("join", user.username.clone()),
                RoomEvent::Leave { user, .. } => ("leave", user.username.clone()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// What the presence queue holds, without a broker in the way.
    fn queued(presence: &Presence) -> mpsc::UnboundedReceiver<RoomEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        presence.inner.lock().unwrap().announce = Some(tx);
        rx
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<RoomEvent>) -> Vec<RoomEvent> {
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        events
    }

    #[tokio::test]
    async fn a_user_with_two_sockets_is_one_join_and_one_leave() {
        let presence = Presence::start(Arc::new(MemoryBroker::new()));
        let mut rx = queued(&presence);
        let room = Uuid::new_v4();
        let (ann, bo) = (user("ann"), user("bo"));

        let first = presence.arrive(room, ann.clone());
        let second = presence.arrive(room, ann.clone());
        let bos = presence.arrive(room, bo.clone());
        assert_eq!(
            presence
                .online(room)
                .iter()
                .map(|u| &u.username[..])
                .collect::<Vec<_>>(),
            ["ann", "bo"]
        );
        drop(first);
        assert_eq!(presence.online(room).len(), 2, "ann still has a socket");
        drop(second);
        drop(bos);
        assert!(presence.online(room).is_empty());
        assert_eq!(
            kinds(&drain(&mut rx)),
            [
                ("join", "ann".to_owned()),
                ("join", "bo".to_owned()),
                ("leave", "ann".to_owned()),
                ("leave", "bo".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn rooms_are_counted_apart() {
        let presence = Presence::start(Arc::new(MemoryBroker::new()));
        let mut rx = queued(&presence);
        let (here, there) = (Uuid::new_v4(), Uuid::new_v4());
        let ann = user("ann");
        let _a = presence.arrive(here, ann.clone());
        let b = presence.arrive(there, ann.clone());
        drop(b);
        assert_eq!(presence.online(here).len(), 1);
        assert!(presence.online(there).is_empty());
        let events = drain(&mut rx);
        let rooms: Vec<Uuid> = events.iter().map(RoomEvent::room_id).collect();
        assert_eq!(rooms, [here, there, there]);
    }

    #[tokio::test]
    async fn after_close_nothing_more_is_announced() {
        let presence = Presence::start(Arc::new(MemoryBroker::new()));
        let room = Uuid::new_v4();
        let ann = presence.arrive(room, user("ann"));
        presence.close().await;
        drop(ann); // no sender left: must neither panic nor block
        assert!(presence.online(room).is_empty());
    }
}
