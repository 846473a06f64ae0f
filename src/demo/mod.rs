//! `joulo-gateway demo`: a simulated Joulo API on loopback behind verified TLS, a
//! generated token in a real token file, and the real gateway in front of it, so a
//! newcomer sees the whole path work without a Joulo account.

mod sim;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tracing::debug;

use crate::config::{Config, LogConfig};
use crate::gateway::Gateway;

pub use crate::throwaway_ca::DemoCa;
pub use sim::{API_PREFIX, JouloSim};

/// Bound on a TLS handshake with the simulated API.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `handler` over TLS on `listener` (HTTP/1.1 or HTTP/2 by ALPN) until the
/// task is dropped. The simulated API and the tests' mock upstreams run on this.
pub async fn serve_tls<F, Fut>(listener: TcpListener, tls: Arc<rustls::ServerConfig>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(error = %e, "simulated API: TLS handshake failed"),
                Err(_) => return debug!("simulated API: TLS handshake timed out"),
            };
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// A fresh token in Joulo's shape: `joulo_` and 32 random alphanumerics.
pub fn generate_token() -> SecretString {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut token = String::with_capacity(38);
    token.push_str("joulo_");
    while token.len() < 38 {
        let mut byte = [0u8; 1];
        getrandom::fill(&mut byte).expect("the OS random source works");
        // Rejection sampling keeps every character equally likely.
        if usize::from(byte[0]) < 248 {
            token.push(char::from(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]));
        }
    }
    SecretString::from(token)
}

/// Runs the demo until `shutdown` resolves or SIGHUP arrives. `listen` is where
/// the gateway binds; when it is taken, a free loopback port is used instead.
pub async fn run(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let dir = DemoDir::create()?;
    let token = generate_token();
    let ca = DemoCa::generate(&["localhost"])?;

    let sim = JouloSim::new(token.clone());
    let sim_listener = TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = sim_listener.local_addr()?;
    let sim_task = tokio::spawn(serve_tls(sim_listener, ca.server_config.clone(), {
        let sim = sim.clone();
        move |request: Request<Incoming>| {
            let response = sim.respond(&request);
            async move { response }
        }
    }));

    let token_file = dir.write_private("joulo_token", token.expose_secret())?;
    drop(token);
    let ca_file = dir.write_private("demo-ca.pem", &ca.ca_pem)?;
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            TcpListener::bind((listen.ip(), 0)).await?
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {listen}")),
    };
    let gateway_addr = listener.local_addr()?;
    // The simulated API has no budget to protect: limits generous enough
    // that the self-check and every printed curl, pasted in order, get 2xx
    // (with the real defaults the self-check used the device's burst).
    let config_text = format!(
        "# Written by `joulo-gateway demo`; deleted when it stops.\n\
         [server]\nlisten = \"{gateway_addr}\"\n\n\
         [upstream]\nbase_url = \"https://localhost:{port}{prefix}\"\n\
         token_file = \"{token}\"\nca_file = \"{ca}\"\n\n\
         [limits]\nupstream_per_minute = 600\nupstream_burst = 100\n\
         device_upstream_share = 1.0\n",
        port = sim_addr.port(),
        prefix = sim::API_PREFIX,
        token = token_file.display(),
        ca = ca_file.display(),
    );
    let config_file = dir.write_private("gateway.toml", &config_text)?;
    // A device with its own key, as `joulo-gateway device add demo` makes
    // one: the demo goes the way a real setup does.
    let device_key = crate::devices::add(
        &dir.path.join(crate::config::defaults::DEVICES_FILE),
        "demo",
        &crate::devices::DEFAULT_SCOPES,
        &[],
    )?;
    let config = Config::load(&config_file)?;

    let tokens = Gateway::token_source(&config);
    crate::logging::init(&LogConfig::default(), Some(tokens.clone()))?;
    // The demo belongs to its terminal: closing it (SIGHUP) ends the demo and
    // deletes its files, rather than leaving it running re-parented to init.
    let gateway = Gateway::build_with(&config, tokens)?.stop_on_hangup();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(gateway.serve(listener, async {
        let _ = stop_rx.await;
    }));

    println!("\njoulo-gateway demo");
    println!(
        "  simulated Joulo API  https://localhost:{}{} (TLS, throwaway CA)",
        sim_addr.port(),
        sim::API_PREFIX
    );
    println!(
        "  generated token      in {} (never printed)",
        token_file.display()
    );
    println!("  gateway              http://{gateway_addr}");
    println!("  config               {}", config_file.display());
    println!(
        "  device `demo`        key {device_key} (made as `joulo-gateway device add demo` \
         makes one; the requests below carry it)\n"
    );

    self_check(gateway_addr, &sim, &device_key).await;

    let base = format!("http://{gateway_addr}");
    let key = format!("-H 'X-Gateway-Key: {device_key}'");
    println!("\nTry it (Ctrl-C stops the demo); each answers 200:");
    println!("  curl -s {key} {base}/chargers");
    println!("  curl -s {key} '{base}/sessions?limit=2&offset=0'");
    println!("  curl -s {key} {base}/energy");
    println!("  curl -s {key} {base}/ere-position");
    println!(
        "  curl -s {key} '{base}/chargers?token=joulo_OldHomeAssistantConfigToken00'   # token stripped"
    );
    println!("  curl -s -u demo:{device_key} {base}/me   # the key as Home Assistant sends it");
    println!(
        "Refused (the self-check above shows more): the same without the key, from another device: 401."
    );

    tokio::select! {
        () = shutdown => {
            let _ = stop_tx.send(());
            serving.await?;
        }
        served = &mut serving => served?,
    }
    sim_task.abort();
    println!(
        "\ndemo stopped: the simulated API saw {} requests, {} `token` query parameters.",
        sim.stats.requests.load(Ordering::Relaxed),
        sim.stats.token_params.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Calls the gateway as a device would and prints what came back.
async fn self_check(gateway: SocketAddr, sim: &JouloSim, key: &str) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let fake = format!("joulo_{}", "Leaked".repeat(6).get(..32).unwrap_or_default());
    let checks = [
        ("/chargers", "live charger status"),
        ("/chargers", "again: answered from the cache"),
        ("/sessions?limit=2", "the two newest sessions"),
        ("/energy", "monthly totals"),
        (
            &*format!("/sessions?limit=1&token={fake}"),
            "an old config still sending ?token=",
        ),
        ("/chargers/../me", "path traversal"),
        ("/teleport", "unknown route"),
        (
            "/sessions?limit=1&_method=DELETE",
            "a parameter Joulo does not take",
        ),
    ];
    println!("Self-check, through the gateway:");
    for (target, what) in checks {
        let shown = target.replace(&fake, "joulo_…");
        let uri = format!("http://{gateway}{target}");
        let request = Request::get(uri)
            .header("x-gateway-key", key)
            .body(Empty::new());
        let result = match request {
            Ok(request) => client.request(request).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(response) => {
                let status = response.status();
                let cache = response
                    .headers()
                    .get("x-cache")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| format!(" X-Cache: {v}"))
                    .unwrap_or_default();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut text = String::from_utf8_lossy(&body).into_owned();
                if text.len() > 96 {
                    text.truncate(text.char_indices().nth(93).map_or(text.len(), |(i, _)| i));
                    text.push_str("...");
                }
                println!("  GET {shown:<34} {status}{cache}  ({what})\n      {text}");
            }
            Err(e) => println!("  GET {shown:<34} failed: {e}"),
        }
    }
    println!(
        "  The simulated API has seen {} `token` query parameters so far (the gateway strips them).",
        sim.stats.token_params.load(Ordering::Relaxed)
    );
}

/// A private temporary folder for the demo's token, CA and config, removed on drop.
struct DemoDir {
    path: PathBuf,
}

impl DemoDir {
    fn create() -> anyhow::Result<DemoDir> {
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).context("OS random source")?;
        let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("joulo-gateway-demo-{name}"));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(DemoDir { path })
    }

    fn write_private(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.path.join(name);
        write_private(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub use crate::files::write_private;
