//! Where the store and delivery stages run: on a thread of their own, with a
//! single-threaded Tokio runtime and a database pool of their own.
//!
//! Everything else (HTTP requests, socket handshakes, every frame a client
//! sends) runs on the main runtime. A message on its way through the store
//! stage waits on the database and the broker several times; each time its
//! answer comes, the task that carries it must be run again. On a runtime of
//! their own the stages never wait behind that other work: a flood of socket
//! connects, or a client sending frames as fast as it can, does not queue in
//! front of the room's messages. The operating system shares the cores
//! between the two runtimes' threads.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use consumer::{Broker, Hub, store};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::db;

/// The running stages; [`Stages::stopped`] waits for them after `stop`.
pub struct Stages {
    done: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Stages {
    /// Opens the stages' database pool and starts the store stage (with
    /// `store`'s key and content limit) and the delivery stage, which run
    /// until `stop` is cancelled.
    pub async fn start(
        database_url: &str,
        database_max_connections: u32,
        broker: Arc<dyn Broker>,
        hub: Arc<Hub>,
        store: store::Settings,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("roomcast-stages")
            .build()
            .context("starting the stages' runtime")?;
        let (opened, is_open) = oneshot::channel();
        let (finished, done) = oneshot::channel();
        let url = database_url.to_owned();
        let thread = std::thread::Builder::new()
            .name("roomcast-stages".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Opened here, so its connections are served by this runtime.
                    let db = match db::connect_with(&url, database_max_connections).await {
                        Ok(db) => db,
                        Err(err) => {
                            let _ = opened.send(Err(err));
                            return;
                        }
                    };
                    let _ = opened.send(Ok(()));
                    let stages = [
                        supervise("store stage", stop.clone(), {
                            let (db, broker, stop) = (db.clone(), broker.clone(), stop.clone());
                            move || {
                                store::run(db.clone(), broker.clone(), store.clone(), stop.clone())
                            }
                        }),
                        supervise("delivery stage", stop.clone(), {
                            let stop = stop.clone();
                            move || {
                                consumer::delivery::run(broker.clone(), hub.clone(), stop.clone())
                            }
                        }),
                    ];
                    for stage in stages {
                        let _ = stage.await;
                    }
                    db.close().await.ok();
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
                let _ = finished.send(());
            })
            .context("starting the stages' thread")?;
        match is_open.await {
            Ok(Ok(())) => Ok(Self { done, thread }),
            Ok(Err(err)) => Err(err).context("DATABASE_URL: cannot connect"),
            Err(_) => Err(anyhow::anyhow!("the stages' thread ended while starting")),
        }
    }

    /// Resolves once both stages have stopped (after `stop` was cancelled)
    /// and their database pool and runtime are closed.
    pub async fn stopped(self) {
        let _ = self.done.await;
        // It has only to return from its closure now.
        let _ = self.thread.join();
    }
}

/// Runs a stage until `stop`; if it panics (a bug, never input), logs it and
/// starts it again a second later instead of leaving the node half alive.
/// What the dead stage had not acked, the broker hands out again.
fn supervise<F, Fut>(
    name: &'static str,
    stop: CancellationToken,
    stage: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(stage()).await {
                Err(err) if err.is_panic() && !stop.is_cancelled() => {
                    tracing::error!(stage = name, "the {name} panicked; restarting it");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                _ => return,
            }
        }
    })
}
