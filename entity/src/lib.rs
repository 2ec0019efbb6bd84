//! sea-orm entities of roomcast: one module per table, nothing else.
//!
//! Queries live with the code that needs them (`api::store`, `consumer::store`);
//! the schema itself is written by the `migration` crate.

#![warn(clippy::too_many_lines)]

pub mod echo_transcript;
pub mod message;
pub mod refresh_token;
pub mod revoked_token;
pub mod room;
pub mod room_member;
pub mod user;

pub use echo_transcript::Entity as EchoTranscript;
pub use message::Entity as Message;
pub use refresh_token::Entity as RefreshToken;
pub use revoked_token::Entity as RevokedToken;
pub use room::Entity as Room;
pub use room_member::Entity as RoomMember;
pub use user::Entity as User;
