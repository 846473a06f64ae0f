//! Many keyless LAN devices flooding refusals, for measuring what the flood
//! costs a running gateway and an allowed device (bench/refusal-flood drives
//! it): from each of ADDRESSES consecutive loopback addresses starting at
//! FIRST, CONNECTIONS keep-alive HTTP/1.1 connections send GET /chargers with
//! a wrong device key as fast as the answers come, and open again when
//! closed. Loopback only.
//!
//!   cargo run --release --example flood -- ADDR FIRST ADDRESSES CONNECTIONS SECONDS
//!
//! Prints the answers by status and the connections opened.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, first, addresses, connections, seconds] = &args[..] else {
        bail!("usage: flood ADDR FIRST ADDRESSES CONNECTIONS SECONDS");
    };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let first: Ipv4Addr = first.parse().context("FIRST")?;
    let addresses: u32 = addresses.parse().context("ADDRESSES")?;
    let connections: usize = connections.parse().context("CONNECTIONS")?;
    let until = Instant::now() + Duration::from_secs(seconds.parse().context("SECONDS")?);
    let from: Vec<IpAddr> = (0..addresses)
        .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(first) + i)))
        .collect();
    if !addr.ip().is_loopback() || from.iter().any(|ip| !ip.is_loopback()) {
        bail!("loopback addresses only");
    }
    let request = format!(
        "GET /chargers HTTP/1.1\r\nHost: {addr}\r\nX-Gateway-Key: jgw_notavalidkeynotavalidkeynotava\r\n\r\n"
    );
    let mut tasks = Vec::new();
    for ip in from {
        for _ in 0..connections {
            tasks.push(tokio::spawn(flooder(ip, addr, request.clone(), until)));
        }
    }
    let mut statuses = BTreeMap::new();
    let mut opened = 0;
    for task in tasks {
        let (answers, opens) = task.await?;
        opened += opens;
        for (status, n) in answers {
            *statuses.entry(status).or_insert(0u64) += n;
        }
    }
    let total: u64 = statuses.values().sum();
    let by_status: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!(
        "answers: {total} ({}); connections opened: {opened}",
        by_status.join(", ")
    );
    Ok(())
}

/// One connection slot of a flooding address: requests until `until`,
/// reconnecting whenever the gateway closes. Returns answers by status and
/// the connections it opened.
async fn flooder(
    ip: IpAddr,
    addr: SocketAddr,
    request: String,
    until: Instant,
) -> (BTreeMap<u16, u64>, u64) {
    let mut answers = BTreeMap::new();
    let mut opened = 0;
    while Instant::now() < until {
        let Ok(mut tcp) = connect(ip, addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        opened += 1;
        let mut buf = Vec::with_capacity(4096);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, exchange(&mut tcp, &request, &mut buf)).await {
                Ok(Ok(status)) => *answers.entry(status).or_insert(0) += 1,
                Ok(Err(_)) => break,
                Err(_) => return (answers, opened),
            }
        }
    }
    (answers, opened)
}

async fn connect(ip: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

/// Sends one request and reads its answer (head and a Content-Length body).
async fn exchange(tcp: &mut TcpStream, request: &str, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    tcp.write_all(request.as_bytes()).await?;
    buf.clear();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])?.to_ascii_lowercase();
    let status: u16 = head.get(9..12).context("status")?.parse()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            (name == "content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if head.contains("connection: close") {
        bail!("closed by the gateway");
    }
    Ok(status)
}
