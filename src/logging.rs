//! How the gateway reports what it does: a `tracing` subscriber whose writer scrubs
//! every finished log line of the current token and of anything shaped like a
//! Joulo token, whichever crate emitted it, as a last defence behind code that
//! never logs secrets in the first place.

use std::borrow::Cow;
use std::io::{self, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};
use crate::sanitize::REDACTED;
use crate::token::TokenSource;

/// Secret shapes scrubbed wherever they appear: a prefix and at least this many
/// ASCII alphanumerics. Joulo's personal API tokens, and the gateway's own device
/// keys.
const SECRET_SHAPES: [(&str, usize); 2] = [("joulo_", 32), (crate::access::KEY_PREFIX, 32)];

/// Installs the process-wide subscriber: `RUST_LOG` if set, else `cfg.level`;
/// text or JSON lines on stderr, scrubbed of `tokens`' current token.
pub fn init(cfg: &LogConfig, tokens: Option<TokenSource>) -> anyhow::Result<LogLevel> {
    // RUST_LOG gets the same quieting as `[log] level`: a LAN client must not
    // be able to flood the log because an operator turned on info by hand.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|directives| !directives.trim().is_empty());
    let filter = match &from_env {
        Some(directives) => EnvFilter::builder()
            .parse(quiet_hyper(directives))
            .map_err(|e| anyhow::anyhow!("RUST_LOG is not a valid filter: {e}"))?,
        None => EnvFilter::builder().parse(quiet_hyper(&cfg.level))?,
    };
    let writer = RedactingWriter::new(io::stderr, tokens).with_format(cfg.format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let env = from_env.is_some();
    let installed = match cfg.format {
        // No colours: a log line holds no escape sequence, not even ours, so
        // one a client smuggles in is always visible as such (see
        // `escape_controls`).
        LogFormat::Text => {
            let builder = builder.with_ansi(false).with_filter_reloading();
            let handle = builder.reload_handle();
            builder
                .try_init()
                .map(|()| LogLevel::new(env, move |f| handle.reload(f)))
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            builder
                .try_init()
                .map(|()| LogLevel::new(env, move |f| handle.reload(f)))
        }
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// Swaps the installed subscriber's filter.
type SetFilter =
    Box<dyn Fn(EnvFilter) -> Result<(), tracing_subscriber::reload::Error> + Send + Sync>;

/// Changes the installed subscriber's level: `[log] level` on a config reload.
pub struct LogLevel {
    /// Swaps the filter in; `None` when nothing was installed (tests).
    set: Option<SetFilter>,
    /// Whether RUST_LOG chose the filter: it overrides the config's level.
    from_env: bool,
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevel")
            .field("from_env", &self.from_env)
            .finish_non_exhaustive()
    }
}

impl LogLevel {
    fn new(
        from_env: bool,
        set: impl Fn(EnvFilter) -> Result<(), tracing_subscriber::reload::Error> + Send + Sync + 'static,
    ) -> LogLevel {
        LogLevel {
            set: Some(Box::new(set)),
            from_env,
        }
    }

    /// A level that changes nothing: for a gateway whose caller installed its
    /// own subscriber (tests, the demo).
    pub fn fixed() -> LogLevel {
        LogLevel {
            set: None,
            from_env: false,
        }
    }

    /// Applies `level` (already validated as a filter) from a reloaded
    /// config. `Ok(false)` when RUST_LOG is in charge or nothing is installed.
    pub fn apply(&self, level: &str) -> Result<bool, String> {
        let Some(set) = self.set.as_ref().filter(|_| !self.from_env) else {
            return Ok(false);
        };
        let filter = EnvFilter::builder()
            .parse(quiet_hyper(level))
            .map_err(|e| e.to_string())?;
        set(filter).map(|()| true).map_err(|e| e.to_string())
    }
}

/// Libraries whose warnings a LAN client can trigger at will, one per
/// connection: hyper (a keep-alive connection left idle past
/// `header_timeout`, a half-sent request, a parse error), h2 (stream resets)
/// and rustls ("Illegal SNI extension" for every handshake that names an IP
/// address). The gateway's own access line and debug lines say what happened.
const CLIENT_TRIGGERED: [&str; 3] = ["hyper", "h2", "rustls"];

/// `level` with the [`CLIENT_TRIGGERED`] libraries held to errors, unless the
/// directive names them or sets everything to debug or trace (someone
/// debugging wants all of it): warnings anyone on the LAN can cause would
/// otherwise flood the log and bury the gateway's own.
fn quiet_hyper(level: &str) -> std::borrow::Cow<'_, str> {
    let everything_verbose = level.split(',').map(str::trim).any(|directive| {
        ["debug", "trace"]
            .iter()
            .any(|verbose| directive.eq_ignore_ascii_case(verbose))
    });
    let mut directives = std::borrow::Cow::Borrowed(level);
    if everything_verbose {
        return directives;
    }
    for library in CLIENT_TRIGGERED {
        // Named as a target itself (or a module of it), not as part of
        // another crate's name: `rustls_native_certs=info` is not rustls.
        let named = level.split(',').any(|directive| {
            let target = directive.trim().split(['=', '[']).next().unwrap_or("");
            target == library || target.starts_with(&format!("{library}::"))
        });
        if !named {
            directives = format!("{directives},{library}=error").into();
        }
    }
    directives
}

/// A [`MakeWriter`] that hands out buffers; each is scrubbed and written through
/// when the event is finished, so a secret split across `write` calls is still seen.
struct RedactingWriter<M> {
    /// Where scrubbed lines go.
    inner: M,
    /// The live token, so a rotated token is scrubbed as soon as it is loaded.
    tokens: Option<TokenSource>,
    /// How control characters are escaped: text or JSON.
    format: LogFormat,
}

impl<M> RedactingWriter<M> {
    /// Wraps `inner`, scrubbing `tokens`' current token as well as token
    /// shapes, and escaping control characters for text lines.
    pub(crate) fn new(inner: M, tokens: Option<TokenSource>) -> Self {
        RedactingWriter {
            inner,
            tokens,
            format: LogFormat::Text,
        }
    }

    /// The same writer for lines of `format`.
    fn with_format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingWriter<M> {
    type Writer = EventBuffer<'a, M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EventBuffer {
            inner: self.inner.make_writer(),
            tokens: self.tokens.as_ref(),
            format: self.format,
            buf: Vec::with_capacity(256),
        }
    }
}

/// One event's text on its way to the real writer.
struct EventBuffer<'a, W: Write> {
    /// Where the scrubbed event goes.
    inner: W,
    /// The live token to scrub, if any.
    tokens: Option<&'a TokenSource>,
    /// How control characters are escaped.
    format: LogFormat,
    /// The event's text so far.
    buf: Vec<u8>,
}

impl<W: Write> Write for EventBuffer<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buf);
        // Compared in place: no copy of the token is made for a log line.
        let token = self.tokens.and_then(|t| t.current());
        let text = match &token {
            Some(token) => token.redact_from(&text, REDACTED),
            None => text,
        };
        let clean = redact(&text, None);
        let clean = escape_controls(&clean, self.format);
        let result = self.inner.write_all(clean.as_bytes());
        self.buf.clear();
        result.and_then(|()| self.inner.flush())
    }
}

impl<W: Write> Drop for EventBuffer<'_, W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// `text` with every occurrence of `secret`, every secret-shaped word (a Joulo
/// token or a device key) and the value of every `token=` / `access_token=`
/// in a URL (any case) replaced by [`REDACTED`].
pub fn redact<'t>(text: &'t str, secret: Option<&str>) -> Cow<'t, str> {
    let mut out = Cow::Borrowed(text);
    if let Some(secret) = secret.filter(|s| !s.is_empty())
        && out.contains(secret)
    {
        out = Cow::Owned(out.replace(secret, REDACTED));
    }
    for (prefix, body_len) in SECRET_SHAPES {
        if out.contains(prefix) {
            out = Cow::Owned(redact_shape(&out, prefix, body_len));
        }
    }
    if let Some(clean) = redact_query_credentials(&out) {
        out = Cow::Owned(clean);
    }
    out
}

/// `text` with the value after each `?token=`, `&token=`, `?access_token=` or
/// `&access_token=` (ASCII case-insensitive) replaced, up to the next `&`,
/// `#`, quote, backtick or whitespace; `None` when there is none. An old
/// Home Assistant URL pasted into the config carries the token this way,
/// whatever its shape.
fn redact_query_credentials(text: &str) -> Option<String> {
    // Most lines have none: no copy for them.
    if !text
        .as_bytes()
        .windows(6)
        .any(|w| w.eq_ignore_ascii_case(b"token="))
    {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let mut starts = Vec::new();
    for name in ["token=", "access_token="] {
        for (at, _) in lower.match_indices(name) {
            let before = at.checked_sub(1).map(|i| lower.as_bytes()[i]);
            let is_access = name == "token=" && lower[..at].ends_with("access_");
            if matches!(before, Some(b'?' | b'&' | b'#' | b';')) && !is_access {
                starts.push(at + name.len());
            }
        }
    }
    if starts.is_empty() {
        return None;
    }
    starts.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for start in starts {
        let end = text[start..]
            // A backslash ends it too: in a JSON line it starts the escape of
            // the quote that closes the string, which must stay whole.
            .find(|c: char| matches!(c, '&' | '#' | '"' | '\'' | '`' | '\\') || c.is_whitespace())
            .map_or(text.len(), |n| start + n);
        out.push_str(&text[copied..start]);
        if text[start..end] != *REDACTED {
            out.push_str(REDACTED);
        } else {
            out.push_str(&text[start..end]);
        }
        copied = end;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// Whether `c` must not reach a log line as it is: a control character (C0,
/// DEL, C1), a bidirectional formatting character that could make a line read
/// differently from what it holds (U+202E and friends), or a line or paragraph
/// separator.
fn must_escape(c: char) -> bool {
    // Other spaces than ' ' (U+00A0, U+3000, ...) would let text in a path
    // pass for the next field of a text line.
    (c.is_whitespace() && c != ' ')
        || c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// One finished event with every `must_escape` character written as an
/// escape, so nothing a client sent can start a forged line, move the cursor
/// or reorder what a reader sees. The event's own final newline stays. JSON
/// lines get JSON's `\uXXXX` (the formatter has already escaped C0 controls;
/// these characters can only stand inside its strings); text lines `\u{..}`.
fn escape_controls(line: &str, format: LogFormat) -> Cow<'_, str> {
    let body = line.strip_suffix('\n').unwrap_or(line);
    if !body.chars().any(must_escape) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in body.chars() {
        if !must_escape(c) {
            out.push(c);
            continue;
        }
        let code = u32::from(c);
        match format {
            LogFormat::Json => {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\u{code:04x}"));
            }
            LogFormat::Text => {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\u{{{code:x}}}"));
            }
        }
    }
    if body.len() < line.len() {
        out.push('\n');
    }
    Cow::Owned(out)
}

fn redact_shape(text: &str, prefix: &str, body_len: usize) -> String {
    let mut result = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let after = &rest[at + prefix.len()..];
        let run = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        result.push_str(&rest[..at]);
        if run >= body_len {
            result.push_str(REDACTED);
            rest = &after[run..];
        } else {
            result.push_str(prefix);
            rest = after;
        }
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn client_triggered_library_warnings_are_held_back_unless_asked_for() {
        assert_eq!(
            quiet_hyper("info"),
            "info,hyper=error,h2=error,rustls=error"
        );
        assert_eq!(
            quiet_hyper("info,rustls=debug"),
            "info,rustls=debug,hyper=error,h2=error"
        );
        assert_eq!(quiet_hyper("trace"), "trace", "debugging: everything");
        assert_eq!(
            quiet_hyper("info,rustls_native_certs=info"),
            "info,rustls_native_certs=info,hyper=error,h2=error,rustls=error",
            "another crate's name containing rustls does not count"
        );
        assert_eq!(
            quiet_hyper("info,hyper::proto=debug"),
            "info,hyper::proto=debug,h2=error,rustls=error"
        );
        assert_eq!(
            quiet_hyper("warn,joulo_gateway=debug"),
            "warn,joulo_gateway=debug,hyper=error,h2=error,rustls=error"
        );
        for level in ["info", "joulo_gateway=trace"] {
            let filter = EnvFilter::builder().parse(quiet_hyper(level)).unwrap();
            assert!(filter.to_string().contains("rustls=error"), "{filter}");
        }
    }

    #[test]
    fn control_and_bidi_characters_are_escaped_and_the_newline_kept() {
        let forged =
            "path=/chargers\n2026-11-30 INFO forged line \u{1b}[2J \u{202e}gnp.exe \u{85}\n";
        let text = escape_controls(forged, LogFormat::Text);
        assert_eq!(
            text,
            "path=/chargers\\u{a}2026-11-30 INFO forged line \\u{1b}[2J \\u{202e}gnp.exe \\u{85}\n"
        );
        assert_eq!(text.matches('\n').count(), 1);
        let json = escape_controls("{\"path\":\"a\u{202e}b\u{9b}\"}\n", LogFormat::Json);
        assert_eq!(json, "{\"path\":\"a\\u202eb\\u009b\"}\n");
        let value: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(
            value["path"], "a\u{202e}b\u{9b}",
            "still valid JSON, same text"
        );
        assert!(matches!(
            escape_controls("plain line\n", LogFormat::Text),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn token_shapes_are_redacted() {
        let t = format!("joulo_{}", "aB3".repeat(11).split_at(32).0);
        let line = format!("x token={t}&y=1 Bearer {t}.");
        let out = redact(&line, None);
        assert_eq!(out, "x token=[REDACTED]&y=1 Bearer [REDACTED].");
        assert_eq!(
            redact("joulo_short and joulo_", None),
            "joulo_short and joulo_"
        );
    }

    #[test]
    fn credential_values_in_urls_are_redacted_whatever_their_shape() {
        assert_eq!(
            redact(
                "`https://x/api?TOKEN=abc123&limit=1#f` and &access_token=q\"",
                None
            ),
            "`https://x/api?TOKEN=[REDACTED]&limit=1#f` and &access_token=[REDACTED]\""
        );
        assert_eq!(
            redact("my_token=1 tokens=2 ?token=", None),
            "my_token=1 tokens=2 ?token=[REDACTED]"
        );
        assert_eq!(redact("?token=[REDACTED]", None), "?token=[REDACTED]");
        // In a JSON line the value ends before the backslash of an escaped
        // quote, so the line stays valid JSON.
        let line = r#"{"path":"/x&token=a\"b","status":400}"#;
        let redacted = redact(line, None);
        assert_eq!(
            redacted,
            r#"{"path":"/x&token=[REDACTED]\"b","status":400}"#
        );
        assert!(serde_json::from_str::<serde_json::Value>(&redacted).is_ok());
        assert_eq!(
            redact("u#token=abc;x ;access_token=q", None),
            "u#token=[REDACTED] ;access_token=[REDACTED]"
        );
        assert!(matches!(redact("no credentials", None), Cow::Borrowed(_)));
    }

    #[test]
    fn the_current_token_is_redacted_whatever_its_shape() {
        assert_eq!(
            redact("a secret-xyz b secret-xyz", Some("secret-xyz")),
            "a [REDACTED] b [REDACTED]"
        );
        assert!(matches!(
            redact("nothing here", Some("zz")),
            Cow::Borrowed(_)
        ));
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_subscriber_writer_scrubs_the_loaded_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        crate::files::write_private(&path, "odd-shaped-token-1234").unwrap();
        let tokens = TokenSource::new(path);
        tokens.reload().unwrap();
        let sink = Sink::default();
        let out = sink.clone();
        let writer = RedactingWriter::new(move || out.clone(), Some(tokens));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(writer)
            .finish();
        let shaped = format!("joulo_{}", "Z9".repeat(16));
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(header = "Bearer odd-shaped-token-1234", other = %shaped, "leak attempt");
        });
        let logged = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("leak attempt"), "{logged}");
        assert!(!logged.contains("odd-shaped-token-1234"), "{logged}");
        assert!(!logged.contains(&shaped), "{logged}");
        assert_eq!(logged.matches(REDACTED).count(), 2, "{logged}");
    }
}
