//! The simulated Joulo API alone, over verified TLS on loopback, for checks
//! that run the gateway in another process (deploy/test-image.sh runs the
//! container image against it):
//!
//!   cargo run --example mock_joulo -- TOKEN_FILE CA_PEM_OUT
//!
//! Accepts the token in TOKEN_FILE, writes its throwaway CA's certificate to
//! CA_PEM_OUT (for `upstream.ca_file`), prints `listening on https://ADDR/PREFIX`
//! once ready and serves until killed. Its certificate names 127.0.0.1 and
//! localhost, so the gateway can reach it without a name lookup.

use anyhow::{Context as _, bail};
use http::Request;
use hyper::body::Incoming;
use joulo_gateway::demo::{self, DemoCa, JouloSim};
use secrecy::SecretString;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [token_file, ca_out] = &args[..] else {
        bail!("usage: mock_joulo TOKEN_FILE CA_PEM_OUT");
    };
    let token = std::fs::read_to_string(token_file).context("TOKEN_FILE")?;
    let sim = JouloSim::new(SecretString::from(token.trim().to_owned()));
    drop(token);
    let ca = DemoCa::generate(&["127.0.0.1", "localhost"])?;
    demo::write_private(std::path::Path::new(ca_out), &ca.ca_pem).context("CA_PEM_OUT")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "listening on https://{}{}",
        listener.local_addr()?,
        demo::API_PREFIX
    );
    demo::serve_tls(
        listener,
        ca.server_config.clone(),
        move |request: Request<Incoming>| {
            let response = sim.respond(&request);
            async move { response }
        },
    )
    .await;
    Ok(())
}
