//! A shard-local shutdown signal: set once, wakes every waiter.
//!
//! Each shard has one, triggered by the first stop message from
//! [`Server::shutdown`](crate::shard::Server::shutdown); its accept loops, connections,
//! intake and spool replay listen to it. The whole flow, and what the other parts (readiness,
//! upload workers) listen to instead, is in [`lifecycle`](crate::lifecycle).

use event_listener::Event;
use std::cell::Cell;

/// Set once when the shard stops taking requests; every waiter wakes.
#[derive(Debug, Default)]
pub struct Shutdown {
    flag: Cell<bool>,
    event: Event,
}

impl Shutdown {
    /// Starts shutdown on this shard.
    pub fn trigger(&self) {
        self.flag.set(true);
        self.event.notify(usize::MAX);
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.flag.get()
    }

    /// Resolves once shutdown has started.
    pub async fn wait(&self) {
        loop {
            if self.flag.get() {
                return;
            }
            let listener = self.event.listen();
            if self.flag.get() {
                return;
            }
            listener.await;
        }
    }
}
