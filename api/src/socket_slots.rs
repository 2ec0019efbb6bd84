//! The cap on one user's open sockets on a node (`SOCKETS_PER_USER`): room
//! sockets and `/echo` alike. A connect takes a [`SocketSlot`] before the
//! upgrade, so a refusal is an HTTP answer (429 `too_many_sockets` with
//! `Retry-After`); the slot is given back when it is dropped, whether the
//! socket ends or the upgrade never happens.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::http::StatusCode;
use uuid::Uuid;

use crate::error::ApiError;

/// How long a refused client is asked to wait: long enough for one of its
/// sockets to end, short enough for a tab to reconnect.
const RETRY_AFTER_SECS: u64 = 5;

/// Each user's open sockets on this node.
pub struct SocketSlots {
    cap: usize,
    open: Mutex<HashMap<Uuid, usize>>,
}

/// One open socket of a user, counted until dropped.
pub struct SocketSlot {
    slots: Arc<SocketSlots>,
    user: Uuid,
}

impl SocketSlots {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            open: Mutex::default(),
        }
    }

    /// A slot for one more socket of `user`; 429 `too_many_sockets` when
    /// they hold the cap already.
    pub fn take(self: &Arc<Self>, user: Uuid) -> Result<SocketSlot, ApiError> {
        let mut open = self.open.lock().expect("socket slots");
        let count = open.entry(user).or_default();
        if *count >= self.cap {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sockets",
                format!(
                    "at most {} open sockets per user; close one and retry",
                    self.cap
                ),
            );
            err.retry_after = Some(RETRY_AFTER_SECS);
            return Err(err);
        }
        *count += 1;
        Ok(SocketSlot {
            slots: self.clone(),
            user,
        })
    }

    /// The sockets `user` holds on this node.
    pub fn held_by(&self, user: Uuid) -> usize {
        self.open
            .lock()
            .expect("socket slots")
            .get(&user)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("socket slots");
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_user_and_given_back() {
        let slots = Arc::new(SocketSlots::new(2));
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let first = slots.take(alice).unwrap();
        let _second = slots.take(alice).unwrap();
        let refused = slots.take(alice).err().unwrap();
        assert_eq!(
            (refused.code, refused.retry_after),
            ("too_many_sockets", Some(RETRY_AFTER_SECS))
        );
        assert!(slots.take(bob).is_ok(), "another user is not affected");
        drop(first);
        assert_eq!(slots.held_by(alice), 1);
        let _third = slots.take(alice).unwrap();
    }
}
