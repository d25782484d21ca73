//! SIGHUP: re-read the files an operator may change while the server runs (the token list,
//! the TLS certificate). Each part registers a [`Reloader`] when the server starts; a reload
//! runs them in turn. A reloader swaps in its new state atomically or, when the new file is
//! bad, refuses it and keeps the old state; either way it says so in the log. A reload never
//! drops a connection or a request.

use crate::auth::TokensError;
use crate::tls::TlsError;
use std::sync::{Arc, Mutex};

/// Why a reloader refused the new state (and kept the old one).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The tokens file.
    #[error("{0}")]
    Tokens(#[from] TokensError),
    /// The TLS certificate and key.
    #[error("{0}")]
    Tls(#[from] TlsError),
}

type Hook = Box<dyn Fn() -> Result<String, ReloadError> + Send + Sync>;

/// The reload hooks of one server. Cloning shares them.
#[derive(Clone, Default)]
pub struct Reloaders(Arc<Mutex<Vec<(&'static str, Hook)>>>);

impl std::fmt::Debug for Reloaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = match self.0.lock() {
            Ok(hooks) => hooks.iter().map(|(n, _)| *n).collect(),
            Err(_) => Vec::new(),
        };
        f.debug_tuple("Reloaders").field(&names).finish()
    }
}

impl Reloaders {
    /// Registers `hook` under `what` (e.g. `"tokens"`). The hook returns a line for the log
    /// on success (never a secret), or why the new state was refused.
    pub fn add<E: Into<ReloadError>>(
        &self,
        what: &'static str,
        hook: impl Fn() -> Result<String, E> + Send + Sync + 'static,
    ) {
        if let Ok(mut hooks) = self.0.lock() {
            hooks.push((what, Box::new(move || hook().map_err(Into::into))));
        }
    }

    /// Runs every hook, logs each outcome, and returns them (`Err` for a refused reload).
    pub fn reload_all(&self) -> Vec<(&'static str, Result<String, ReloadError>)> {
        let Ok(hooks) = self.0.lock() else {
            return Vec::new();
        };
        let mut outcomes = Vec::with_capacity(hooks.len());
        for (what, hook) in hooks.iter() {
            let outcome = hook();
            match &outcome {
                Ok(msg) => tracing::info!(what = *what, "reloaded: {msg}"),
                Err(why) => {
                    tracing::error!(what = *what, "reload refused, keeping the old one: {why}")
                }
            }
            outcomes.push((*what, outcome));
        }
        if hooks.is_empty() {
            tracing::info!("SIGHUP: nothing to reload");
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_runs_and_a_refusal_does_not_stop_the_others() {
        let r = Reloaders::default();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        r.add("bad", || {
            Err(TokensError::Empty {
                path: "no such file".into(),
            })
        });
        r.add("good", move || -> Result<String, ReloadError> {
            h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok("3 entries".into())
        });
        let out = r.reload_all();
        assert_eq!(out.len(), 2);
        assert!(out[0].1.is_err());
        assert_eq!(out[1].1.as_deref().ok(), Some("3 entries"));
        assert_eq!(hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
