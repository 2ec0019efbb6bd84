//! The delivery stage: this node's room and user events, from the broker into the [`Hub`].

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{Broker, Hub, broker::Rooms, event::UserEvent};

/// Runs until `stop` is cancelled.
pub async fn run(broker: Arc<dyn Broker>, hub: Arc<Hub>, stop: CancellationToken) {
    // Only the rooms the hub holds sockets in: see `Hub::room_interest`.
    let mut events = broker.subscribe_events(Rooms::Joined(hub.room_interest()));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            event = events.next() => match event {
                Some(frame) if UserEvent::is_user_frame(&frame) => {
                    if let Some(event) = UserEvent::from_frame(&frame) {
                        hub.apply_user_event(&event, frame);
                    }
                }
                Some(frame) => hub.dispatch(frame),
                None => return,
            },
        }
    }
}
