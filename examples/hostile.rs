//! A hostile LAN device, for measuring what it can hold in a running gateway
//! (bench/hostile drives it): HTTP/2 connections that set their receive window
//! to 0, so no answer can ever be sent, and PING every second, so they never
//! look idle. Loopback only: every source and target address must be 127.x or ::1.
//!
//!   cargo run --release --example hostile -- ADDR FROM[,FROM...] CONNECTIONS STREAMS PATH SECONDS
//!
//! Opens CONNECTIONS connections from each FROM address, STREAMS requests for
//! PATH on each, holds them for SECONDS and prints what it got.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use tokio::net::TcpSocket;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, from, connections, streams, path, seconds] = &args[..] else {
        bail!("usage: hostile ADDR FROM[,FROM...] CONNECTIONS STREAMS PATH SECONDS");
    };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let from: Vec<IpAddr> = from
        .split(',')
        .map(|a| a.parse().context("FROM"))
        .collect::<anyhow::Result<_>>()?;
    if !addr.ip().is_loopback() || from.iter().any(|ip| !ip.is_loopback()) {
        bail!("loopback addresses only");
    }
    let connections: usize = connections.parse().context("CONNECTIONS")?;
    let streams: usize = streams.parse().context("STREAMS")?;
    let hold = Duration::from_secs(seconds.parse().context("SECONDS")?);

    let mut tasks = Vec::new();
    for ip in &from {
        for _ in 0..connections {
            tasks.push(tokio::spawn(stuck_connection(
                *ip,
                addr,
                streams,
                path.clone(),
                hold,
            )));
        }
    }
    let (mut opened, mut heads, mut refused) = (0, 0, 0);
    for task in tasks {
        match task.await? {
            Ok((o, h)) => {
                opened += o;
                heads += h;
            }
            Err(_) => refused += 1,
        }
    }
    println!(
        "connections refused or failed: {refused}; streams opened: {opened}; answer heads: {heads}"
    );
    Ok(())
}

/// One connection with a zero receive window: its requests' answers can never
/// be sent. Returns the streams opened and the answer heads received.
async fn stuck_connection(
    ip: IpAddr,
    addr: SocketAddr,
    streams: usize,
    path: String,
    hold: Duration,
) -> anyhow::Result<(usize, usize)> {
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    let tcp = socket.connect(addr).await?;
    let (client, mut connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await?;
    let mut ping = connection.ping_pong().context("ping")?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let pinger = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if ping.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
        }
    });
    let mut answers = Vec::new();
    let mut opened = 0;
    for _ in 0..streams {
        let mut client = match client.clone().ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        let request = http::Request::get(format!("http://{addr}{path}"))
            .body(())
            .expect("a valid request");
        match client.send_request(request, true) {
            Ok((answer, _)) => {
                opened += 1;
                answers.push(answer);
            }
            Err(_) => break,
        }
    }
    let mut heads = 0;
    let _ = tokio::time::timeout(hold, async {
        for answer in answers.iter_mut() {
            if answer.await.is_ok() {
                heads += 1;
            }
        }
        std::future::pending::<()>().await
    })
    .await;
    pinger.abort();
    driver.abort();
    Ok((opened, heads))
}
