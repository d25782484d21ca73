//! Shutdown: one signal for the whole server, raised in two steps, that every part listens to.
//!
//! [`Shutdown::begin`] (the first SIGTERM or SIGINT) sets the drain deadline
//! (`upload.drain_timeout_ms` from now) and moves the signal to [`Phase::Draining`];
//! [`Shutdown::hurry`] (a second signal) moves it to [`Phase::Hurry`] and the deadline to
//! now. Every part reads or awaits this one value: which part does what at each step is the
//! table in [`lifecycle`](crate::lifecycle).
//!
//! Waiting on it across threads takes a lock shared by every shard, so a shard does not let
//! its connections wait on it directly: [`Local::follow`] keeps a shard-local copy of the
//! phase, updated by one task per shard, and connections, accept loops, intake and replay
//! wait on that copy.

use event_listener::Event;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the server is in its shutdown; each step only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running = 0,
    /// The first signal: stop taking requests, finish the ones in progress, drain the queues
    /// until the drain deadline.
    Draining = 1,
    /// A second signal: stop waiting for connections and the store now.
    Hurry = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Hurry,
        }
    }
}

/// The server's shutdown signal, shared by every shard and upload worker.
#[derive(Debug)]
pub struct Shutdown {
    phase: AtomicU8,
    /// When the upload workers stop trying the store (set by `begin`, moved to now by
    /// `hurry`).
    deadline: Mutex<Option<Instant>>,
    event: Event,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            phase: AtomicU8::new(Phase::Running as u8),
            deadline: Mutex::new(None),
            event: Event::new(),
        }
    }
}

impl Shutdown {
    /// A signal in [`Phase::Running`].
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The first step: draining, with the drain deadline `drain` from now. Does nothing once
    /// shutdown has begun.
    pub fn begin(&self, drain: Duration) {
        self.advance(Phase::Draining, Instant::now() + drain);
    }

    /// The second step: the drain deadline is now. Begins shutdown too if it had not begun.
    pub fn hurry(&self) {
        self.advance(Phase::Hurry, Instant::now());
    }

    fn advance(&self, to: Phase, deadline: Instant) {
        {
            let mut d = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
            if self.phase() >= to {
                return;
            }
            *d = Some(d.map_or(deadline, |old| old.min(deadline)));
            self.phase.store(to as u8, SeqCst);
        }
        self.event.notify(usize::MAX);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(SeqCst))
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// The drain deadline, once shutdown has begun.
    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once the signal has reached `phase`.
    pub async fn reached(&self, phase: Phase) {
        loop {
            if self.phase() >= phase {
                return;
            }
            let listener = self.event.listen();
            if self.phase() >= phase {
                return;
            }
            listener.await;
        }
    }
}

/// A shard's copy of the signal's phase (see the module doc), on the shard's executor.
#[derive(Debug)]
pub struct Local {
    phase: Cell<Phase>,
    event: Event,
}

impl Local {
    /// A copy of `shared` for the calling shard, kept up to date by a task on its executor
    /// until it reaches [`Phase::Hurry`].
    pub fn follow(shared: Arc<Shutdown>) -> Rc<Self> {
        let local = Rc::new(Self {
            phase: Cell::new(shared.phase()),
            event: Event::new(),
        });
        let copy = local.clone();
        glommio::spawn_local(async move {
            for next in [Phase::Draining, Phase::Hurry] {
                shared.reached(next).await;
                copy.phase.set(shared.phase());
                copy.event.notify(usize::MAX);
            }
        })
        .detach();
        local
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.phase.get() >= Phase::Draining
    }

    /// Resolves once shutdown has begun.
    pub async fn stopping(&self) {
        self.reached(Phase::Draining).await
    }

    /// Resolves once the signal has reached `phase`.
    pub async fn reached(&self, phase: Phase) {
        loop {
            if self.phase.get() >= phase {
                return;
            }
            let listener = self.event.listen();
            if self.phase.get() >= phase {
                return;
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_only_move_forward_and_the_deadline_only_comes_sooner() {
        let s = Shutdown::new();
        assert_eq!((s.phase(), s.deadline()), (Phase::Running, None));
        s.begin(Duration::from_secs(60));
        let first = s.deadline().expect("a deadline once draining");
        assert!(first > Instant::now() + Duration::from_secs(30));
        s.begin(Duration::from_secs(1));
        assert_eq!((s.phase(), s.deadline()), (Phase::Draining, Some(first)));
        s.hurry();
        assert_eq!(s.phase(), Phase::Hurry);
        assert!(s.deadline().expect("deadline") <= Instant::now());
        s.begin(Duration::from_secs(60));
        assert_eq!(s.phase(), Phase::Hurry);
    }

    #[test]
    fn waiters_on_other_threads_wake_at_each_step() {
        let s = Shutdown::new();
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || {
                futures_lite::future::block_on(s.reached(Phase::Draining));
                let seen = s.phase();
                futures_lite::future::block_on(s.reached(Phase::Hurry));
                seen
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        s.begin(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
        s.hurry();
        assert!(waiter.join().expect("waiter") >= Phase::Draining);
    }
}
