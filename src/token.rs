//! Where the Joulo token comes from and the one place it is added to a request:
//! read from a secrets file into a secret type, re-read on SIGHUP or when the file
//! changes, and withdrawn (fail closed) when the file goes bad. Joulo's answers
//! are searched for it here too, so its bytes never leave this module. That
//! is also why the file is long (about 670 lines before its tests): splitting
//! it would spread the places that touch the token's bytes over several files.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, info, warn};

use crate::files::{self, FileError};
use crate::sync::{read_unpoisoned, write_unpoisoned};
use crate::watch::{Hangups, LoadedState, Trigger};

/// The most a token file may hold: a token is at most 4096 bytes, and a file
/// much longer than that is not a token file.
const TOKEN_FILE_LIMIT: u64 = 64 * 1024;

/// Why a token file was not accepted. Never carries the file's contents.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file does not exist: the usual first start, so the message says
    /// what to do.
    #[error(
        "token file {path} does not exist: create it readable by its owner only \
         (install -m 600 /dev/null {path}), write your Joulo API token into it, \
         then start the gateway again"
    )]
    Missing { path: PathBuf },
    /// The file is unreadable, not a regular file or far too long.
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    /// The file is readable but does not hold one usable token.
    #[error("token file {path} {problem}")]
    Invalid {
        path: PathBuf,
        problem: &'static str,
    },
}

/// The Joulo API token. Debug prints a placeholder and the memory is zeroized on
/// drop; the value leaves this type only through [`UpstreamToken::authorization_header`].
pub struct UpstreamToken {
    /// The token exactly as it should follow `Bearer `.
    secret: SecretString,
    /// Which load of the token file this is: an answer to a request made with
    /// an older token says nothing about the current one.
    generation: u64,
}

impl std::fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamToken([REDACTED])")
    }
}

impl UpstreamToken {
    /// Validates a token: surrounding whitespace is trimmed; it must then be
    /// non-empty visible ASCII with no inner whitespace or control characters.
    /// The problem text never quotes the input.
    pub fn parse(raw: &str) -> Result<UpstreamToken, &'static str> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("is empty: write your Joulo API token into it (one line), \
                        then start the gateway again");
        }
        // What a token copied from a shell, a .env file or an HTTP example
        // brings along: Joulo would answer 401 to every call.
        if trimmed.starts_with(['"', '\'']) || trimmed.ends_with(['"', '\'']) {
            return Err("holds the token in quotes: write the token alone, without quotes");
        }
        if trimmed
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
        {
            return Err("starts with `Bearer `: write the token alone; the gateway adds `Bearer`");
        }
        if let Some((name, _)) = trimmed.split_once('=')
            && !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && name.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err("holds a `NAME=` assignment (such as JOULO_TOKEN=): write the token alone");
        }
        if trimmed.chars().any(|c| c.is_whitespace()) {
            return Err("holds whitespace inside the token (one token, on one line, expected)");
        }
        if trimmed.chars().any(|c| c.is_control()) {
            return Err("holds control characters");
        }
        if !trimmed.is_ascii() {
            return Err("holds non-ASCII characters");
        }
        if trimmed.len() > 4096 {
            return Err("is longer than 4096 bytes");
        }
        Ok(UpstreamToken {
            secret: SecretString::from(trimmed),
            generation: 0,
        })
    }

    /// Whether it is shaped like the tokens Joulo issues: `joulo_` and
    /// letters and digits.
    pub(crate) fn looks_like_joulo(&self) -> bool {
        let secret = self.secret.expose_secret();
        secret
            .strip_prefix("joulo_")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
    }

    /// `text` with every occurrence of the token replaced by `replacement`,
    /// for the log redactor. The token is compared where it lies: no copy of
    /// it is made, and it never leaves this type (the only function it leaves
    /// through is [`Self::authorization_header`]).
    pub fn redact_from<'t>(&self, text: &'t str, replacement: &str) -> Cow<'t, str> {
        let secret = self.secret.expose_secret();
        if secret.is_empty() || !text.contains(secret) {
            return Cow::Borrowed(text);
        }
        Cow::Owned(text.replace(secret, replacement))
    }

    /// Whether `bytes` hold the token anywhere: an upstream answer that
    /// echoes it (a debug header, a `WWW-Authenticate` echo, an error page
    /// quoting the request) must not reach a device or the cache. Compared
    /// where it lies, in one pass, as [`Self::redact_from`] does.
    pub fn appears_in(&self, bytes: &[u8]) -> bool {
        holds(bytes, self.secret.expose_secret().as_bytes())
    }

    /// Whether any of an answer's header names or values hold the token. A
    /// name arrives lower-cased, so it is compared ignoring case (names are
    /// short: a window per byte costs nothing).
    pub fn appears_in_headers(&self, headers: &http::HeaderMap) -> bool {
        let secret = self.secret.expose_secret().as_bytes();
        !secret.is_empty()
            && headers.iter().any(|(name, value)| {
                let name = name.as_str().as_bytes();
                (name.len() >= secret.len()
                    && name
                        .windows(secret.len())
                        .any(|window| window.eq_ignore_ascii_case(secret)))
                    || holds(value.as_bytes(), secret)
            })
    }

    /// Whether `other` holds the same token, compared in constant time.
    fn same_secret(&self, other: &UpstreamToken) -> bool {
        use subtle::ConstantTimeEq;
        let (a, b) = (self.secret.expose_secret(), other.secret.expose_secret());
        bool::from(a.as_bytes().ct_eq(b.as_bytes()))
    }

    /// Which load of the token file this token came from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The `Authorization: Bearer <token>` value, marked sensitive so hyper's HPACK
    /// never indexes it. The only function that exposes the token.
    pub fn authorization_header(&self) -> HeaderValue {
        let secret = self.secret.expose_secret();
        // Sized up front so no reallocation leaves an unzeroized copy behind.
        let mut value = Zeroizing::new(String::with_capacity(7 + secret.len()));
        value.push_str("Bearer ");
        value.push_str(secret);
        let mut header =
            HeaderValue::from_str(&value).expect("parse() admits only visible ASCII tokens");
        header.set_sensitive(true);
        header
    }
}

/// Why a streamed answer was cut: it held the token it was requested with.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's answer held the gateway's token")]
pub(crate) struct TokenEchoed;

/// Watches a streamed upstream body for the token its request carried,
/// across chunk boundaries. What could be the beginning of the token (the
/// longest end of what came so far that is a start of it, shorter than the
/// token) is held back until the next chunk shows it is not, so not one byte
/// of a token split across chunks reaches a device before the cut. No
/// `Debug`: what it holds back is a piece of the token's start.
pub(crate) struct TokenEcho {
    /// The token the request was sent with; one rotated away since is still
    /// what an echo would quote.
    token: Arc<UpstreamToken>,
    /// The held-back end of the body so far: a proper prefix of the token.
    held: bytes::Bytes,
}

impl TokenEcho {
    /// A watch for `token` over a body not yet begun.
    pub(crate) fn new(token: Arc<UpstreamToken>) -> TokenEcho {
        TokenEcho {
            token,
            held: bytes::Bytes::new(),
        }
    }

    /// Checks the body's next `chunk` and returns what may be passed on now
    /// (perhaps nothing), or the refusal if the token is in it or completed
    /// by it. One search over the chunk, and one over the few bytes around
    /// the seam when something was held back.
    pub(crate) fn pass(&mut self, chunk: bytes::Bytes) -> Result<bytes::Bytes, TokenEchoed> {
        let secret = self.token.secret.expose_secret().as_bytes();
        let reach = secret.len() - 1;
        let held = std::mem::take(&mut self.held);
        let found = |bytes: &[u8]| holds(bytes, secret);
        if found(&chunk) {
            return Err(TokenEchoed);
        }
        if chunk.len() >= reach {
            // A token begun in what was held ends within the chunk's first
            // `reach` bytes.
            if !held.is_empty() {
                let mut seam = Vec::with_capacity(held.len() + reach);
                seam.extend_from_slice(&held);
                seam.extend_from_slice(&chunk[..reach]);
                if found(&seam) {
                    return Err(TokenEchoed);
                }
            }
            let mut front = chunk;
            self.held = front.split_off(front.len() - token_start_at_end(&front, secret));
            if held.is_empty() {
                return Ok(front);
            }
            let mut joined = bytes::BytesMut::with_capacity(held.len() + front.len());
            joined.extend_from_slice(&held);
            joined.extend_from_slice(&front);
            return Ok(joined.freeze());
        }
        // A chunk shorter than the token: everything since the last release
        // is short, so it is searched whole.
        let mut all = bytes::BytesMut::with_capacity(held.len() + chunk.len());
        all.extend_from_slice(&held);
        all.extend_from_slice(&chunk);
        if found(&all) {
            return Err(TokenEchoed);
        }
        let mut all = all.freeze();
        self.held = all.split_off(all.len() - token_start_at_end(&all, secret));
        Ok(all)
    }

    /// Whether bytes are held back, to be released at the body's end.
    pub(crate) fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// How many bytes are held back.
    pub(crate) fn held_len(&self) -> usize {
        self.held.len()
    }

    /// The body ended cleanly: what was held back is not the token (too
    /// short to be it) and is passed on.
    pub(crate) fn finish(&mut self) -> bytes::Bytes {
        std::mem::take(&mut self.held)
    }
}

/// Whether `haystack` holds `secret`. Each byte equal to the token's first is
/// checked in place, with no set-up: an answer holds few, and building a
/// `memmem` searcher costs about 3,000 instructions, more than searching a
/// typical answer this way (about 200 for 580 bytes). An answer crafted to
/// hold many near misses gets the searcher once the checks have cost twice
/// its length, so the search stays linear whatever Joulo sends.
fn holds(haystack: &[u8], secret: &[u8]) -> bool {
    let Some(last_start) = haystack.len().checked_sub(secret.len()) else {
        return false;
    };
    let Some(&first) = secret.first() else {
        return false;
    };
    let mut work = 2 * haystack.len() + 64;
    for at in memchr::memchr_iter(first, &haystack[..=last_start]) {
        let same = haystack[at..]
            .iter()
            .zip(secret)
            .take_while(|(a, b)| a == b)
            .count();
        if same == secret.len() {
            return true;
        }
        match work.checked_sub(same + 1) {
            Some(left) => work = left,
            None => return memchr::memmem::find(&haystack[at..], secret).is_some(),
        }
    }
    false
}

/// The length of the longest end of `bytes` that is a start of `secret`,
/// shorter than it: what a next chunk could complete into the token.
fn token_start_at_end(bytes: &[u8], secret: &[u8]) -> usize {
    let from = bytes.len().saturating_sub(secret.len() - 1);
    (from..bytes.len())
        .find(|&i| bytes[i] == secret[0] && secret.starts_with(&bytes[i..]))
        .map_or(0, |i| bytes.len() - i)
}

/// What the token files hold right now, whatever it is (a usable token or
/// not), read only to scrub it from a start-up or `check` error: a token
/// pasted into another field of the config is recognised by its value, not
/// only by Joulo's token shape (a 31-character one, or one holding `-`, does
/// not have it). Debug prints a placeholder; the text never leaves this type.
pub struct TokenFileText {
    /// The file's trimmed text, and each whitespace-separated piece of it
    /// (a token torn in two), longest first.
    words: Vec<SecretString>,
}

impl std::fmt::Debug for TokenFileText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenFileText([REDACTED])")
    }
}

impl TokenFileText {
    /// Pieces shorter than this are not scrubbed: they would blank ordinary
    /// words of the message, and hide nothing worth a credential.
    const MIN_LEN: usize = 8;

    /// Reads each of `paths` the safe way (regular files only, bounded,
    /// never blocking), whatever its mode: a file the gateway would refuse
    /// still holds what must not be printed. Files that cannot be read add
    /// nothing.
    pub fn read(paths: &[&Path]) -> TokenFileText {
        let mut words: Vec<SecretString> = Vec::new();
        for path in paths {
            let Ok(bytes) = files::read_regular(path, TOKEN_FILE_LIMIT) else {
                continue;
            };
            let text = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
            let trimmed = text.trim();
            for word in std::iter::once(trimmed).chain(trimmed.split_whitespace()) {
                let known = words.iter().any(|w| w.expose_secret() == word);
                if word.len() >= Self::MIN_LEN && !known {
                    words.push(SecretString::from(word));
                }
            }
        }
        // The whole before its pieces, so a token is replaced in one go.
        words.sort_by_key(|w| std::cmp::Reverse(w.expose_secret().len()));
        TokenFileText { words }
    }

    /// `text` with every occurrence of what the files hold replaced by
    /// `replacement`.
    pub fn redact<'t>(&self, text: &'t str, replacement: &str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for word in &self.words {
            let word = word.expose_secret();
            if out.contains(word) {
                out = Cow::Owned(out.replace(word, replacement));
            }
        }
        out
    }
}

/// The current token, shared by the request path, the reloader and the log
/// redactor. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct TokenSource {
    inner: Arc<TokenSourceInner>,
}

#[derive(Debug)]
struct TokenSourceInner {
    /// The file the token is read from.
    path: PathBuf,
    /// The file `path` is a copy of (systemd's credential), named in messages
    /// about its content since that is the one to edit.
    origin: Option<PathBuf>,
    /// The loaded token; `None` while the file is missing or invalid (fail closed).
    current: RwLock<Option<Arc<UpstreamToken>>>,
    /// Whether `current` holds a token, set with it under its write lock: a cache
    /// hit only needs to know that, and a load of a flag that rarely changes does
    /// not bounce a cache line between event loops the way taking the read lock
    /// (two atomic writes) does.
    loaded_flag: std::sync::atomic::AtomicBool,
    /// Set once the upstream answered 401 for the current token, so the warning
    /// is logged once per token rather than once per request.
    rejected: std::sync::atomic::AtomicBool,
    /// Reloads that loaded a usable token.
    reloads_ok: Counter,
    /// Reloads that found no usable token (and withdrew the old one).
    reloads_failed: Counter,
    /// Upstream 401 answers.
    unauthorized: Counter,
    /// Successful loads so far; the current token's generation.
    generation: std::sync::atomic::AtomicU64,
    /// The file's state just before it was last read, for the watcher.
    loaded: LoadedState,
}

impl TokenSource {
    /// A source for `path` holding no token yet; call [`TokenSource::reload`].
    pub fn new(path: PathBuf) -> TokenSource {
        TokenSource::with_origin(path, None)
    }

    /// A source for `path`, a copy of `origin` made by the platform (systemd's
    /// credential): messages about the token name `origin`.
    pub fn with_origin(path: PathBuf, origin: Option<PathBuf>) -> TokenSource {
        TokenSource {
            inner: Arc::new(TokenSourceInner {
                path,
                origin,
                current: RwLock::new(None),
                loaded_flag: false.into(),
                rejected: false.into(),
                reloads_ok: Counter::default(),
                reloads_failed: Counter::default(),
                unauthorized: Counter::default(),
                generation: 0.into(),
                loaded: LoadedState::default(),
            }),
        }
    }

    /// The token file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What to do when Joulo rejects the token, right for how it was loaded:
    /// a systemd credential is a copy made at start, so a new token needs a
    /// restart; a plain file is re-read when it changes.
    pub(crate) fn rejected_hint(&self) -> String {
        if self.is_credential() {
            format!(
                "put the current token in {} and restart: systemctl restart joulo-gateway (the \
                 unit's credential is a copy made at start, not re-read)",
                self.shown_path().display()
            )
        } else {
            format!(
                "put the current token in {}; it is picked up without a restart",
                self.shown_path().display()
            )
        }
    }

    /// The file an admin edits: the credential's source when known.
    fn shown_path(&self) -> &Path {
        self.inner.origin.as_deref().unwrap_or(&self.inner.path)
    }

    /// Whether the token is a systemd credential (a copy of
    /// `upstream.token_file`, or any file in `$CREDENTIALS_DIRECTORY`),
    /// which systemd writes at start only.
    fn is_credential(&self) -> bool {
        self.inner.origin.is_some()
            || std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(PathBuf::from)
                .is_some_and(|dir| {
                    dir.is_absolute() && dir != Path::new("/") && self.inner.path.starts_with(&dir)
                })
    }

    /// Whether a token is loaded; when not, requests fail closed. Cheaper than
    /// [`Self::current`] for a cache hit, which needs no token itself.
    pub fn is_loaded(&self) -> bool {
        self.inner
            .loaded_flag
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The token to use now, or `None` when requests must fail closed.
    pub fn current(&self) -> Option<Arc<UpstreamToken>> {
        read_unpoisoned(&self.inner.current).clone()
    }

    /// Reads the file again. On failure the current token is withdrawn, so that
    /// a deleted or corrupted secret stops all upstream calls.
    pub fn reload(&self) -> Result<(), TokenError> {
        self.inner.loaded.record(&[&self.inner.path]);
        let result = read_token_file(&self.inner.path, self.inner.origin.as_deref());
        let mut current = write_unpoisoned(&self.inner.current);
        self.inner
            .loaded_flag
            .store(result.is_ok(), std::sync::atomic::Ordering::Release);
        match result {
            Ok(mut token) => {
                self.inner.reloads_ok.inc();
                let joulo_shaped = token.looks_like_joulo();
                // Under the write lock, so generations and tokens pair up.
                token.generation = self
                    .inner
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
                    + 1;
                *current = Some(Arc::new(token));
                self.inner
                    .rejected
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                // After the lock: the log writer reads the token to scrub it.
                drop(current);
                if !joulo_shaped {
                    warn!(
                        path = %self.shown_path().display(),
                        "the token file's token does not look like a Joulo token (joulo_ and \
                         letters and digits); if Joulo answers 401, check what was copied"
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.inner.reloads_failed.inc();
                *current = None;
                Err(e)
            }
        }
    }

    /// The generation of the token loaded now (0 before the first load).
    pub fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records an upstream 401 for a request made with the token of
    /// `generation`, and reports whether it marked the current token rejected
    /// for the first time. A 401 for a token rotated away while the request was
    /// in flight says nothing about the new one and changes nothing.
    pub fn mark_rejected(&self, generation: u64) -> Rejection {
        self.inner.unauthorized.inc();
        if generation != self.generation() {
            return Rejection::Outdated;
        }
        if self
            .inner
            .rejected
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            Rejection::Again
        } else {
            Rejection::First
        }
    }

    /// Records a successful answer for a request made with the token of
    /// `generation`: if it is the current one, Joulo accepts it again.
    pub fn mark_accepted(&self, generation: u64) {
        // A load before the store: the usual case (not rejected) writes nothing
        // to a cache line the event loops share.
        if generation == self.generation()
            && self
                .inner
                .rejected
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.inner
                .rejected
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether Joulo has answered 401 for the current token.
    pub fn is_rejected(&self) -> bool {
        self.inner
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds token reload and upstream 401 counters to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "token_reloads_ok",
            "Token file reads that loaded a usable token",
            self.inner.reloads_ok.clone(),
        );
        registry.register(
            "token_reloads_failed",
            "Token file reads that found no usable token",
            self.inner.reloads_failed.clone(),
        );
        registry.register(
            "upstream_unauthorized",
            "Joulo answers of 401 (token rejected)",
            self.inner.unauthorized.clone(),
        );
    }

    /// Keeps the token current until `shutdown` resolves: re-read when the file
    /// changes (checked every `interval`) or on SIGHUP (`hangups`).
    pub fn watch(
        self,
        interval: Duration,
        hangups: Hangups,
        shutdown: impl Future<Output = ()>,
    ) -> impl Future<Output = ()> {
        let path = self.inner.path.clone();
        let loaded = self.inner.loaded.baseline();
        let credential = self.is_credential();
        crate::watch::watch_files(
            vec![path],
            loaded,
            interval,
            hangups,
            shutdown,
            move |trigger| {
                let before = self.current();
                let had_token = before.is_some();
                match self.reload() {
                    // systemd copies a credential at start only: a SIGHUP finds
                    // the same copy, and "token reloaded" would tell an operator
                    // who edited the source file that the new token is in use.
                    Ok(())
                        if credential && trigger == Trigger::Hangup && {
                            let after = self.current();
                            before.zip(after).is_some_and(|(b, a)| b.same_secret(&a))
                        } =>
                    {
                        warn!(
                            credential = %self.inner.path.display(),
                            file = %self.shown_path().display(),
                            "SIGHUP: the token credential is the copy systemd made at start and has \
                             not changed; a new token written to the file needs a restart \
                             (systemctl restart joulo-gateway)"
                        )
                    }
                    Ok(()) => info!(
                        path = %self.inner.path.display(),
                        trigger = trigger.as_str(),
                        "token reloaded"
                    ),
                    Err(e) if had_token || trigger == Trigger::Hangup => {
                        warn!(error = %e, "token withdrawn: requests get 503 until the file is fixed");
                    }
                    Err(e) => debug!(error = %e, "token file still unusable"),
                }
            },
        )
    }
}

/// What an upstream 401 meant for the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The current token's first rejection: warn, drop what it fetched.
    First,
    /// The current token, already known to be rejected.
    Again,
    /// A token that has since been replaced: nothing to do.
    Outdated,
}

/// Reads and checks the token at `path`; `origin`, when `path` is a copy of
/// it, is the file named in messages about the content.
fn read_token_file(path: &Path, origin: Option<&Path>) -> Result<UpstreamToken, TokenError> {
    let read_err = |source| match source {
        FileError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => TokenError::Missing {
            path: path.to_owned(),
        },
        source => TokenError::Read {
            path: path.to_owned(),
            source,
        },
    };
    let shown = origin.unwrap_or(path);
    // Under systemd the credential is a private copy; the file it was copied
    // from must be as private, or the token is open to others all along.
    if let Some(origin) = origin {
        files::check_source_private(origin).map_err(|source| TokenError::Read {
            path: origin.to_owned(),
            source,
        })?;
    }
    let (bytes, exposure) =
        files::read_private(path, TOKEN_FILE_LIMIT, files::platform_protected(path))
            .map_err(read_err)?;
    if let Some(exposure) = exposure {
        // Swarm mounts secrets 0444 root-owned by default; the platform keeps
        // them from other containers, so this is a warning, not a refusal.
        warn!(
            path = %path.display(),
            problem = %exposure.problem,
            "token file is in a platform secrets mount but open to others"
        );
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| TokenError::Invalid {
        path: shown.to_owned(),
        problem: "is not UTF-8 text",
    })?;
    UpstreamToken::parse(text).map_err(|problem| TokenError::Invalid {
        path: shown.to_owned(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pasted_with_quotes_a_name_or_bearer_are_refused_with_what_to_do() {
        let token = format!("joulo_{}", "Ab3".repeat(11).get(..32).unwrap());
        for (raw, words) in [
            (format!("\"{token}\"\n"), "quotes"),
            (format!("'{token}'"), "quotes"),
            (format!("JOULO_TOKEN={token}\n"), "JOULO_TOKEN="),
            (format!("Bearer {token}"), "Bearer"),
            (format!("bearer {token}"), "Bearer"),
        ] {
            let problem = UpstreamToken::parse(&raw)
                .err()
                .unwrap_or_else(|| panic!("{raw}"));
            assert!(problem.contains(words), "{problem}");
            assert!(!problem.contains(&token));
        }
        let fine = UpstreamToken::parse(&token).unwrap();
        assert!(fine.looks_like_joulo());
        assert!(
            !UpstreamToken::parse("sk-abc_def")
                .unwrap()
                .looks_like_joulo()
        );
        assert!(
            UpstreamToken::parse("abc==").is_ok(),
            "base64 padding is not NAME="
        );
    }

    #[test]
    fn the_rejected_token_hint_fits_how_the_token_was_loaded() {
        // (CREDENTIALS_DIRECTORY is not set for the unit tests.)
        let plain = TokenSource::with_origin(PathBuf::from("/etc/jg/joulo_token"), None);
        let hint = plain.rejected_hint();
        assert!(
            hint.contains("/etc/jg/joulo_token") && hint.contains("without a restart"),
            "{hint}"
        );
        let credential = TokenSource::with_origin(
            PathBuf::from("/run/credentials/joulo-gateway.service/joulo_token"),
            Some(PathBuf::from("/etc/joulo-gateway/joulo_token")),
        );
        let hint = credential.rejected_hint();
        assert!(
            hint.contains("/etc/joulo-gateway/joulo_token")
                && hint.contains("systemctl restart joulo-gateway")
                && !hint.contains("without a restart"),
            "{hint}"
        );
    }

    #[test]
    fn parse_trims_and_rejects_bad_tokens() {
        let t = UpstreamToken::parse("  joulo_abc\n").unwrap();
        assert_eq!(t.authorization_header(), "Bearer joulo_abc");
        assert!(t.authorization_header().is_sensitive());
        for bad in [
            "",
            " \n",
            "joulo abc",
            "a\tb",
            "joulo_\u{7}x",
            "jöulo",
            "a\r\nb",
        ] {
            assert!(UpstreamToken::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = UpstreamToken::parse("joulo_visible").unwrap();
        assert_eq!(format!("{t:?}"), "UpstreamToken([REDACTED])");
        assert!(!format!("{t:?}").contains("visible"));
        let source = TokenSource::new("x".into());
        *source.inner.current.write().unwrap() = Some(Arc::new(t));
        assert!(!format!("{source:?}").contains("visible"));
    }

    #[test]
    fn token_file_text_scrubs_what_the_file_holds_whatever_its_shape_or_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("odd");
        crate::files::write_private(&odd, "  abc-defghij-klm\n").unwrap();
        // Torn in two, and open to others: still scrubbed, halves included.
        let torn = dir.path().join("torn");
        crate::files::write_private(&torn, "firsthalf12 secondhalf34 x").unwrap();
        std::fs::set_permissions(&torn, std::fs::Permissions::from_mode(0o644)).unwrap();
        let missing = dir.path().join("missing");
        let text = TokenFileText::read(&[&odd, &torn, &missing]);
        assert_eq!(
            text.redact(
                "`abc-defghij-klm`, firsthalf12 secondhalf34 x, x secondhalf34",
                "[R]"
            ),
            "`[R]`, [R], x [R]",
            "the whole first, then its pieces; short ones are left"
        );
        assert!(matches!(text.redact("nothing", "[R]"), Cow::Borrowed(_)));
        assert!(!format!("{text:?}").contains("abc"));
    }

    #[test]
    fn errors_never_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        crate::files::write_private(&path, "joulo_half one\n").unwrap();
        let err = read_token_file(&path, None).unwrap_err().to_string();
        assert!(!err.contains("joulo_half"), "{err}");
        assert!(err.contains("whitespace"), "{err}");
    }

    #[test]
    fn only_platform_secrets_mounts_may_be_loose_judged_by_where_a_path_leads() {
        use crate::files::under_platform_mount;
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials");
        std::fs::create_dir(&credentials).unwrap();
        crate::files::write_private(&credentials.join("joulo_token"), "joulo_a").unwrap();
        crate::files::write_private(&dir.path().join("elsewhere"), "joulo_b").unwrap();
        assert!(under_platform_mount(
            &credentials.join("joulo_token"),
            Some(&credentials)
        ));
        assert!(!under_platform_mount(
            &dir.path().join("elsewhere"),
            Some(&credentials)
        ));
        // A link into the mount counts as in it; a link in the mount that
        // leads out of it does not; neither does `..` spelling.
        let into = dir.path().join("into");
        std::os::unix::fs::symlink(credentials.join("joulo_token"), &into).unwrap();
        assert!(under_platform_mount(&into, Some(&credentials)));
        let out = credentials.join("out");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &out).unwrap();
        assert!(!under_platform_mount(&out, Some(&credentials)));
        let dotted = credentials.join("..").join("elsewhere");
        assert!(!under_platform_mount(&dotted, Some(&credentials)));
        // `/` is no mount.
        assert!(!under_platform_mount(
            &dir.path().join("elsewhere"),
            Some(Path::new("/"))
        ));
    }

    #[test]
    fn a_loose_token_file_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        crate::files::write_private(&path, "joulo_a").unwrap();
        let source = TokenSource::new(path.clone());
        source.reload().unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = source.reload().unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("0644"), "{err}");
        assert!(source.current().is_none(), "fails closed");
    }

    #[test]
    fn reload_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        crate::files::write_private(&path, "joulo_a\n").unwrap();
        let source = TokenSource::new(path.clone());
        assert!(!source.is_loaded());
        source.reload().unwrap();
        assert!(source.current().is_some() && source.is_loaded());
        crate::files::write_private(&path, "").unwrap();
        assert!(source.reload().is_err());
        assert!(source.current().is_none() && !source.is_loaded());
        crate::files::write_private(&path, "joulo_b").unwrap();
        source.reload().unwrap();
        assert!(source.is_loaded());
        assert_eq!(
            source.current().unwrap().authorization_header(),
            "Bearer joulo_b"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(source.reload().is_err());
        assert!(source.current().is_none() && !source.is_loaded());
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_replaced_by_a_fifo_a_device_or_a_huge_file_fails_closed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let source = TokenSource::new(path.clone());
        /// Puts something that is no token file at the path.
        type Replace = fn(&Path);
        let replacements: [(Replace, &str); 4] = [
            (
                |p| rustix::fs::mkfifoat(rustix::fs::CWD, p, 0o600.into()).unwrap(),
                "is a FIFO (named pipe), not a regular file",
            ),
            (
                |p| std::fs::create_dir(p).unwrap(),
                "is a directory, not a regular file",
            ),
            (
                |p| std::os::unix::fs::symlink("/dev/zero", p).unwrap(),
                "is a character device, not a regular file",
            ),
            (
                |p| {
                    crate::files::write_private(p, &"a".repeat(TOKEN_FILE_LIMIT as usize + 1))
                        .unwrap()
                },
                "larger than 65536 bytes",
            ),
        ];
        for (replace, expected) in replacements {
            crate::files::write_private(&path, "joulo_a\n").unwrap();
            source.reload().unwrap();
            std::fs::remove_file(&path).unwrap();
            replace(&path);
            // On another thread, so a read that blocks fails the test, not hangs it.
            let (tx, rx) = std::sync::mpsc::channel();
            let reloading = source.clone();
            std::thread::spawn(move || tx.send(reloading.reload()).unwrap());
            let result = rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("reload returned promptly ({expected})"));
            let err = result.expect_err(expected).to_string();
            assert!(
                err.contains(expected) && err.contains("token file"),
                "{err}"
            );
            assert!(!err.contains("joulo_"), "{err}");
            assert!(
                source.current().is_none() && !source.is_loaded(),
                "{expected}"
            );
            // Writing the next good token into a FIFO would wait for a reader.
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                std::fs::remove_dir(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }

    /// Splits `body` into chunks at `cuts` and runs them through a watch
    /// for `token`: what was passed on, and whether it was refused.
    fn stream(token: &str, body: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
        let mut echo = TokenEcho::new(Arc::new(UpstreamToken::parse(token).unwrap()));
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&body.len())) {
            match echo.pass(bytes::Bytes::copy_from_slice(&body[start..end])) {
                Ok(safe) => out.extend_from_slice(&safe),
                Err(TokenEchoed) => return (out, true),
            }
            start = end;
        }
        out.extend_from_slice(&echo.finish());
        (out, false)
    }

    #[test]
    fn an_echoed_token_is_found_split_anywhere_and_no_byte_of_it_is_passed_on() {
        // Not token-shaped: no literal in src/ may look like a real token.
        let token = "joulo_t.Ab3dEf6hIj9kLm2n";
        assert!(
            UpstreamToken::parse(token)
                .unwrap()
                .appears_in(format!("x{token}y").as_bytes())
        );
        assert!(!UpstreamToken::parse(token).unwrap().appears_in(b"joulo_"));
        let body = format!(r#"{{"error":"bad token {token}","jj":"joulo"}}"#);
        let at = body.find(token).unwrap();
        // Every split into two chunks, and every pair of cuts into three.
        for a in 0..=body.len() {
            let (out, refused) = stream(token, body.as_bytes(), &[a]);
            assert!(refused, "split at {a}");
            assert!(out.len() <= at, "split at {a}: passed on {out:?}");
            for b in a..=body.len() {
                let (out, refused) = stream(token, body.as_bytes(), &[a, b]);
                assert!(refused && out.len() <= at, "cuts at {a}, {b}");
            }
        }
        // One byte at a time.
        let cuts: Vec<usize> = (1..body.len()).collect();
        let (out, refused) = stream(token, body.as_bytes(), &cuts);
        assert!(refused && out.len() <= at);
    }

    #[test]
    fn the_search_finds_the_token_among_near_misses_in_linear_time() {
        let secret = b"joulo_t.Ab3dEf6hIj9kLm2n";
        assert!(!holds(b"", secret) && !holds(b"joulo_t", secret));
        assert!(holds(secret, secret));
        // Near misses everywhere, past the point the searcher takes over,
        // with the token at the very end, and not at all.
        let mut crafted = secret[..secret.len() - 1].repeat(1000);
        assert!(!holds(&crafted, secret));
        crafted.extend_from_slice(secret);
        assert!(holds(&crafted, secret));
        let mut few = b"{\"j\":\"jo\"} ".repeat(50);
        few.extend_from_slice(secret);
        assert!(holds(&few, secret));
    }

    #[test]
    fn a_clean_body_passes_whole_whatever_its_chunks_and_only_a_token_start_is_held() {
        // Not token-shaped: no literal in src/ may look like a real token.
        let token = "joulo_t.Ab3dEf6hIj9kLm2n";
        // Near misses: the token's start, the token less its last byte.
        let body = format!(
            r#"{{"a":"{}","b":"{}","c":"jjoulo_"}}"#,
            &token[..11],
            &token[..token.len() - 1]
        );
        for a in 0..=body.len() {
            for b in (a..=body.len()).step_by(7) {
                let (out, refused) = stream(token, body.as_bytes(), &[a, b]);
                assert!(!refused, "cuts at {a}, {b}");
                assert_eq!(out, body.as_bytes(), "cuts at {a}, {b}");
            }
        }
        // Nothing is held back unless the chunk ends in a start of the token.
        let mut echo = TokenEcho::new(Arc::new(UpstreamToken::parse(token).unwrap()));
        assert_eq!(
            &echo
                .pass(bytes::Bytes::from_static(b"{\"chargers\":"))
                .unwrap()[..],
            b"{\"chargers\":"
        );
        assert!(!echo.is_holding());
        assert_eq!(
            &echo
                .pass(bytes::Bytes::from_static(b"[1], \"joul"))
                .unwrap()[..],
            b"[1], \""
        );
        assert_eq!(echo.held_len(), 4);
        assert_eq!(
            &echo.pass(bytes::Bytes::from_static(b"e\"")).unwrap()[..],
            b"joule\""
        );
        assert!(!echo.is_holding());
    }

    #[test]
    fn rejection_is_reported_once_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        crate::files::write_private(&path, "joulo_a").unwrap();
        let source = TokenSource::new(path);
        source.reload().unwrap();
        let first = source.current().unwrap().generation();
        assert_eq!(source.mark_rejected(first), Rejection::First);
        assert_eq!(source.mark_rejected(first), Rejection::Again);
        source.reload().unwrap();
        let second = source.current().unwrap().generation();
        assert_ne!(first, second);
        assert!(!source.is_rejected(), "a new load is not yet rejected");
        // A 401 for the token rotated away while its request was in flight.
        assert_eq!(source.mark_rejected(first), Rejection::Outdated);
        assert!(!source.is_rejected());
        assert_eq!(source.mark_rejected(second), Rejection::First);
        // An old token's success does not clear the new one's rejection; the
        // new one's does.
        source.mark_accepted(first);
        assert!(source.is_rejected());
        source.mark_accepted(second);
        assert!(!source.is_rejected());
    }
}
