//! The frames a room socket sends that are its own, not room events:
//! `welcome`, a replayed `message`, `ack`, `error` and `pong` (DESIGN.md §5);
//! and the user socket's `welcome`.
//! Room events (`message`, `presence`, …) are
//! [`RoomEvent`](consumer::event::RoomEvent)s, serialised once by whoever
//! publishes them and sent to every socket as they are.
//!
//! Every frame is a JSON object whose first member is `type`, so a client
//! (or a person reading a capture) learns what a frame is from its first bytes.

use consumer::event::{MessageView, SenderView};
use entity::room::RoomKind;
use serde::Serialize;
use uuid::Uuid;

/// A frame of the socket's own, serialised with its `type` first.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The first frame: where the socket is and who is here.
    Welcome {
        room: RoomView<'a>,
        user: &'a SenderView,
        /// The users counted in the room on this node, and the socket's own.
        online: &'a [SenderView],
    },
    /// A message from history or `since`, oldest first, with `replay: true`.
    Message(Replayed<'a>),
    /// A publish over the socket was accepted (the broker confirmed it).
    Ack {
        client_id: Option<&'a str>,
        id: Uuid,
    },
    /// A frame the server refused; the socket stays open.
    Error {
        code: &'a str,
        detail: &'a str,
        client_id: Option<&'a str>,
        /// With `rate_limited`: how long to wait before sending this frame again.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The answer to a `ping` frame.
    Pong,
}

/// The first frame of the user's own socket (`GET /ws`). Its other frames
/// are user events ([`UserEvent`](consumer::event::UserEvent): `room_added`,
/// `room_removed`) as published, and `pong` and `error` as on a room socket.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UserFrame<'a> {
    /// Who the socket is for.
    Welcome { user: &'a SenderView },
}

impl UserFrame<'_> {
    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("user frames always serialise")
    }
}

/// The room, as `welcome` shows it.
#[derive(Debug, Serialize)]
pub struct RoomView<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub kind: RoomKind,
}

/// A stored message sent again: its fields, then `replay: true`.
#[derive(Debug, Serialize)]
pub struct Replayed<'a> {
    #[serde(flatten)]
    pub message: &'a MessageView,
    pub replay: bool,
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }

    /// An `error` frame without a wait.
    pub fn error<'a>(
        code: &'a str,
        detail: &'a str,
        client_id: Option<&'a str>,
    ) -> ServerFrame<'a> {
        ServerFrame::Error {
            code,
            detail,
            client_id,
            retry_after_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn user() -> SenderView {
        SenderView::new(Uuid::nil(), "ann", 0)
    }

    #[test]
    fn type_comes_first_and_the_members_are_as_documented() {
        let ann = user();
        let message = MessageView {
            id: Uuid::nil(),
            room_id: Uuid::nil(),
            seq: 1,
            sender: Some(ann.clone()),
            sender_deleted: false,
            content: Some("hi".into()),
            client_id: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            edited_at: None,
            deleted: false,
        };
        let online = [ann.clone()];
        let frames = [
            (
                ServerFrame::Welcome {
                    room: RoomView {
                        id: Uuid::nil(),
                        name: "lobby",
                        kind: RoomKind::Public,
                    },
                    user: &ann,
                    online: &online,
                },
                json!({"type": "welcome", "room": {"id": Uuid::nil(), "name": "lobby", "kind": "public"},
                       "user": ann, "online": [ann]}),
            ),
            (
                ServerFrame::Message(Replayed {
                    message: &message,
                    replay: true,
                }),
                {
                    let mut v = serde_json::to_value(&message).unwrap();
                    v["type"] = json!("message");
                    v["replay"] = json!(true);
                    v
                },
            ),
            (
                ServerFrame::Ack {
                    client_id: Some("c1"),
                    id: Uuid::nil(),
                },
                json!({"type": "ack", "client_id": "c1", "id": Uuid::nil()}),
            ),
            (
                ServerFrame::error("malformed_json", "bad", None),
                json!({"type": "error", "code": "malformed_json", "detail": "bad", "client_id": null}),
            ),
            (
                ServerFrame::Error {
                    code: "rate_limited",
                    detail: "slow down",
                    client_id: Some("c2"),
                    retry_after_ms: Some(50),
                },
                json!({"type": "error", "code": "rate_limited", "detail": "slow down",
                       "client_id": "c2", "retry_after_ms": 50}),
            ),
            (ServerFrame::Pong, json!({"type": "pong"})),
        ];
        let welcome = UserFrame::Welcome { user: &ann }.to_text();
        assert!(welcome.starts_with(r#"{"type":"welcome""#), "{welcome}");
        assert_eq!(
            serde_json::from_str::<Value>(&welcome).unwrap(),
            json!({"type": "welcome", "user": ann})
        );
        for (frame, expected) in frames {
            let text = frame.to_text();
            let kind = expected["type"].as_str().unwrap();
            assert!(text.starts_with(&format!(r#"{{"type":"{kind}""#)), "{text}");
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), expected);
        }
    }
}
