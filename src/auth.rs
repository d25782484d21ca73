//! Bearer tokens and tenants (`[auth] tokens_file`).
//!
//! The tokens file holds one token per line, optionally followed by whitespace and a tenant:
//! a key prefix matching `[a-z0-9][a-z0-9._-]*` under which that token's payloads are stored
//! (`{keys.prefix}/{tenant}/...`). `#` starts a comment line; blank lines are ignored.
//!
//! # How a token is looked up
//! Each token is kept only as its SHA-256 digest, in a hash table keyed by the digest's first
//! 8 bytes; a presented token is hashed, its bucket found, and the bucket's full digest(s)
//! compared with `subtle`'s constant-time equality. Timing therefore depends only on the
//! presented token's length (SHA-256 blocks) and on where its *digest* falls in the table,
//! never on how many leading bytes of the presented token match a listed one, nor on which
//! token matched: without a preimage of SHA-256, learning how a digest compares to the
//! table's tells an attacker nothing about any token. It costs one hash and one probe
//! whatever the number of tokens (comparing against every entry would cost O(n) per
//! request). `benches/auth.rs` measures it.
//!
//! # Reloading without locks on the hot path
//! The set in force is an `Arc<TokenSet>` behind a mutex, plus a generation counter. Each
//! shard keeps its own copy of the set with the generation it saw; per request it does one
//! atomic load of the generation (a cache line that only a reload writes, so it stays shared
//! in every core's cache) and takes the mutex only when the generation moved, once per shard
//! per reload. The copy has tenant names of its own: the `Arc` a request takes for its tenant
//! is counted on a cache line no other shard touches.

use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

/// A tenant: the key prefix a token's payloads are stored under.
pub type Tenant = Arc<str>;

/// Longest tenant name accepted (it is a path segment of every key of that tenant, and is
/// recorded in each spool record with a one-byte length).
pub const MAX_TENANT: usize = 128;
/// Longest token accepted.
pub const MAX_TOKEN: usize = 4096;

/// What is wrong with a line of a tokens file: the line, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenLineError {
    /// More than two words on the line.
    #[error("line {0}: more than a token and a tenant (a token has no whitespace)")]
    TooManyWords(usize),
    /// A token over [`MAX_TOKEN`] bytes.
    #[error("line {0}: token longer than {MAX_TOKEN} bytes")]
    TooLong(usize),
    /// A token with a byte outside printable ASCII.
    #[error("line {0}: a token must be printable ASCII (it is sent in an HTTP header)")]
    NotPrintable(usize),
    /// A tenant that is not a valid name ([`valid_tenant`]).
    #[error("line {line}: tenant {shown:?} must match [a-z0-9][a-z0-9._-]* (at most {MAX_TENANT} bytes)")]
    BadTenant {
        /// The line.
        line: usize,
        /// The tenant (not a secret), cut to 40 characters.
        shown: String,
    },
    /// A token listed twice.
    #[error("line {line}: the same token as line {first}")]
    Duplicate {
        /// The line.
        line: usize,
        /// The line that listed it first.
        first: usize,
    },
}

/// Why a tokens file was not taken (at start, or by a reload); names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{}: {source}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// Which line, and what is wrong with it.
        #[source]
        source: TokenLineError,
    },
    /// A reload found no token: an empty set would lock every client out (see
    /// [`Tokens::reload`]).
    #[error("{}: no tokens in it; an empty set would refuse every payload request", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Why a payload request was refused `401`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header and no `token` field.
    Missing,
    /// A token that is not listed, or an `Authorization` header that is not `Bearer TOKEN`.
    Invalid,
}

impl Denied {
    /// The `reason` label of `corepost_auth_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Invalid => "invalid",
        }
    }

    /// What the client is told (never the token).
    pub fn words(self) -> &'static str {
        match self {
            Denied::Missing => "a token is required: send `Authorization: Bearer TOKEN` (or the body's \"token\" field)",
            Denied::Invalid => "invalid token: send `Authorization: Bearer TOKEN` with a listed token",
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 3): a request without a token gets the bare
    /// challenge; a wrong one says `invalid_token`.
    pub fn challenge(self) -> &'static str {
        match self {
            Denied::Missing => "Bearer",
            Denied::Invalid => "Bearer error=\"invalid_token\"",
        }
    }
}

/// One listed token: its digest and its tenant.
#[derive(Clone)]
struct Entry {
    digest: [u8; 32],
    tenant: Option<Tenant>,
}

/// A parsed tokens file. Holds digests only, never the tokens.
#[derive(Default)]
pub struct TokenSet {
    buckets: HashMap<u64, Vec<Entry>>,
    tokens: usize,
    tenants: usize,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("tokens", &self.tokens)
            .field("tenants", &self.tenants)
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn bucket_of(d: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// Whether `t` is a valid tenant name: `[a-z0-9][a-z0-9._-]*`, at most [`MAX_TENANT`] bytes.
pub fn valid_tenant(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TENANT
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

impl TokenSet {
    /// A copy whose tenant names are allocated anew (one per distinct tenant), so that the
    /// copy shares no reference count with the original.
    fn localized(&self) -> TokenSet {
        let mut names: HashMap<&str, Tenant> = HashMap::new();
        let buckets = self
            .buckets
            .iter()
            .map(|(&k, entries)| {
                let entries = entries
                    .iter()
                    .map(|e| Entry {
                        digest: e.digest,
                        tenant: e
                            .tenant
                            .as_deref()
                            .map(|t| names.entry(t).or_insert_with(|| Tenant::from(t)).clone()),
                    })
                    .collect();
                (k, entries)
            })
            .collect();
        TokenSet {
            buckets,
            tokens: self.tokens,
            tenants: self.tenants,
        }
    }

    /// Parses the text of a tokens file. Errors name the line, never the token.
    pub fn parse(text: &str) -> Result<TokenSet, TokenLineError> {
        let mut set = TokenSet::default();
        let mut lines_of: HashMap<[u8; 32], usize> = HashMap::new();
        let mut tenants = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_ascii_whitespace();
            let Some(token) = words.next() else { continue };
            let tenant = words.next();
            if words.next().is_some() {
                return Err(TokenLineError::TooManyWords(n));
            }
            if token.len() > MAX_TOKEN {
                return Err(TokenLineError::TooLong(n));
            }
            if !token.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(TokenLineError::NotPrintable(n));
            }
            let tenant = match tenant {
                None => None,
                Some(t) if valid_tenant(t) => Some(Tenant::from(t)),
                Some(t) => {
                    // The tenant is not a secret; showing it helps (but not a long one).
                    let shown: String = t.chars().take(40).collect();
                    return Err(TokenLineError::BadTenant { line: n, shown });
                }
            };
            let d = digest(token.as_bytes());
            if let Some(first) = lines_of.insert(d, n) {
                return Err(TokenLineError::Duplicate { line: n, first });
            }
            if let Some(t) = &tenant {
                tenants.insert(t.clone());
            }
            set.tokens += 1;
            set.buckets
                .entry(bucket_of(&d))
                .or_default()
                .push(Entry { digest: d, tenant });
        }
        set.tenants = tenants.len();
        Ok(set)
    }

    /// Reads and parses a tokens file. Errors name the file and the line.
    pub fn load(path: &Path) -> Result<TokenSet, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        TokenSet::parse(&text).map_err(|source| TokensError::Line {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Tokens listed.
    pub fn len(&self) -> usize {
        self.tokens
    }

    /// Whether no token is listed (every payload request is refused).
    pub fn is_empty(&self) -> bool {
        self.tokens == 0
    }

    /// Distinct tenants named.
    pub fn tenants(&self) -> usize {
        self.tenants
    }

    /// The tenant of `token` (`Some(None)`: listed without a tenant), or `None` if it is not
    /// listed. See the module doc for why this takes the same time whichever token matched.
    pub fn lookup(&self, token: &[u8]) -> Option<Option<Tenant>> {
        let d = digest(token);
        let mut found = None;
        for e in self.buckets.get(&bucket_of(&d)).into_iter().flatten() {
            if bool::from(e.digest.ct_eq(&d)) {
                found = Some(e.tenant.clone());
            }
        }
        found
    }
}

/// A one-line summary for logs and `check-config`: counts only.
pub fn summary(set: &TokenSet) -> String {
    format!("{} tokens, {} tenants", set.len(), set.tenants())
}

/// The token set in force, shared by every shard, replaced whole by a reload.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    generation: AtomicU64,
    current: Mutex<(u64, Arc<TokenSet>)>,
}

impl Tokens {
    /// Loads the tokens file at `path` (at start: warns if others may read it).
    pub fn load(path: &Path) -> Result<Arc<Tokens>, TokensError> {
        let set = TokenSet::load(path)?;
        warn_if_exposed("auth.tokens_file", path);
        Ok(Arc::new(Tokens {
            path: path.to_path_buf(),
            generation: AtomicU64::new(0),
            current: Mutex::new((0, Arc::new(set))),
        }))
    }

    /// Re-reads the file; swaps the new set in whole, or refuses a bad file and keeps the
    /// old set. Returns the log line (counts, never a token) or why it was refused.
    ///
    /// A file that holds no token is refused too: an emptied file (truncated by a deploy
    /// script, or read while being rewritten in place) would otherwise lock every client
    /// out; to stop taking payloads, stop the server or list no one at start.
    pub fn reload(&self) -> Result<String, TokensError> {
        let set = TokenSet::load(&self.path)?;
        if set.is_empty() {
            return Err(TokensError::Empty {
                path: self.path.clone(),
            });
        }
        let line = format!("{}: {}", self.path.display(), summary(&set));
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let next = cur.0 + 1;
        *cur = (next, Arc::new(set));
        self.generation.store(next, Ordering::Release);
        Ok(line)
    }

    /// The file and what it holds, in counts (for the start-up log line).
    pub fn describe(&self) -> String {
        format!("{}: {}", self.path.display(), summary(&self.snapshot().1))
    }

    fn snapshot(&self) -> (u64, Arc<TokenSet>) {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (cur.0, cur.1.clone())
    }
}

/// Logs a warning when the file holding secrets at `path` (`setting` names it) may be read
/// by its group or by others (mode `0o077` bits beyond owner read/write); it says which mode
/// to set. Nothing is refused: the file's owner decides.
pub fn warn_if_exposed(setting: &str, path: &Path) {
    if let Some(mode) = exposed_mode(path) {
        tracing::warn!(
            "{setting}: {} is readable by {} (mode {mode:o}); it holds secrets: chmod 600 it (or 640 for a group the server runs in)",
            path.display(),
            if mode & 0o004 != 0 { "everyone" } else { "its group" },
        );
    }
}

/// The permission bits of `path` when its group or others may read it.
fn exposed_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

/// One shard's view of the token set: its own copy of the set it last saw, refreshed when a
/// reload moved the generation.
#[derive(Debug)]
pub struct ShardTokens {
    shared: Arc<Tokens>,
    cached: RefCell<(u64, TokenSet)>,
}

impl ShardTokens {
    /// A shard's view of `shared`.
    pub fn new(shared: Arc<Tokens>) -> Self {
        let cached = RefCell::new(Self::copy(&shared));
        Self { shared, cached }
    }

    fn copy(shared: &Tokens) -> (u64, TokenSet) {
        let (generation, set) = shared.snapshot();
        (generation, set.localized())
    }

    /// The tenant of `token`, or why it is refused.
    pub fn check(&self, token: &[u8]) -> Result<Option<Tenant>, Denied> {
        if self.shared.generation.load(Ordering::Acquire) != self.cached.borrow().0 {
            *self.cached.borrow_mut() = Self::copy(&self.shared);
        }
        self.cached.borrow().1.lookup(token).ok_or(Denied::Invalid)
    }
}

/// The token of an `Authorization: Bearer TOKEN` header value (scheme case-insensitive).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_tenants_comments_and_blank_lines() {
        let set = TokenSet::parse(
            "# ops\n\nalpha-token acme\n  beta_token\tbeta.corp-1  \n# gamma\ngamma\n",
        )
        .unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.tenants(), 2);
        assert_eq!(set.lookup(b"alpha-token"), Some(Some("acme".into())));
        assert_eq!(set.lookup(b"beta_token"), Some(Some("beta.corp-1".into())));
        assert_eq!(set.lookup(b"gamma"), Some(None));
        assert_eq!(set.lookup(b"alpha-toke"), None);
        assert_eq!(set.lookup(b"alpha-token "), None);
        assert_eq!(set.lookup(b""), None);
        assert_eq!(set.lookup(b"# gamma"), None);
        assert!(TokenSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_are_named_and_the_token_never_shown() {
        for (text, line, what) in [
            ("ok\nsecret-one Acme\n", 2, "tenant \"Acme\""),
            ("secret-one .dot\n", 1, "must match"),
            ("secret-one a/b\n", 1, "must match"),
            ("x\n\nsecret-one a b\n", 3, "more than a token"),
            ("secret-one a\nsecret-one b\n", 2, "same token as line 1"),
            ("secret-one\u{e9}\n", 1, "printable ASCII"),
        ] {
            let e = TokenSet::parse(text).expect_err(text).to_string();
            assert!(e.starts_with(&format!("line {line}: ")), "{e}");
            assert!(e.contains(what), "{e}");
            assert!(!e.contains("secret-one"), "token echoed: {e}");
        }
        let long = "t".repeat(MAX_TOKEN + 1);
        assert!(!TokenSet::parse(&long)
            .unwrap_err()
            .to_string()
            .contains(&long));
        let long_tenant = format!("tok {}", "a".repeat(MAX_TENANT + 1));
        assert!(TokenSet::parse(&long_tenant).is_err());
        assert!(TokenSet::parse(&format!("tok {}", "a".repeat(MAX_TENANT))).is_ok());
    }

    #[test]
    fn files_readable_by_group_or_others_are_told_apart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "one\n").unwrap();
        for (mode, exposed) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(exposed_mode(&path).is_some(), exposed, "{mode:o}");
        }
    }

    #[test]
    fn bearer_header_values() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Basic YWJjOmRlZg=="), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn a_reload_is_seen_by_each_shard_and_a_bad_file_keeps_the_old_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "one\n").unwrap();
        let shared = Tokens::load(&path).unwrap();
        let shard = ShardTokens::new(shared.clone());
        assert_eq!(shard.check(b"one"), Ok(None));
        assert_eq!(shard.check(b"two"), Err(Denied::Invalid));
        std::fs::write(&path, "two t2\n").unwrap();
        let line = shared.reload().unwrap();
        assert!(line.contains("1 tokens") && !line.contains("two"), "{line}");
        assert_eq!(shard.check(b"one"), Err(Denied::Invalid));
        assert_eq!(shard.check(b"two"), Ok(Some("t2".into())));
        std::fs::write(&path, "three BAD\n").unwrap();
        assert!(shared.reload().unwrap_err().to_string().contains("line 1"));
        assert_eq!(shard.check(b"two"), Ok(Some("t2".into())));
        assert_eq!(shard.check(b"three"), Err(Denied::Invalid));
        // Emptied, or only comments: refused, the set in force stays.
        for empty in ["", "# all revoked\n\n"] {
            std::fs::write(&path, empty).unwrap();
            assert!(shared
                .reload()
                .unwrap_err()
                .to_string()
                .contains("no tokens"));
            assert_eq!(shard.check(b"two"), Ok(Some("t2".into())));
        }
        // Unreadable (gone): refused, the set in force stays.
        std::fs::remove_file(&path).unwrap();
        assert!(shared
            .reload()
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
        assert_eq!(shard.check(b"two"), Ok(Some("t2".into())));
    }
}
