//! Who may read, post in, enter, join or manage a room, and edit or delete
//! a message in it: the one access policy, used by the HTTP routes, the
//! sockets and guest tokens alike.
//!
//! The rules are a pure function ([`rule`]) of the caller, the room and the
//! action, tested as a table below; membership is read only when the answer
//! depends on it. Ingest publishes only into a [`PostableRoom`], which only
//! [`can_post`] makes, so no path can publish a message it has not checked.
//! (The store stage checks the sender again against the database.)

use std::sync::atomic::{AtomicBool, Ordering};

use entity::{
    room::{self, RoomKind},
    user::{self, Role},
};
use uuid::Uuid;

use crate::{
    auth::AuthUser,
    error::{ApiError, Result},
    queries::{QueryError, rooms},
    state::AppState,
};

/// What a caller wants to do with a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See the room, its members and its history.
    Read,
    /// Publish a message (HTTP or socket).
    Post,
    /// Open a socket in it.
    Enter,
    /// Become a member over HTTP (`POST /rooms/{room}/join`).
    Join,
    /// Be let in by `POST /generate-token` (the caller is the guest account).
    GuestEntry,
    /// Delete it, add or remove members.
    Manage,
}

/// The caller, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub id: Uuid,
    pub role: Role,
    /// The one room a guest token is for.
    pub guest_room: Option<Uuid>,
}

impl Caller {
    fn is_guest(&self) -> bool {
        self.role == Role::Guest || self.guest_room.is_some()
    }
}

impl From<&AuthUser> for Caller {
    fn from(user: &AuthUser) -> Self {
        Self {
            id: user.id,
            role: user.role,
            guest_room: user.claims.room,
        }
    }
}

/// What the rules answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Allowed by taking a seat: the caller becomes a member (a private
    /// room's seats are two, so this can still fail as `room_full`).
    TakeSeat,
    Refuse(Refusal),
}

/// Why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotAMember,
    /// A guest token for another room.
    OtherRoom,
    NotOwner,
    InviteOnly,
    GuestNotAllowed,
}

/// A rule: a verdict, or one that depends on membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Always(Verdict),
    /// Members are allowed; anyone else gets this verdict.
    MemberOr(Verdict),
}

impl Rule {
    /// The verdict, once membership is known.
    pub fn verdict(self, member: bool) -> Verdict {
        match self {
            Rule::Always(verdict) => verdict,
            Rule::MemberOr(_) if member => Verdict::Allow,
            Rule::MemberOr(verdict) => verdict,
        }
    }
}

/// The policy. Public rooms are open to every registered user; group rooms
/// to their members (admins may read them and manage them); private rooms to
/// their two members, a newcomer taking a free seat on entering (not even an
/// admin reads one otherwise). A guest token narrows everything to its one
/// room and grants no seat there: a guest posts and enters only as a member.
/// The owner or an admin manages a room.
pub fn rule(caller: Caller, room: &room::Model, action: Action) -> Rule {
    use Refusal::*;
    use Rule::*;
    use Verdict::*;
    let guest = caller.is_guest();
    let other_room = caller.guest_room.is_some_and(|r| r != room.id);
    match action {
        Action::Manage if caller.role == Role::Admin || room.owner_id == Some(caller.id) => {
            Always(Allow)
        }
        Action::Manage => Always(Refuse(NotOwner)),
        Action::GuestEntry => match room.kind {
            RoomKind::Group => MemberOr(Refuse(InviteOnly)),
            RoomKind::Public | RoomKind::Private => Always(TakeSeat),
        },
        Action::Join if guest => Always(Refuse(GuestNotAllowed)),
        _ if other_room => Always(Refuse(OtherRoom)),
        Action::Join => match room.kind {
            RoomKind::Group => MemberOr(Refuse(InviteOnly)),
            RoomKind::Public | RoomKind::Private => Always(TakeSeat),
        },
        Action::Read => match room.kind {
            RoomKind::Public => Always(Allow),
            RoomKind::Group if caller.role == Role::Admin => Always(Allow),
            RoomKind::Group | RoomKind::Private => MemberOr(Refuse(NotAMember)),
        },
        Action::Post | Action::Enter if room.kind == RoomKind::Public && !guest => Always(Allow),
        Action::Enter if room.kind == RoomKind::Private => MemberOr(TakeSeat),
        Action::Post | Action::Enter => MemberOr(Refuse(NotAMember)),
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let (code, detail) = match refusal {
            Refusal::NotAMember => ("not_a_member", "you are not a member of this room"),
            Refusal::OtherRoom => ("not_a_member", "this guest token is for another room"),
            Refusal::NotOwner => ("not_owner", "only the room's owner or an admin can do this"),
            Refusal::InviteOnly => (
                "invite_only",
                "this room is invite-only; ask its owner to add you",
            ),
            Refusal::GuestNotAllowed => ("guest_not_allowed", "guest tokens cannot do this"),
        };
        ApiError::forbidden(code, detail)
    }
}

/// A room its sender may post in, as [`can_post`] found a moment ago. Only
/// this module makes one, and ingest publishes only into one.
#[derive(Debug, Clone, Copy)]
pub struct PostableRoom {
    room_id: Uuid,
    sender_id: Uuid,
}

impl PostableRoom {
    pub fn room_id(&self) -> Uuid {
        self.room_id
    }

    pub fn sender_id(&self) -> Uuid {
        self.sender_id
    }
}

/// Asks the database whether the rule needs it; `Allow` or `TakeSeat` as
/// `Ok`, a refusal as its error.
async fn decide(
    state: &AppState,
    caller: Caller,
    room: &room::Model,
    action: Action,
) -> Result<Verdict> {
    let verdict = match rule(caller, room, action) {
        Rule::Always(verdict) => verdict,
        rule @ Rule::MemberOr(_) => {
            rule.verdict(rooms::is_member(&state.db, room.id, caller.id).await?)
        }
    };
    match verdict {
        Verdict::Refuse(refusal) => Err(refusal.into()),
        verdict => Ok(verdict),
    }
}

/// May `caller` delete a message that `author` sent in `room`? Its author,
/// a moderator, an admin, or the room's owner. (It stays in history as a
/// tombstone.)
pub fn may_delete_message(caller: Caller, author: Option<Uuid>, room: &room::Model) -> bool {
    author == Some(caller.id)
        || matches!(caller.role, Role::Moderator | Role::Admin)
        || room.owner_id == Some(caller.id)
}

/// May `caller` edit a message that `author` sent? Only its author (and
/// only while they may post in its room: [`can_edit_message`]).
pub fn may_edit_message(caller: Caller, author: Option<Uuid>) -> bool {
    author == Some(caller.id)
}

/// May `user` edit a message that `author` sent in `room` now? Its author
/// (403 `not_author` otherwise), while [`can_post`] lets them post there:
/// not once removed from the room, nor with a guest token for another.
pub async fn can_edit_message(
    state: &AppState,
    user: &AuthUser,
    author: Option<Uuid>,
    room: &room::Model,
) -> Result<()> {
    if !may_edit_message(user.into(), author) {
        return Err(ApiError::forbidden(
            "not_author",
            "only the author can edit a message",
        ));
    }
    can_post(state, user, room).await.map(drop)
}

/// May `user` read `room` (its details, members, history)?
pub async fn can_read(state: &AppState, user: &AuthUser, room: &room::Model) -> Result<()> {
    decide(state, user.into(), room, Action::Read)
        .await
        .map(drop)
}

/// May `user` manage `room` (delete it, add and remove members)?
pub fn can_manage(user: &AuthUser, room: &room::Model) -> Result<()> {
    match rule(user.into(), room, Action::Manage) {
        Rule::Always(Verdict::Refuse(refusal)) => Err(refusal.into()),
        _ => Ok(()),
    }
}

/// May `user` post in `room` now? Asked for every message, on HTTP and on
/// sockets alike; membership comes from the ingest cache.
pub async fn can_post(
    state: &AppState,
    user: &AuthUser,
    room: &room::Model,
) -> Result<PostableRoom> {
    let caller = Caller::from(user);
    let allowed = PostableRoom {
        room_id: room.id,
        sender_id: user.id,
    };
    match rule(caller, room, Action::Post) {
        Rule::Always(Verdict::Refuse(refusal)) => Err(refusal.into()),
        Rule::Always(_) => Ok(allowed),
        rule @ Rule::MemberOr(_) => {
            state
                .caches
                .members
                .get_or_fetch((room.id, user.id), || async {
                    match rule.verdict(rooms::is_member(&state.db, room.id, user.id).await?) {
                        Verdict::Refuse(refusal) => Err(refusal.into()),
                        _ => Ok(()),
                    }
                })
                .await?;
            Ok(allowed)
        }
    }
}

/// The room `key` (UUID or name) names, from the ingest cache; 404 if none.
pub async fn room(state: &AppState, key: &str) -> Result<room::Model> {
    lookup(state, key)
        .await?
        .ok_or_else(|| ApiError::not_found("room"))
}

/// The room `key` names, from the ingest cache, or `None`.
async fn lookup(state: &AppState, key: &str) -> Result<Option<room::Model>> {
    let missing = AtomicBool::new(false);
    let found = state
        .caches
        .rooms
        .get_or_fetch(key.to_owned(), || async {
            rooms::find(&state.db, key).await?.ok_or_else(|| {
                missing.store(true, Ordering::Relaxed);
                ApiError::not_found("room")
            })
        })
        .await;
    match found {
        Ok(room) => Ok(Some(room)),
        Err(_) if missing.load(Ordering::Relaxed) => Ok(None),
        Err(err) => Err(err),
    }
}

/// The room `key` names; when there is none and `ROOMS_AUTO_CREATE` is on, a
/// new private room of that name owned by `creator` (whose is the seat),
/// within the creator's room-creation quota. A key that is not a valid room
/// name fails as `bad_name` says.
async fn find_or_create(
    state: &AppState,
    key: &str,
    creator: Option<Uuid>,
    bad_name: impl FnOnce(String) -> ApiError,
) -> Result<room::Model> {
    if let Some(room) = lookup(state, key).await? {
        return Ok(room);
    }
    let Some(creator) = creator.filter(|_| state.config.rooms_auto_create) else {
        return Err(ApiError::not_found("room"));
    };
    crate::domain::validate_room_name(key).map_err(|e| bad_name(e.to_string()))?;
    state.quotas.check_room_create(creator)?;
    match rooms::create(&state.db, key, RoomKind::Private, creator).await {
        Ok(room) => Ok(room),
        // Someone created it a moment ago: use theirs.
        Err(QueryError::RoomNameTaken) => Ok(rooms::get(&state.db, key).await?),
        Err(err) => Err(err.into()),
    }
}

/// Takes a seat for `user_id` in `room`; `full` is the answer when the
/// private room already has two members. A seat newly taken is announced
/// to the user's own sockets (`room_added`).
async fn take_seat(
    state: &AppState,
    room: &room::Model,
    user_id: Uuid,
    full: ApiError,
) -> Result<()> {
    if !pair_seat_open(state, room, user_id).await? {
        return Err(full);
    }
    match rooms::add_member(&state.db, room.id, user_id).await {
        Ok(rooms::Added::Added) => {
            crate::user_events::room_added(state, user_id, room.id).await;
            Ok(())
        }
        Ok(rooms::Added::AlreadyMember) => Ok(()),
        Err(QueryError::RoomFull) => Err(full),
        Err(err) => Err(err.into()),
    }
}

/// May `user_id` have a seat in `room` as far as its pair goes? A pair's
/// private room (named by [`crate::domain::pair_room_name`]) seats only that
/// pair: a seat one of them leaves, or frees by deleting their account, is
/// not a stranger's to take, nor is the history that comes with it. To
/// anyone else the room is full. Every other room: yes.
pub async fn pair_seat_open(state: &AppState, room: &room::Model, user_id: Uuid) -> Result<bool> {
    if room.kind != RoomKind::Private || !crate::domain::is_pair_room(&room.name) {
        return Ok(true);
    }
    let members = rooms::members(&state.db, room.id).await?;
    Ok(members.iter().any(|m| {
        m.user_id == user_id || crate::domain::is_pair_room_of(&room.name, m.user_id, user_id)
    }))
}

/// A socket's way in: resolves `key` (creating the room when allowed; never
/// for a guest) and lets `user` in, taking a free seat of a private room, or
/// says why not (403 `room_full` for a full one). Membership is always read
/// from the database here.
pub async fn enter(state: &AppState, user: &AuthUser, key: &str) -> Result<room::Model> {
    let creator = user.claims.room.is_none().then_some(user.id);
    let room = find_or_create(state, key, creator, |_| ApiError::not_found("room")).await?;
    if decide(state, user.into(), &room, Action::Enter).await? == Verdict::TakeSeat {
        let full = ApiError::forbidden("room_full", QueryError::RoomFull.to_string());
        take_seat(state, &room, user.id, full).await?;
    }
    Ok(room)
}

/// `POST /rooms/{room}/join`: public rooms, and private ones with a free seat
/// (409 `room_full` otherwise); a group room is invite-only.
pub async fn join(state: &AppState, user: &AuthUser, room: &room::Model) -> Result<()> {
    if decide(state, user.into(), room, Action::Join).await? == Verdict::TakeSeat {
        take_seat(state, room, user.id, QueryError::RoomFull.into()).await?;
    }
    Ok(())
}

/// `POST /generate-token`: the room `key` names (created, owned by the
/// guest, when allowed), with the guest account seated in it. Guests may not
/// enter a group room they are not a member of.
pub async fn enter_as_guest(
    state: &AppState,
    guest: &user::Model,
    key: &str,
) -> Result<room::Model> {
    let bad_name = |message| ApiError::invalid_field("room_id", message);
    let room = find_or_create(state, key, Some(guest.id), bad_name).await?;
    let caller = Caller {
        id: guest.id,
        role: guest.role,
        guest_room: None,
    };
    if decide(state, caller, &room, Action::GuestEntry).await? == Verdict::TakeSeat {
        // Guests post as members, so the store stage's checks hold for them too.
        take_seat(state, &room, guest.id, QueryError::RoomFull.into()).await?;
    }
    Ok(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::Utc;

    const ROOM: Uuid = Uuid::from_u128(1);
    const OTHER_ROOM: Uuid = Uuid::from_u128(2);
    const OWNER: Uuid = Uuid::from_u128(10);
    const ME: Uuid = Uuid::from_u128(11);

    fn room(kind: RoomKind) -> room::Model {
        room::Model {
            id: ROOM,
            name: "room".into(),
            kind,
            owner_id: Some(OWNER),
            last_seq: 0,
            member_count: 1,
            created_at: Utc::now(),
        }
    }

    /// The callers of the table, by name.
    fn caller(name: &str) -> Caller {
        let (id, role, guest_room) = match name {
            "user" => (ME, Role::User, None),
            "owner" => (OWNER, Role::User, None),
            "mod" => (ME, Role::Moderator, None),
            "admin" => (ME, Role::Admin, None),
            "guest" => (ME, Role::Guest, Some(ROOM)),
            "guest-elsewhere" => (ME, Role::Guest, Some(OTHER_ROOM)),
            // An account being let in by /generate-token: no token yet.
            "guest-account" => (ME, Role::Guest, None),
            other => panic!("no caller {other}"),
        };
        Caller {
            id,
            role,
            guest_room,
        }
    }

    fn verdict(text: &str) -> Verdict {
        use Refusal::*;
        match text {
            "allow" => Verdict::Allow,
            "seat" => Verdict::TakeSeat,
            "not_a_member" => Verdict::Refuse(NotAMember),
            "other_room" => Verdict::Refuse(OtherRoom),
            "not_owner" => Verdict::Refuse(NotOwner),
            "invite_only" => Verdict::Refuse(InviteOnly),
            "guest" => Verdict::Refuse(GuestNotAllowed),
            other => panic!("no verdict {other}"),
        }
    }

    /// One line per caller and action: the verdict for a public, a group and
    /// a private room, each for a non-member and then a member
    /// (`nonmember/member`, or one verdict for both).
    const TABLE: &str = "
        user            Read        allow               not_a_member/allow  not_a_member/allow
        user            Post        allow               not_a_member/allow  not_a_member/allow
        user            Enter       allow               not_a_member/allow  seat/allow
        user            Join        seat                invite_only/allow   seat
        user            Manage      not_owner           not_owner           not_owner
        owner           Read        allow               not_a_member/allow  not_a_member/allow
        owner           Post        allow               not_a_member/allow  not_a_member/allow
        owner           Enter       allow               not_a_member/allow  seat/allow
        owner           Join        seat                invite_only/allow   seat
        owner           Manage      allow               allow               allow
        mod             Read        allow               not_a_member/allow  not_a_member/allow
        mod             Post        allow               not_a_member/allow  not_a_member/allow
        mod             Enter       allow               not_a_member/allow  seat/allow
        mod             Manage      not_owner           not_owner           not_owner
        admin           Read        allow               allow               not_a_member/allow
        admin           Post        allow               not_a_member/allow  not_a_member/allow
        admin           Enter       allow               not_a_member/allow  seat/allow
        admin           Join        seat                invite_only/allow   seat
        admin           Manage      allow               allow               allow
        guest           Read        allow               not_a_member/allow  not_a_member/allow
        guest           Post        not_a_member/allow  not_a_member/allow  not_a_member/allow
        guest           Enter       not_a_member/allow  not_a_member/allow  seat/allow
        guest           Join        guest               guest               guest
        guest           Manage      not_owner           not_owner           not_owner
        guest-elsewhere Read        other_room          other_room          other_room
        guest-elsewhere Post        other_room          other_room          other_room
        guest-elsewhere Enter       other_room          other_room          other_room
        guest-elsewhere Join        guest               guest               guest
        guest-account   GuestEntry  seat                invite_only/allow   seat
    ";

    #[test]
    fn the_policy_table() {
        let kinds = [RoomKind::Public, RoomKind::Group, RoomKind::Private];
        let mut checked = 0;
        for line in TABLE.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cells.len(), 5, "{line}");
            let action = match cells[1] {
                "Read" => Action::Read,
                "Post" => Action::Post,
                "Enter" => Action::Enter,
                "Join" => Action::Join,
                "GuestEntry" => Action::GuestEntry,
                "Manage" => Action::Manage,
                other => panic!("no action {other}"),
            };
            for (kind, cell) in kinds.into_iter().zip(&cells[2..]) {
                let (outside, inside) = cell.split_once('/').unwrap_or((cell, cell));
                let got = rule(caller(cells[0]), &room(kind), action);
                for (member, want) in [(false, outside), (true, inside)] {
                    assert_eq!(
                        got.verdict(member),
                        verdict(want),
                        "{} {action:?} in a {kind:?} room, member: {member}",
                        cells[0]
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 29 * 3 * 2);
    }

    /// A message's author edits it; its author, a moderator, an admin or
    /// the room's owner deletes it, in every kind of room.
    #[test]
    fn who_edits_and_deletes_a_message() {
        const SOMEONE: Uuid = Uuid::from_u128(12);
        for kind in [RoomKind::Public, RoomKind::Group, RoomKind::Private] {
            let room = room(kind);
            // (caller, author, may edit, may delete)
            let cases = [
                ("user", SOMEONE, false, false),
                ("user", ME, true, true),
                ("guest", ME, true, true),
                ("guest", SOMEONE, false, false),
                ("owner", SOMEONE, false, true),
                ("mod", SOMEONE, false, true),
                ("admin", SOMEONE, false, true),
            ];
            for (name, author, edit, delete) in cases {
                let who = caller(name);
                assert_eq!(
                    may_edit_message(who, Some(author)),
                    edit,
                    "{name} edits in {kind:?}"
                );
                assert_eq!(
                    may_delete_message(who, Some(author), &room),
                    delete,
                    "{name} deletes in {kind:?}"
                );
            }
            // A message whose sender is gone (a console message, a deleted
            // account) is no one's to edit.
            assert!(!may_edit_message(caller("user"), None));
            assert!(may_delete_message(caller("admin"), None, &room));
        }
    }

    /// Admins manage every room; owners their own, whatever their token.
    #[test]
    fn an_owners_guest_token_for_another_room_still_manages_theirs() {
        let owner = Caller {
            id: OWNER,
            role: Role::Guest,
            guest_room: Some(OTHER_ROOM),
        };
        assert_eq!(
            rule(owner, &room(RoomKind::Private), Action::Manage),
            Rule::Always(Verdict::Allow)
        );
    }
}
