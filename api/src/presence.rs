//! Presence: who is in each room on this node, and telling the room when
//! that changes (`presence` frames, DESIGN.md §5).
//!
//! A socket counts once it has stayed open for `PRESENCE_DELAY` (1 s by
//! default): a client that connects and drops at once — a reconnect loop, a
//! flapping network, a connect flood — costs the room's other users nothing.
//! A user is present in a room on this node while they have a counted socket
//! there, so a user with two tabs is one user to the room.
//!
//! Changes are coalesced: every [`INTERVAL`], one task compares each changed
//! room with what this node last told it and publishes one `presence` frame
//! per room (`joined` and `left` since the last one). A user who comes and
//! goes within one interval, or a socket churning, is not announced at all;
//! a thousand arrivals are one frame.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use consumer::{
    Broker,
    event::{RoomEvent, SenderView},
};
use tokio::{sync::Notify, task::JoinHandle};
use uuid::Uuid;

/// How often a room may get a `presence` frame from this node, at most.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// Room events sent to the broker in one batch, at most.
const BATCH: usize = 256;
/// How long shutdown waits for the last announcements to be published.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// This node's counted sockets, by room and user.
pub struct Presence {
    inner: Mutex<Inner>,
    /// Tells the publishing task to publish what is left and stop.
    closing: Notify,
    publisher: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<Uuid, Room>,
    /// Rooms whose users changed since the last `presence` frame.
    changed: HashSet<Uuid>,
    /// Set once shutdown has published the last changes.
    closed: bool,
}

#[derive(Default)]
struct Room {
    here: HashMap<Uuid, Here>,
    /// The users this node last told the room about.
    announced: HashMap<Uuid, SenderView>,
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
    /// Starts the task that publishes the `presence` frames to `broker`.
    pub fn start(broker: Arc<dyn Broker>) -> Arc<Self> {
        let presence = Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            closing: Notify::new(),
            publisher: Mutex::new(None),
        });
        let task = tokio::spawn(publish(presence.clone(), broker));
        *presence.publisher.lock().expect("presence lock") = Some(task);
        presence
    }

    /// Counts a socket of `user` in `room_id`.
    pub fn arrive(self: &Arc<Self>, room_id: Uuid, user: SenderView) -> Present {
        let user_id = user.id;
        let mut inner = self.inner.lock().expect("presence lock");
        let here = inner
            .rooms
            .entry(room_id)
            .or_default()
            .here
            .entry(user_id)
            .or_insert_with(|| Here { user, sockets: 0 });
        here.sockets += 1;
        if here.sockets == 1 {
            inner.changed.insert(room_id);
        }
        Present {
            presence: self.clone(),
            room_id,
            user_id,
        }
    }

    fn depart(&self, room_id: Uuid, user_id: Uuid) {
        let mut inner = self.inner.lock().expect("presence lock");
        let Some(room) = inner.rooms.get_mut(&room_id) else {
            return;
        };
        let Some(here) = room.here.get_mut(&user_id) else {
            return;
        };
        here.sockets -= 1;
        if here.sockets == 0 {
            room.here.remove(&user_id);
            inner.changed.insert(room_id);
        }
    }

    /// The users present in `room_id` on this node, by name.
    pub fn online(&self, room_id: Uuid) -> Vec<SenderView> {
        let inner = self.inner.lock().expect("presence lock");
        let mut users: Vec<SenderView> = inner
            .rooms
            .get(&room_id)
            .map(|room| room.here.values().map(|h| h.user.clone()).collect())
            .unwrap_or_default();
        users.sort_by(|a, b| a.username.cmp(&b.username));
        users
    }

    /// One `presence` event per room whose users changed since the last
    /// call, with who joined and who left in between (each by name); the
    /// rooms' state becomes what was announced.
    fn take_changes(&self) -> Vec<RoomEvent> {
        let mut inner = self.inner.lock().expect("presence lock");
        if inner.closed {
            inner.changed.clear();
            return Vec::new();
        }
        let Inner { rooms, changed, .. } = &mut *inner;
        let mut events = Vec::new();
        for room_id in changed.drain() {
            let Some(room) = rooms.get_mut(&room_id) else {
                continue;
            };
            let mut joined: Vec<SenderView> = room
                .here
                .iter()
                .filter(|(id, _)| !room.announced.contains_key(id))
                .map(|(_, h)| h.user.clone())
                .collect();
            let mut left: Vec<SenderView> = room
                .announced
                .iter()
                .filter(|(id, _)| !room.here.contains_key(id))
                .map(|(_, user)| user.clone())
                .collect();
            for user in &joined {
                room.announced.insert(user.id, user.clone());
            }
            for user in &left {
                room.announced.remove(&user.id);
            }
            if room.here.is_empty() {
                rooms.remove(&room_id);
            }
            if joined.is_empty() && left.is_empty() {
                continue;
            }
            joined.sort_by(|a, b| a.username.cmp(&b.username));
            left.sort_by(|a, b| a.username.cmp(&b.username));
            events.push(RoomEvent::Presence {
                room_id,
                joined,
                left,
            });
        }
        events
    }

    /// Publishes what changed since the last frame (the `left` of sockets
    /// closed by the shutdown), for at most [`FLUSH_WAIT`]; later changes are
    /// not announced.
    pub async fn close(&self) {
        self.closing.notify_one();
        let publisher = self.publisher.lock().expect("presence lock").take();
        if let Some(publisher) = publisher
            && tokio::time::timeout(FLUSH_WAIT, publisher).await.is_err()
        {
            tracing::warn!("presence announcements not all published before shutdown");
        }
        self.inner.lock().expect("presence lock").closed = true;
    }
}

/// Every [`INTERVAL`], publishes the rooms' changes, in batches of at most
/// [`BATCH`] events per broker round trip; on shutdown, once more, then stops.
/// A batch the broker refuses is logged and dropped: presence is a hint, and
/// a client's next `welcome` has the truth.
async fn publish(presence: Arc<Presence>, broker: Arc<dyn Broker>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = presence.closing.notified() => true,
        };
        let events = presence.take_changes();
        for batch in events.chunks(BATCH) {
            let events: Vec<(Uuid, Vec<u8>)> = batch
                .iter()
                .map(|event| (event.room_id(), event.to_bytes()))
                .collect();
            if let Err(err) = broker.publish_events(&events).await {
                tracing::warn!(error = %err, events = events.len(), "presence not published");
            }
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consumer::broker::memory::MemoryBroker;
    use futures_util::StreamExt;

    fn user(name: &str) -> SenderView {
        SenderView::new(Uuid::new_v4(), name, 0)
    }

    /// Each event as (room, joined names, left names).
    fn changes(presence: &Presence) -> Vec<(Uuid, Vec<String>, Vec<String>)> {
        let names = |users: &[SenderView]| users.iter().map(|u| u.username.clone()).collect();
        let mut events: Vec<_> = presence
            .take_changes()
            .into_iter()
            .map(|e| match e {
                RoomEvent::Presence {
                    room_id,
                    joined,
                    left,
                } => (room_id, names(&joined), names(&left)),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        events.sort();
        events
    }

    /// A presence whose publishing task never runs: the tests take the
    /// changes themselves.
    fn presence() -> Arc<Presence> {
        let presence = Presence::start(Arc::new(MemoryBroker::new()));
        if let Some(task) = presence.publisher.lock().unwrap().take() {
            task.abort();
        }
        presence
    }

    #[tokio::test]
    async fn a_user_with_two_sockets_joins_and_leaves_once() {
        let presence = presence();
        let room = Uuid::new_v4();
        let (ann, bo) = (user("ann"), user("bo"));

        let first = presence.arrive(room, ann.clone());
        let second = presence.arrive(room, ann.clone());
        let bos = presence.arrive(room, bo.clone());
        let names = |p: &Presence| {
            p.online(room)
                .into_iter()
                .map(|u| u.username)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&presence), ["ann", "bo"]);
        assert_eq!(
            changes(&presence),
            [(room, vec!["ann".into(), "bo".into()], vec![])]
        );
        drop(first);
        assert_eq!(names(&presence), ["ann", "bo"], "ann still has a socket");
        assert_eq!(changes(&presence), [], "nothing changed for the room");
        drop(second);
        drop(bos);
        assert!(presence.online(room).is_empty());
        assert_eq!(
            changes(&presence),
            [(room, vec![], vec!["ann".into(), "bo".into()])]
        );
        assert_eq!(changes(&presence), []);
    }

    /// Churn within one interval is one frame with the net change, or none.
    #[tokio::test]
    async fn churn_is_coalesced_into_one_frame_per_room() {
        let presence = presence();
        let room = Uuid::new_v4();
        let (ann, bo, cy) = (user("ann"), user("bo"), user("cy"));
        let anns = presence.arrive(room, ann.clone());
        let bos = presence.arrive(room, bo.clone());
        changes(&presence);

        // Bo reconnects a hundred times, Cy comes and goes, Ann leaves and
        // a thousand sockets of new users arrive: one frame.
        for _ in 0..100 {
            drop(presence.arrive(room, bo.clone()));
            drop(presence.arrive(room, cy.clone()));
        }
        drop(anns);
        let crowd: Vec<Present> = (0..1000)
            .map(|i| presence.arrive(room, user(&format!("u{i:04}"))))
            .collect();
        let events = changes(&presence);
        assert_eq!(events.len(), 1, "one frame for the room");
        let (_, joined, left) = &events[0];
        assert_eq!((joined.len(), &left[..]), (1000, &["ann".to_owned()][..]));

        // Bo's socket leaves and another comes back within the interval: nothing.
        drop(bos);
        let _bos = presence.arrive(room, bo.clone());
        assert_eq!(changes(&presence), []);
        drop(crowd);
    }

    #[tokio::test]
    async fn rooms_are_counted_apart() {
        let presence = presence();
        let (here, there) = (Uuid::new_v4(), Uuid::new_v4());
        let ann = user("ann");
        let _a = presence.arrive(here, ann.clone());
        let b = presence.arrive(there, ann.clone());
        let mut expected = vec![
            (here, vec!["ann".to_owned()], vec![]),
            (there, vec!["ann".to_owned()], vec![]),
        ];
        expected.sort();
        assert_eq!(changes(&presence), expected);
        drop(b);
        assert_eq!(presence.online(here).len(), 1);
        assert!(presence.online(there).is_empty());
        assert_eq!(changes(&presence), [(there, vec![], vec!["ann".into()])]);
    }

    /// The publishing task sends one frame per interval and, on close, the
    /// last changes; after that nothing more.
    #[tokio::test]
    async fn the_task_publishes_and_close_flushes() {
        let broker = Arc::new(MemoryBroker::new());
        let mut events = broker.subscribe_events(consumer::broker::Rooms::All);
        let presence = Presence::start(broker.clone());
        let room = Uuid::new_v4();
        let ann = presence.arrive(room, user("ann"));
        let first = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap();
        let first: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(first["type"], "presence", "{first}");
        assert_eq!(first["joined"][0]["username"], "ann", "{first}");
        drop(ann);
        presence.close().await;
        let last = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap();
        let last: serde_json::Value = serde_json::from_slice(&last).unwrap();
        assert_eq!(last["left"][0]["username"], "ann", "{last}");
        let again = presence.arrive(room, user("bo"));
        drop(again); // after close: must neither panic nor block
        assert!(presence.take_changes().is_empty());
    }
}
