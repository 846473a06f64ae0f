//! How the gateway reports what it does: a `tracing` subscriber whose writer scrubs
//! every finished log line of the current token and of anything shaped like a
//! Joulo token, whichever crate emitted it, as a last defence behind code that
//! never logs secrets in the first place.

use std::borrow::Cow;
use std::io::{self, IsTerminal, Write};

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
pub fn init(cfg: &LogConfig, tokens: Option<TokenSource>) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder()
            .parse(&directives)
            .map_err(|e| anyhow::anyhow!("RUST_LOG is not a valid filter: {e}"))?,
        _ => EnvFilter::builder().parse(quiet_hyper(&cfg.level))?,
    };
    let writer = RedactingWriter::new(io::stderr, tokens);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match cfg.format {
        LogFormat::Text => builder.with_ansi(io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// Libraries whose warnings a LAN client can trigger at will, one per
/// connection: hyper (a keep-alive connection left idle past
/// `header_timeout`, a half-sent request, a parse error), h2 (stream resets)
/// and rustls ("Illegal SNI extension" for every handshake that names an IP
/// address). The gateway's own access line and debug lines say what happened.
const CLIENT_TRIGGERED: [&str; 3] = ["hyper", "h2", "rustls"];

/// `level` with the [`CLIENT_TRIGGERED`] libraries held to errors, unless the
/// directive names them: warnings anyone on the LAN can cause would otherwise
/// flood the log and bury the gateway's own.
fn quiet_hyper(level: &str) -> std::borrow::Cow<'_, str> {
    let mut directives = std::borrow::Cow::Borrowed(level);
    for library in CLIENT_TRIGGERED {
        if !level.contains(library) {
            directives = format!("{directives},{library}=error").into();
        }
    }
    directives
}

/// A [`MakeWriter`] that hands out buffers; each is scrubbed and written through
/// when the event is finished, so a secret split across `write` calls is still seen.
pub struct RedactingWriter<M> {
    /// Where scrubbed lines go.
    inner: M,
    /// The live token, so a rotated token is scrubbed as soon as it is loaded.
    tokens: Option<TokenSource>,
}

impl<M> RedactingWriter<M> {
    /// Wraps `inner`, scrubbing `tokens`' current token as well as token shapes.
    pub fn new(inner: M, tokens: Option<TokenSource>) -> Self {
        RedactingWriter { inner, tokens }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingWriter<M> {
    type Writer = EventBuffer<'a, M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EventBuffer {
            inner: self.inner.make_writer(),
            tokens: self.tokens.as_ref(),
            buf: Vec::with_capacity(256),
        }
    }
}

/// One event's text on its way to the real writer.
pub struct EventBuffer<'a, W: Write> {
    /// Where the scrubbed event goes.
    inner: W,
    /// The live token to scrub, if any.
    tokens: Option<&'a TokenSource>,
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
        let token = self.tokens.and_then(|t| t.current());
        let header = token.map(|t| t.authorization_header());
        let secret = header
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        let clean = redact(&text, secret);
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

/// `text` with every occurrence of `secret` and every secret-shaped word (a Joulo
/// token or a device key) replaced by [`REDACTED`].
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
    out
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
            quiet_hyper("debug,rustls=debug"),
            "debug,rustls=debug,hyper=error,h2=error"
        );
        for level in ["info", "joulo_gateway=trace"] {
            let filter = EnvFilter::builder().parse(quiet_hyper(level)).unwrap();
            assert!(filter.to_string().contains("rustls=error"), "{filter}");
        }
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
        std::fs::write(&path, "odd-shaped-token-1234").unwrap();
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
