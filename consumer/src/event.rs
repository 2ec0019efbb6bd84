//! Wire formats of the message path.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Name of the durable work queue that ingest publishes to.
pub const MESSAGES_QUEUE: &str = "messages";
/// With `MESSAGE_PARTITIONS` > 1: the consistent-hash exchange that spreads
/// the store stage's messages over the partition queues by room (routing
/// key: the room's id).
pub const PARTITIONS_EXCHANGE: &str = "messages.rooms";
/// Each partition queue's weight on the consistent-hash ring (its binding key).
pub const PARTITION_WEIGHT: &str = "20";

/// The partition queue `messages.<partition>`.
pub fn partition_queue(partition: u16) -> String {
    format!("{MESSAGES_QUEUE}.{partition}")
}
/// Where messages that break a rule go, with the reason in a header.
pub const DEAD_LETTER_QUEUE: &str = "messages.dlq";
/// Topic exchange of room events (routing key `room.<room_id>`) and user
/// events (routing key `user.<user_id>`); every node's event queue gets both.
pub const EVENTS_EXCHANGE: &str = "room.events";
/// Header that carries a dead-letter reason.
pub const REASON_HEADER: &str = "x-roomcast-reason";

/// Why a message goes to `messages.dlq`: the `reason` label of
/// `roomcast_messages_dead_lettered_total`, and the start of the
/// [`REASON_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not JSON, or not an envelope.
    Unparseable,
    /// Text the databases refuse (NUL).
    InvalidText,
    /// No room with that id (or, from the console, that name).
    UnknownRoom,
    /// Content with nothing but whitespace.
    EmptyContent,
    /// Content over the store stage's limit.
    TooLarge,
    /// The sender is not a user (any more).
    UnknownSender,
    /// The sender may not post in that room (any more).
    NotAMember,
    /// A field out of what the database holds (a `client_id` too long, a
    /// `created_at` out of range); the header names it.
    InvalidField,
    /// The database refused it for a reason no check foresaw; found by
    /// splitting the batch it failed in. The header has the error.
    Refused,
}

impl Reject {
    /// Every reason, so that metrics can start each at zero.
    pub const ALL: [Reject; 9] = [
        Reject::Unparseable,
        Reject::InvalidText,
        Reject::UnknownRoom,
        Reject::EmptyContent,
        Reject::TooLarge,
        Reject::UnknownSender,
        Reject::NotAMember,
        Reject::InvalidField,
        Reject::Refused,
    ];

    /// The metric label and header prefix.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Unparseable => "unparseable",
            Reject::InvalidText => "invalid_text",
            Reject::UnknownRoom => "unknown_room",
            Reject::EmptyContent => "empty_content",
            Reject::TooLarge => "too_large",
            Reject::UnknownSender => "unknown_sender",
            Reject::NotAMember => "not_a_member",
            Reject::InvalidField => "invalid_field",
            Reject::Refused => "refused_by_database",
        }
    }
}

/// Namespace of client-id message ids: id = UUIDv5(NS, sender ‖ client_id).
pub const CLIENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f0b_3c1e_9a55_4d8e_b1f2_7a6c_2e9d_4b10);

/// A message on its way to the store stage, as published to `messages`.
///
/// Ingest fills every field. A message published by hand (for example from
/// the RabbitMQ management console) may give only `room_id` and `content`: it
/// becomes a system message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    #[serde(default)]
    pub id: Option<Uuid>,
    /// The room's UUID (or, from the console, its name).
    pub room_id: String,
    #[serde(default)]
    pub sender_id: Option<Uuid>,
    pub content: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

/// The largest `MAX_MESSAGE_BYTES` a node may be given. JSON may write a
/// character of content as six bytes (`\u0001`), so a message of this much
/// content is at most about 3 MiB on the broker, as an envelope and as its
/// event: under the 4 MiB `max_message_size` of the shipped
/// `rabbitmq/rabbitmq.conf`. More, and a message ingest accepted could be
/// refused by the broker (a lost link for every publish in flight) or, as
/// an event, stop the store stage.
pub const MAX_MESSAGE_BYTES_LIMIT: u32 = 512 * 1024;

/// The id a message gets: stable for a (sender, room, client_id) triple so
/// that a retried publish is stored and delivered once; time-ordered
/// otherwise. The room is part of it so that a client reusing a `client_id`
/// in another room gets a second message, not a silently dropped one.
pub fn message_id(sender: Option<Uuid>, room: Uuid, client_id: Option<&str>) -> Uuid {
    match client_id {
        Some(client_id) => {
            let mut name = sender.map(|s| s.as_bytes().to_vec()).unwrap_or_default();
            name.extend_from_slice(room.as_bytes());
            name.extend_from_slice(client_id.as_bytes());
            Uuid::new_v5(&CLIENT_ID_NAMESPACE, &name)
        }
        None => Uuid::now_v7(),
    }
}

/// Who sent a message, as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "0190d1a2-4b5c-7d3e-8f00-00000000a11c",
    "username": "alice",
    "avatar_url": "/users/0190d1a2-4b5c-7d3e-8f00-00000000a11c/avatar?v=0"
}))]
pub struct SenderView {
    pub id: Uuid,
    pub username: String,
    /// The avatar's versioned URL ([`avatar_url`]): it changes when the
    /// avatar does. Always sent; empty only in events from a node older
    /// than this field.
    #[serde(default)]
    #[schema(required = true)]
    pub avatar_url: String,
}

impl SenderView {
    /// A user as a sender, from their id, name and avatar version.
    pub fn new(id: Uuid, username: impl Into<String>, avatar_version: i32) -> Self {
        Self {
            id,
            username: username.into(),
            avatar_url: avatar_url(id, avatar_version),
        }
    }
}

/// Where a user's avatar is served, with the version of the image in the
/// query: a new upload makes a new URL, so each URL may be cached for good.
pub fn avatar_url(user_id: Uuid, avatar_version: i32) -> String {
    format!("/users/{user_id}/avatar?v={avatar_version}")
}

/// A room as a user sees it: the HTTP API's room, and the `room` of a
/// `room_added` frame on the user's own socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({
"id": "0190d1a2-6c00-7000-8000-000000000001", "name": "general", "kind": "group",
"owner_id": "0190d1a2-4b5c-7d3e-8f00-00000000a11c", "member_count": 2, "last_seq": 42,
"created_at": "2025-06-01T09:31:00Z"
}))]
pub struct RoomView {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = String, example = "public")]
    pub kind: entity::room::RoomKind,
    pub owner_id: Option<Uuid>,
    pub member_count: i32,
    pub last_seq: i64,
    pub created_at: DateTime<Utc>,
    /// Private rooms only: the other member, as the caller sees the room
    /// (absent while the caller is alone in it, and for other kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub peer: Option<SenderView>,
}

impl From<entity::room::Model> for RoomView {
    fn from(r: entity::room::Model) -> Self {
        Self {
            id: r.id,
            name: r.name,
            kind: r.kind,
            owner_id: r.owner_id,
            member_count: r.member_count,
            last_seq: r.last_seq,
            created_at: r.created_at,
            peer: None,
        }
    }
}

/// A message as clients see it (history and the `message` event).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "0190d1a3-1f00-7000-8000-00000000000a",
    "room_id": "0190d1a2-6c00-7000-8000-000000000001",
    "seq": 42,
    "sender": {
        "id": "0190d1a2-4b5c-7d3e-8f00-00000000a11c",
        "username": "alice",
        "avatar_url": "/users/0190d1a2-4b5c-7d3e-8f00-00000000a11c/avatar?v=0"
    },
    "sender_deleted": false,
    "content": "Hello, everyone!",
    "client_id": "web-5f2c-1",
    "created_at": "2025-06-01T09:33:00Z",
    "edited_at": null,
    "deleted": false
}))]
pub struct MessageView {
    pub id: Uuid,
    pub room_id: Uuid,
    pub seq: i64,
    /// `null` for system messages (published from the broker's console) and
    /// for messages whose author deleted their account; `sender_deleted` tells which.
    pub sender: Option<SenderView>,
    /// True when the author deleted their account; false otherwise. Always
    /// sent; absent only in events from a node older than this field.
    #[serde(default)]
    #[schema(required = true)]
    pub sender_deleted: bool,
    pub content: Option<String>,
    pub client_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted: bool,
}

impl MessageView {
    /// From a stored row; tombstones carry no content.
    pub fn from_model(m: &entity::message::Model, sender: Option<SenderView>) -> Self {
        let deleted = m.deleted_at.is_some();
        Self {
            id: m.id,
            room_id: m.room_id,
            seq: m.seq,
            sender,
            sender_deleted: m.sender_deleted,
            content: (!deleted).then(|| m.content.clone()),
            client_id: m.client_id.clone(),
            created_at: m.created_at,
            edited_at: m.edited_at,
            deleted,
        }
    }
}

/// Every event a room's sockets can receive, as sent on `room.events` and
/// then, unchanged, to the sockets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEvent {
    Message(MessageView),
    MessageEdited(MessageView),
    MessageDeleted(MessageView),
    /// Who came and who went in the room on one node since that node's
    /// last `presence` frame (at most one per room every few hundred ms).
    Presence {
        room_id: Uuid,
        joined: Vec<SenderView>,
        left: Vec<SenderView>,
    },
    /// The user's sockets in the room close with 4403.
    MemberRemoved {
        room_id: Uuid,
        user_id: Uuid,
    },
    /// Every socket in the room closes with 4404.
    RoomDeleted {
        room_id: Uuid,
    },
}

impl RoomEvent {
    pub fn room_id(&self) -> Uuid {
        match self {
            Self::Message(m) | Self::MessageEdited(m) | Self::MessageDeleted(m) => m.room_id,
            Self::Presence { room_id, .. }
            | Self::MemberRemoved { room_id, .. }
            | Self::RoomDeleted { room_id } => *room_id,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("room events always serialise")
    }
}

/// One `room.events` message carrying several events of one room: a JSON
/// array of the events as each serialises alone (`[{"type":"message",…},…]`),
/// in `seq` order. The store stage publishes one per room and batch (more
/// when they pass 512 KiB); a single event (an object) stays valid on the
/// wire, and the hub takes both.
pub fn room_batch<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![b'['];
    for event in events {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(event);
    }
    out.push(b']');
    out
}

/// The events a `room.events` frame carries, in order, each as its own bytes
/// (slices of `frame`, not copies): the elements of a [`room_batch`], or the
/// frame itself when it is a single event. `None` for an array that does not
/// read as one.
pub fn room_frames(frame: &bytes::Bytes) -> Option<Vec<bytes::Bytes>> {
    if frame.trim_ascii_start().first() != Some(&b'[') {
        return Some(vec![frame.clone()]);
    }
    let events: Vec<&serde_json::value::RawValue> = serde_json::from_slice(frame).ok()?;
    Some(
        events
            .into_iter()
            .map(|event| frame.slice_ref(event.get().as_bytes()))
            .collect(),
    )
}

/// What a room event is, as its `type` member says: what the hub routes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new message: it has a `seq`, and a socket takes each `seq` once.
    Message,
    MessageEdited,
    MessageDeleted,
    Presence,
    /// The user's sockets in the room close with 4403.
    MemberRemoved,
    /// Every socket in the room closes with 4404.
    RoomDeleted,
    /// A kind this node does not know (from a newer node): passed on as it is.
    #[serde(other)]
    Other,
}

/// The few fields the hub routes on, read without parsing the whole event.
#[derive(Debug, Deserialize)]
pub struct EventHeader {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub room_id: Uuid,
    #[serde(default)]
    pub seq: Option<i64>,
    #[serde(default)]
    pub user_id: Option<Uuid>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

/// Routing key of a room's events.
pub fn routing_key(room_id: Uuid) -> String {
    format!("room.{room_id}")
}

/// Routing key of a user's events.
pub fn user_routing_key(user_id: Uuid) -> String {
    format!("user.{user_id}")
}

/// Why a user's tokens stopped working, as [`UserEvent::SessionsRevoked`] says.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    Logout,
    /// `POST /auth/logout-all`: every sign-in of the user ends.
    LogoutEverywhere,
    PasswordChanged,
}

/// Something that happened to one user's account, sent on `room.events` with
/// routing key `user.<user_id>` so that every node acts on it at once: it
/// forgets what it cached about the user and closes the sockets the change
/// shuts out. Its JSON carries `"scope": "user"` beside `type`, so it is
/// never taken for a room event.
///
/// To add one: a variant here (with `user_id`), what it does to sockets in
/// [`UserEvent::closes`], and what it does to caches where the api applies
/// user events, and whether the user's own socket (`GET /ws`, a stream in
/// the hub's per-user registry) is sent it as its JSON
/// ([`UserEvent::streamed`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UserEvent {
    /// Tokens stopped working: the one with `jti` (a logout), or, with no
    /// `jti`, every token of a generation before `generation` except `kept`
    /// (a password change).
    SessionsRevoked {
        user_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jti: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generation: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept: Option<Uuid>,
        reason: RevokeReason,
    },
    /// The account is gone: every token of it stops working.
    AccountDeleted { user_id: Uuid },
    /// An admin changed the user's role; `demoted` when it lost rights.
    RoleChanged {
        user_id: Uuid,
        role: String,
        demoted: bool,
    },
    /// The user became a member of `room` (added by its owner or an admin,
    /// a private room opened with them, or they joined), seen as they see it.
    RoomAdded { user_id: Uuid, room: RoomView },
    /// The user is no longer a member of the room.
    RoomRemoved {
        user_id: Uuid,
        room_id: Uuid,
        reason: RoomRemovedReason,
    },
    /// A public room was created (by `user_id`): it is in everyone's list,
    /// so every user's own socket is sent it.
    RoomListed { user_id: Uuid, room: RoomView },
    /// A public room was deleted (by `user_id`): it leaves everyone's list.
    RoomUnlisted { user_id: Uuid, room_id: Uuid },
}

/// Why a room left a user's list, as [`UserEvent::RoomRemoved`] says.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RoomRemovedReason {
    /// Its owner or an admin removed the user.
    Removed,
    /// The user left it.
    Left,
    /// The room was deleted.
    Deleted,
}

/// Which sockets of a user a [`UserEvent`] closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closes {
    None,
    /// Those opened with this token.
    Token(Uuid),
    /// All, except those opened with `kept` and those whose token is of
    /// `generation` or later.
    Older {
        generation: i32,
        kept: Option<Uuid>,
    },
    All,
}

impl UserEvent {
    pub fn user_id(&self) -> Uuid {
        match self {
            Self::SessionsRevoked { user_id, .. }
            | Self::AccountDeleted { user_id }
            | Self::RoleChanged { user_id, .. }
            | Self::RoomAdded { user_id, .. }
            | Self::RoomRemoved { user_id, .. }
            | Self::RoomListed { user_id, .. }
            | Self::RoomUnlisted { user_id, .. } => *user_id,
        }
    }

    /// True for the events the user's own socket (`GET /ws`) is sent: what
    /// happened to their list of rooms. The others act on the server only.
    pub fn streamed(&self) -> bool {
        matches!(
            self,
            Self::RoomAdded { .. }
                | Self::RoomRemoved { .. }
                | Self::RoomListed { .. }
                | Self::RoomUnlisted { .. }
        )
    }

    /// True for the streamed events every user's own socket is sent, not only
    /// `user_id`'s: a public room's coming and going.
    pub fn for_everyone(&self) -> bool {
        matches!(self, Self::RoomListed { .. } | Self::RoomUnlisted { .. })
    }

    /// The sockets of the user that this event shuts out (close 4001).
    pub fn closes(&self) -> Closes {
        match self {
            Self::SessionsRevoked { jti: Some(jti), .. } => Closes::Token(*jti),
            Self::SessionsRevoked {
                jti: None,
                generation,
                kept,
                ..
            } => Closes::Older {
                generation: generation.unwrap_or(i32::MAX),
                kept: *kept,
            },
            Self::AccountDeleted { .. } => Closes::All,
            Self::RoleChanged { demoted: true, .. } => Closes::All,
            Self::RoleChanged { demoted: false, .. }
            | Self::RoomAdded { .. }
            | Self::RoomRemoved { .. }
            | Self::RoomListed { .. }
            | Self::RoomUnlisted { .. } => Closes::None,
        }
    }

    /// The JSON sent on `room.events`: the event, with `"scope": "user"`
    /// as its first member (so telling it from a room event reads no further).
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("user events always serialise");
        let mut out = Vec::with_capacity(USER_FRAME_PREFIX.len() + body.len());
        out.extend_from_slice(USER_FRAME_PREFIX);
        out.extend_from_slice(&body[1..]); // after its `{`
        out
    }

    /// True if `frame` is a user event (as [`UserEvent::to_bytes`] writes them).
    pub fn is_user_frame(frame: &[u8]) -> bool {
        frame.starts_with(USER_FRAME_PREFIX)
    }

    /// A user event from its JSON, or `None` if the frame is not one (a room event).
    pub fn from_frame(frame: &[u8]) -> Option<Self> {
        if !Self::is_user_frame(frame) {
            return None;
        }
        match serde_json::from_slice(frame) {
            Ok(event) => Some(event),
            Err(err) => {
                tracing::warn!(error = %err, "unreadable user event dropped");
                None
            }
        }
    }
}

/// How every user event's JSON starts: the mark that tells it from a room event.
const USER_FRAME_PREFIX: &[u8] = br#"{"scope":"user","#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest message, content JSON escapes six-fold from the longest
    /// sender name, fits the broker's limit in the shipped configuration, as
    /// an envelope and as its event.
    #[test]
    fn the_largest_message_fits_the_shipped_broker_limit() {
        let conf = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rabbitmq/rabbitmq.conf"
        ))
        .unwrap();
        let broker_max: usize = conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("max_message_size"))
            .and_then(|v| v.trim().trim_start_matches('=').trim().parse().ok())
            .expect("max_message_size in rabbitmq.conf");
        let content = "\u{1}".repeat(MAX_MESSAGE_BYTES_LIMIT as usize);
        let client_id = "\u{1}".repeat(64);
        let envelope = Envelope {
            id: Some(Uuid::now_v7()),
            room_id: Uuid::new_v4().to_string(),
            sender_id: Some(Uuid::new_v4()),
            content: content.clone(),
            client_id: Some(client_id.clone()),
            created_at: Some(Utc::now()),
        };
        let envelope = serde_json::to_vec(&envelope).unwrap();
        let event = RoomEvent::Message(MessageView {
            id: Uuid::now_v7(),
            room_id: Uuid::new_v4(),
            seq: i64::MAX,
            sender: Some(SenderView::new(Uuid::new_v4(), "u".repeat(32), i32::MAX)),
            sender_deleted: false,
            content: Some(content),
            client_id: Some(client_id),
            created_at: Utc::now(),
            edited_at: Some(Utc::now()),
            deleted: false,
        })
        .to_bytes();
        assert!(
            envelope.len() > 6 * MAX_MESSAGE_BYTES_LIMIT as usize,
            "escaped six-fold"
        );
        for (what, bytes) in [("envelope", envelope.len()), ("event", event.len())] {
            assert!(
                bytes < broker_max,
                "{what}: {bytes} bytes, the broker takes {broker_max}"
            );
        }
    }

    #[test]
    fn user_events_round_trip_and_are_told_from_room_events() {
        let user_id = Uuid::new_v4();
        let event = UserEvent::SessionsRevoked {
            user_id,
            jti: None,
            generation: Some(3),
            kept: Some(Uuid::nil()),
            reason: RevokeReason::PasswordChanged,
        };
        let bytes = event.to_bytes();
        assert_eq!(UserEvent::from_frame(&bytes), Some(event.clone()));
        assert_eq!(
            event.closes(),
            Closes::Older {
                generation: 3,
                kept: Some(Uuid::nil())
            }
        );
        let room = RoomEvent::RoomDeleted {
            room_id: Uuid::new_v4(),
        };
        assert_eq!(UserEvent::from_frame(&room.to_bytes()), None);
        assert!(!event.streamed(), "revocations act on the server only");

        let removed = UserEvent::RoomRemoved {
            user_id,
            room_id: Uuid::nil(),
            reason: RoomRemovedReason::Deleted,
        };
        let text = String::from_utf8(removed.to_bytes()).unwrap();
        assert!(
            text.starts_with(r#"{"scope":"user","type":"room_removed","#),
            "{text}"
        );
        assert_eq!(
            UserEvent::from_frame(text.as_bytes()),
            Some(removed.clone())
        );
        assert!(removed.streamed());
        assert_eq!(removed.closes(), Closes::None);
    }

    #[test]
    fn a_room_batch_splits_into_its_events_in_order() {
        let room_id = Uuid::new_v4();
        // The second holds brackets and commas inside strings and arrays.
        let events: Vec<Vec<u8>> = vec![
            RoomEvent::RoomDeleted { room_id }.to_bytes(),
            br#"{"type":"x","n":[1,{"a":"],["}]}"#.to_vec(),
        ];
        let frame = bytes::Bytes::from(room_batch(events.iter().map(Vec::as_slice)));
        let split = room_frames(&frame).expect("a batch reads");
        assert_eq!(split, events);
        // A single event is itself; a broken array is nothing.
        let single = bytes::Bytes::from(events[0].clone());
        assert_eq!(room_frames(&single), Some(vec![single.clone()]));
        assert_eq!(room_frames(&bytes::Bytes::from_static(b"[{}")), None);
        assert_eq!(room_batch([]), b"[]");
    }
}
