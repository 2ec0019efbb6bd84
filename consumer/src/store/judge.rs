//! Parsing and judging: what each message of a batch becomes, decided without
//! touching the database.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::{message, room};
use uuid::Uuid;

use super::Rejected;
use crate::{
    broker::QueuedMessage,
    event::{Envelope, Reject},
    rules::{self, ContentError, MAX_CLIENT_ID_BYTES},
    signing::EnvelopeKey,
};

/// A parsed message with the id and time it will be stored under.
#[derive(Debug, Clone)]
pub(super) struct Incoming {
    /// Its place in the batch.
    pub index: usize,
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub envelope: Envelope,
    /// The broker delivered it before: it may be stored already.
    pub redelivered: bool,
}

/// Parses a batch; what is not an envelope, or carries text no database
/// takes, is rejected here. An envelope whose signature `key` does not
/// verify loses its `sender_id`: it becomes a system message, as from the
/// console, whoever it claims to be from.
pub(super) fn parse(batch: &[QueuedMessage], key: &EnvelopeKey) -> (Vec<Incoming>, Vec<Rejected>) {
    let mut rejected = Vec::new();
    let mut incoming = Vec::with_capacity(batch.len());
    for (index, queued) in batch.iter().enumerate() {
        match serde_json::from_slice::<Envelope>(&queued.payload) {
            Ok(envelope) if has_nul(&envelope) => {
                // Databases refuse NUL in text; retrying would never succeed.
                rejected.push((index, Reject::InvalidText, Some("NUL character".to_owned())));
            }
            Ok(mut envelope) => {
                let signed = queued
                    .signature
                    .as_deref()
                    .is_some_and(|signature| key.verify(&queued.payload, signature));
                if !signed && envelope.sender_id.take().is_some() {
                    tracing::info!(
                        index,
                        "store stage: an unsigned envelope names a sender; stored as a system message"
                    );
                }
                incoming.push(Incoming {
                    index,
                    // Hand-published messages have no id or time: give them now,
                    // so that retries of this batch keep them.
                    id: envelope.id.unwrap_or_else(Uuid::now_v7),
                    created_at: envelope.created_at.unwrap_or_else(Utc::now),
                    envelope,
                    redelivered: queued.redelivered,
                })
            }
            Err(err) => rejected.push((index, Reject::Unparseable, Some(err.to_string()))),
        }
    }
    (incoming, rejected)
}

fn has_nul(envelope: &Envelope) -> bool {
    [
        Some(envelope.room_id.as_str()),
        Some(envelope.content.as_str()),
        envelope.client_id.as_deref(),
    ]
    .into_iter()
    .flatten()
    .any(|text| text.contains('\0'))
}

/// What the database says about a batch, loaded before judging it.
#[derive(Debug, Default)]
pub(super) struct Context {
    /// The batch's rooms by the key each message gave (a UUID or a name).
    pub rooms: HashMap<String, room::Model>,
    /// Messages of the batch that are already stored (a redelivery, a retry).
    pub existing: HashMap<Uuid, message::Model>,
    /// The usernames of the batch's senders that exist.
    pub names: HashMap<Uuid, String>,
    /// Their avatar versions, for the `avatar_url` of the events.
    pub avatars: HashMap<Uuid, i32>,
    /// `(room, user)` memberships of the senders in rooms that are not public.
    pub memberships: HashSet<(Uuid, Uuid)>,
}

/// What becomes of a message that breaks no rule.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict<'c> {
    /// Stored before: publish its event again, store nothing.
    Stored(&'c message::Model),
    /// A new row, its `seq` still to be allocated.
    Store(message::Model),
}

/// Why a message is refused, and a detail for the header.
pub(super) type Refusal = (Reject, Option<String>);

/// Decides one message's fate from the context alone. Every field is
/// checked against what the database holds, so that no insert fails for
/// one message's sake; content against `max_content` bytes (ingest's limit).
pub(super) fn judge<'c>(
    ctx: &'c Context,
    m: &Incoming,
    max_content: usize,
) -> Result<Verdict<'c>, Refusal> {
    if let Some(stored) = ctx.existing.get(&m.id) {
        return Ok(Verdict::Stored(stored));
    }
    let room = ctx
        .rooms
        .get(&m.envelope.room_id)
        .ok_or((Reject::UnknownRoom, None))?;
    let content = &m.envelope.content;
    rules::check_content(content, max_content).map_err(|err| match err {
        ContentError::Empty => (Reject::EmptyContent, None),
        ContentError::Nul => (Reject::InvalidText, None),
        ContentError::TooLarge(_) => (Reject::TooLarge, None),
    })?;
    if let Some(client_id) = &m.envelope.client_id
        && !rules::client_id_ok(client_id)
    {
        let detail = format!("client_id: must be 1 to {MAX_CLIENT_ID_BYTES} bytes");
        return Err((Reject::InvalidField, Some(detail)));
    }
    if !rules::created_at_ok(m.created_at) {
        let detail = "created_at: the year must be 1970 to 9999".to_owned();
        return Err((Reject::InvalidField, Some(detail)));
    }
    if let Some(sender) = m.envelope.sender_id {
        if !ctx.names.contains_key(&sender) {
            return Err((Reject::UnknownSender, None));
        }
        if room.kind != room::RoomKind::Public && !ctx.memberships.contains(&(room.id, sender)) {
            return Err((Reject::NotAMember, None));
        }
    }
    Ok(Verdict::Store(message::Model {
        id: m.id,
        room_id: room.id,
        seq: 0,
        sender_id: m.envelope.sender_id,
        content: content.clone(),
        client_id: m.envelope.client_id.clone(),
        created_at: m.created_at,
        edited_at: None,
        deleted_at: None,
        sender_deleted: false,
    }))
}
