//! Who gets a connection: `server.max_connections` and
//! `server.max_connections_per_ip` kept as clients connect, the connection
//! asked to make room when every slot is taken, and the quick answer a refused
//! client gets. The accept loop never waits here: a newcomer is served, or
//! refused at once.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tracing::debug;

use crate::access::{AccessError, address_key};
use crate::sync::lock_unpoisoned;

/// How long a connection asked to close may take to finish what it is doing
/// (an answer under way, an HTTP/2 stream draining after GOAWAY, a TLS
/// handshake) before it is dropped, whatever state it is in. A client that
/// never reads, or keeps a stream blocked on flow control, holds its slot no
/// longer than this once a newcomer needs it.
pub(crate) const EVICTION_GRACE: Duration = Duration::from_secs(2);

/// How long a refused client is given to send its request head, and then to
/// read its answer and close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The most of a refused client's request head read before it is answered.
const MAX_REFUSED_HEAD: usize = 16 * 1024;

/// Refused connections being answered at once; past this they are held
/// unanswered (see [`HOLD_REFUSED`]), so a flood of them costs a bounded
/// number of tasks.
const MAX_REFUSALS_IN_FLIGHT: usize = 32;

/// How long a refused connection that gets no answer (from a flooding
/// address, or outside `[access] allow` or past its address's quota once
/// the answers in flight are taken or on an HTTPS listener) is held,
/// unread, before it is closed. Closed at once, a client that reconnects
/// whenever it is closed made the gateway accept and close 36,000
/// connections a second (500 addresses, 1,000 connections against 512
/// places), the listen queue overflowed and an allowed device's SYN waited
/// a second for its retransmit; held, each of its loops costs one accept a
/// second.
const HOLD_REFUSED: Duration = Duration::from_secs(1);

/// The most refused connections held at once (fewer when the process may
/// not open that many files; see [`held_places`]).
const MAX_HELD_REFUSED: usize = 4096;

/// Files kept for everything but connections: the listener, upstream and
/// MQTT connections, the watched files, the log.
const FILES_HEADROOM: usize = 128;

/// Open connections, for the connection limits and for choosing which
/// connection makes room.
#[derive(Clone)]
pub(crate) struct Admission {
    /// The open connections and their counts, behind one lock: admission and
    /// eviction must see the same picture.
    registry: Arc<Mutex<Registry>>,
    /// `server.max_connections`.
    max: usize,
    /// Connections admitted past `max` while the ones asked to make room
    /// finish; past `max + reserve` newcomers are refused.
    reserve: usize,
    /// `server.max_connections_per_ip`, per [`address_key`] (an IPv6 client
    /// counts as its /64: one device can use any address of its /64).
    per_address: usize,
    /// Woken whenever the last connection ends, for the drain on shutdown.
    drained: Arc<Notify>,
}

#[derive(Default)]
struct Registry {
    /// The next connection's number: numbers grow with age.
    next: u64,
    /// Every open connection by number, oldest first.
    open: BTreeMap<u64, Open>,
    /// Open connections by [`address_key`]; an address with none has no entry.
    per_address: HashMap<IpAddr, usize>,
    /// Open connections already asked to close.
    asked: usize,
}

/// One open connection as the registry sees it.
struct Open {
    /// Its [`address_key`].
    address: IpAddr,
    /// How it is asked to close.
    close: Arc<CloseSignal>,
}

/// Why a connection was refused as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address is outside `[access] allow`.
    Network,
    /// The address already has `server.max_connections_per_ip` connections.
    PerIpQuota,
    /// Every slot and every spare one is taken while connections make room,
    /// and the client's address holds about as many as any other.
    Full,
    /// Every slot is taken and the client's address is flooding the gateway
    /// with refused requests: it may not make another connection go. Closed
    /// unanswered: it has had its answers.
    Flooding,
}

impl Refusal {
    /// For log fields.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Network => "outside [access] allow",
            Refusal::PerIpQuota => "past server.max_connections_per_ip",
            Refusal::Full => "past server.max_connections, connections making room",
            Refusal::Flooding => {
                "past server.max_connections, from an address past its allowance of refusals"
            }
        }
    }
}

impl Admission {
    /// Limits from `[server]`: `max` connections at once, `per_address` from
    /// one address.
    pub(crate) fn new(max: usize, per_address: usize) -> Admission {
        Admission {
            registry: Arc::default(),
            max,
            reserve: (max / 8).clamp(2, 64),
            per_address,
            drained: Arc::new(Notify::new()),
        }
    }

    /// A place for a connection from `ip`, or why there is none. Past
    /// `server.max_connections` the newcomer is still served, and the oldest
    /// connection of the address holding the most is asked to close (see
    /// [`Ticket::close_signal`]): a newcomer never waits for a slot, and a
    /// device holding many connections makes room before one holding few.
    ///
    /// `flooding` says whether the address is flooding the gateway with
    /// refused requests (asked only once every slot is taken): such a
    /// newcomer makes no one go. Without this, 500 keyless addresses holding
    /// two connections each, and opening another whenever one was dropped,
    /// kept the gateway making room for them (160,000 connections in 5 s),
    /// and an allowed device's connections were refused or waited a second
    /// for their SYN to be taken (bench/refusal-flood).
    pub(crate) fn admit(
        &self,
        ip: IpAddr,
        flooding: impl FnOnce() -> bool,
    ) -> Result<Ticket, Refusal> {
        let address = address_key(ip);
        let mut registry = lock_unpoisoned(&self.registry);
        let count = registry.per_address.get(&address).copied().unwrap_or(0);
        if count >= self.per_address {
            return Err(Refusal::PerIpQuota);
        }
        // The places of connections asked to make room are for the devices
        // they made room for, not for the flooder.
        if registry.open.len() >= self.max && flooding() {
            return Err(Refusal::Flooding);
        }
        if registry.open.len() >= self.max + self.reserve {
            // A client that reconnects as fast as its connections are
            // dropped would otherwise keep every spare place to itself: a
            // newcomer from an address holding fewer connections than the
            // busiest takes the busiest's oldest at once, without its grace.
            // Past twice the spare places (the dropped ones not yet gone),
            // no one is admitted.
            // Nor can many addresses holding one headless connection each
            // (silent or slowloris): the oldest of those goes.
            // An address that holds a headless connection itself may not:
            // that would let silent connections take each other's places
            // as fast as they reconnect.
            if registry.open.len() >= self.max + 2 * self.reserve
                || !(registry.drop_one_busier_than(count)
                    || (!registry.holds_headless(address) && registry.drop_oldest_headless()))
            {
                return Err(Refusal::Full);
            }
        }
        let id = registry.next;
        registry.next += 1;
        let close = Arc::new(CloseSignal::default());
        registry.open.insert(
            id,
            Open {
                address,
                close: close.clone(),
            },
        );
        *registry.per_address.entry(address).or_insert(0) += 1;
        // Connections that will stay once those already asked have gone.
        if registry.open.len() - registry.asked > self.max {
            registry.ask_one();
        }
        drop(registry);
        Ok(Ticket {
            id,
            close,
            admission: self.clone(),
        })
    }

    /// The most connections open at once: every slot and twice the spare
    /// places (the dropped ones not yet gone).
    pub(crate) fn most_open(&self) -> usize {
        self.max + 2 * self.reserve
    }

    /// Open connections.
    pub(crate) fn open(&self) -> usize {
        lock_unpoisoned(&self.registry).open.len()
    }

    /// Waits until no connection is open.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Registry {
    /// Drops at once the oldest connection of the address holding the most,
    /// if it holds at least two more than `count`; whether it did.
    fn drop_one_busier_than(&mut self, count: usize) -> bool {
        let Some((&busiest, &held)) = self.per_address.iter().max_by_key(|(_, held)| **held) else {
            return false;
        };
        if held < count + 2 {
            return false;
        }
        let oldest = self
            .open
            .values()
            .find(|open| open.address == busiest && !open.close.is_dropped());
        let Some(open) = oldest else {
            return false;
        };
        if !open.close.is_asked() {
            self.asked += 1;
        }
        open.close.drop_now();
        debug!(
            address = %busiest,
            "every connection slot and spare place taken: a connection of the busiest address was dropped"
        );
        true
    }

    /// Whether `address` holds a connection that has sent no request head.
    fn holds_headless(&self, address: IpAddr) -> bool {
        self.open
            .values()
            .any(|open| open.address == address && !open.close.is_headed())
    }

    /// Drops at once the oldest connection that has sent no request head
    /// yet, if there is one; whether it did.
    fn drop_oldest_headless(&mut self) -> bool {
        let Some(open) = self
            .open
            .values()
            .find(|open| !open.close.is_headed() && !open.close.is_dropped())
        else {
            return false;
        };
        if !open.close.is_asked() {
            self.asked += 1;
        }
        open.close.drop_now();
        debug!(
            address = %open.address,
            "every connection slot and spare place taken: the oldest connection without a request was dropped"
        );
        true
    }

    /// Asks one connection to close: among those not yet asked, the oldest of
    /// the address with the most open connections.
    fn ask_one(&mut self) {
        let mut chosen: Option<(u64, usize)> = None;
        for (id, open) in &self.open {
            if open.close.is_asked() {
                continue;
            }
            let held = self.per_address.get(&open.address).copied().unwrap_or(0);
            if chosen.is_none_or(|(_, most)| held > most) {
                chosen = Some((*id, held));
            }
        }
        if let Some((id, _)) = chosen
            && let Some(open) = self.open.get(&id)
        {
            open.close.ask();
            self.asked += 1;
            debug!(
                address = %open.address,
                "every connection slot taken: a connection of the busiest address was asked to close"
            );
        }
    }
}

/// A connection's place under the limits; given back when dropped.
pub(crate) struct Ticket {
    /// Its number in the registry.
    id: u64,
    /// How it is asked to close.
    close: Arc<CloseSignal>,
    /// Where it is counted.
    admission: Admission,
}

impl Ticket {
    /// Set when the connection is asked to make room for a newcomer.
    pub(crate) fn close_signal(&self) -> &Arc<CloseSignal> {
        &self.close
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut registry = lock_unpoisoned(&self.admission.registry);
        if let Some(open) = registry.open.remove(&self.id) {
            if open.close.is_asked() {
                registry.asked -= 1;
            }
            if let Some(count) = registry.per_address.get_mut(&open.address) {
                *count -= 1;
                if *count == 0 {
                    registry.per_address.remove(&open.address);
                }
            }
        }
        let empty = registry.open.is_empty();
        drop(registry);
        if empty {
            self.admission.drained.notify_waiters();
        }
    }
}

/// A request to one connection to finish (within [`EVICTION_GRACE`]) or to
/// go at once: set once each, seen by every waiter.
#[derive(Debug, Default)]
pub(crate) struct CloseSignal {
    /// 0: open; [`ASKED`]: asked to finish; [`DROPPED`]: to go at once.
    state: AtomicU8,
    /// Whether the connection has sent a whole request head: one that has
    /// not has nothing to finish, and goes first when room is needed.
    headed: AtomicBool,
    /// Wakes the waiters when it changes.
    notify: Notify,
}

/// [`CloseSignal`]'s state once asked to finish.
const ASKED: u8 = 1;
/// [`CloseSignal`]'s state once told to go at once.
const DROPPED: u8 = 2;

impl CloseSignal {
    fn ask(&self) {
        self.state.fetch_max(ASKED, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    fn drop_now(&self) {
        self.state.store(DROPPED, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_asked(&self) -> bool {
        self.state.load(Ordering::Acquire) >= ASKED
    }

    fn is_dropped(&self) -> bool {
        self.state.load(Ordering::Acquire) == DROPPED
    }

    /// Notes that the connection has sent a whole request head.
    pub(crate) fn mark_headed(&self) {
        self.headed.store(true, Ordering::Relaxed);
    }

    /// Whether the connection has sent a whole request head.
    pub(crate) fn is_headed(&self) -> bool {
        self.headed.load(Ordering::Relaxed)
    }

    /// Resolves once the connection is asked to close (or to go at once).
    pub(crate) async fn asked(&self) {
        self.reached(ASKED).await;
    }

    /// Resolves once the connection is to go at once.
    pub(crate) async fn dropped(&self) {
        self.reached(DROPPED).await;
    }

    async fn reached(&self, state: u8) {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.state.load(Ordering::Acquire) >= state {
                return;
            }
            notified.await;
        }
    }
}

/// Answers refused connections without serving them: the same JSON error a
/// request would get, written by a small task so the accept loop moves on.
pub(crate) struct Refuser {
    /// The whole HTTP/1.1 answers for each refusal, built once; `None` on an
    /// HTTPS listener, where no handshake is spent on a refused client and it
    /// is closed unanswered.
    answers: Option<RefusalAnswers>,
    /// Refusals being answered; past `MAX_REFUSALS_IN_FLIGHT` a refused
    /// connection is held unanswered.
    in_flight: Arc<Semaphore>,
    /// Refused connections held unanswered; past its places, closed at once.
    held: Arc<Semaphore>,
}

/// The answer for each [`Refusal`].
struct RefusalAnswers {
    /// 403: outside `[access] allow`.
    network: Bytes,
    /// 429: past the address's quota.
    per_ip: Bytes,
    /// 503: every slot taken.
    full: Bytes,
}

impl Refuser {
    /// A refuser for a plain (`https` false) or HTTPS listener that admits
    /// up to `most_open` connections.
    pub(crate) fn new(https: bool, most_open: usize) -> Refuser {
        let answers = (!https).then(|| RefusalAnswers {
            network: refusal_response(StatusCode::FORBIDDEN, &AccessError::Network.to_string()),
            per_ip: refusal_response(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many connections from this address (server.max_connections_per_ip)",
            ),
            full: refusal_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway is at server.max_connections; try again in a second",
            ),
        });
        Refuser {
            answers,
            in_flight: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
            held: Arc::new(Semaphore::new(held_places(most_open))),
        }
    }

    /// Answers and closes `stream`, or holds it unanswered for
    /// [`HOLD_REFUSED`], or just closes it. Never waits.
    pub(crate) fn refuse(&self, mut stream: TcpStream, client: SocketAddr, why: Refusal) {
        debug!(client = %client, reason = why.as_str(), "connection refused");
        let answer = self.answers.as_ref().and_then(|answers| match why {
            Refusal::Network => Some(&answers.network),
            Refusal::PerIpQuota => Some(&answers.per_ip),
            Refusal::Full => Some(&answers.full),
            Refusal::Flooding => None,
        });
        let permit = answer.and_then(|_| self.in_flight.clone().try_acquire_owned().ok());
        let (Some(answer), Some(permit)) = (answer.cloned(), permit) else {
            // A device refused only because slots are being freed is closed
            // at once, free to try again: it may be anyone's.
            if why == Refusal::Full {
                return;
            }
            if let Ok(held) = self.held.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    tokio::time::sleep(HOLD_REFUSED).await;
                    drop((stream, held));
                });
            }
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            // An HTTP client takes an answer that comes before its request for a
            // broken connection, so the request head is waited for, briefly: a
            // silent client gets the answer all the same.
            let _ = tokio::time::timeout(REFUSAL_LINGER, read_head(&mut stream)).await;
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                stream.write_all(&answer).await?;
                stream.shutdown().await?;
                // Closing with the request still unread would make the kernel
                // reset the connection, and the client could lose the answer;
                // so what it sends is read and dropped until it closes.
                let mut sink = [0u8; 1024];
                while stream.read(&mut sink).await? > 0 {}
                io::Result::Ok(())
            })
            .await;
        });
    }
}

/// How many refused connections may be held: [`MAX_HELD_REFUSED`], or fewer
/// if the process may not open that many files beside `most_open`
/// connections. The soft limit on open files is raised to the hard one first
/// (under systemd 1,024 and 524,288 unless the unit says otherwise).
fn held_places(most_open: usize) -> usize {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                debug!(error = %e, "cannot raise the limit on open files");
            }
        }
        let files = getrlimit(Resource::Nofile)
            .current
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        files
            .saturating_sub(most_open + MAX_REFUSALS_IN_FLIGHT + FILES_HEADROOM)
            .min(MAX_HELD_REFUSED)
    }
    #[cfg(not(unix))]
    {
        let _ = most_open;
        MAX_HELD_REFUSED
    }
}

/// Reads and drops what the client sends up to the end of a request head (a
/// blank line), the end of the stream or `MAX_REFUSED_HEAD` bytes.
async fn read_head(stream: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    // The last bytes read, so a blank line split across reads is still seen.
    let mut window = Vec::with_capacity(buf.len() + 3);
    let mut total = 0;
    while total < MAX_REFUSED_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n;
        window.extend_from_slice(&buf[..n]);
        if window.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        window.drain(..window.len().saturating_sub(3));
    }
    Ok(())
}

/// A whole HTTP/1.1 response carrying the gateway's JSON error shape, as
/// `respond::json_error` builds it for requests.
fn refusal_response(status: StatusCode, message: &str) -> Bytes {
    let body = serde_json::json!({ "error": message }).to_string();
    let retry = if status == StatusCode::SERVICE_UNAVAILABLE {
        "retry-after: 1\r\n"
    } else {
        ""
    };
    Bytes::from(format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
         {retry}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_mapped_ipv6_as_ipv4() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_key(ip("::ffff:192.168.1.20")), ip("192.168.1.20"));
        assert_eq!(address_key(ip("192.168.1.20")), ip("192.168.1.20"));
        let admission = Admission::new(100, 2);
        let _a = admission.admit(ip("2001:db8:1:2::1"), || false).unwrap();
        let _b = admission
            .admit(ip("2001:db8:1:2::ffff:2"), || false)
            .unwrap();
        assert_eq!(
            admission.admit(ip("2001:db8:1:2:1::3"), || false).err(),
            Some(Refusal::PerIpQuota),
            "a third address of the same /64"
        );
        assert!(admission.admit(ip("2001:db8:1:3::1"), || false).is_ok());
    }

    #[test]
    fn the_per_address_quota_frees_on_drop_and_leaves_nothing_behind() {
        let admission = Admission::new(100, 2);
        let first = admission.admit(ip("192.168.1.20"), || false).unwrap();
        let second = admission
            .admit(ip("::ffff:192.168.1.20"), || false)
            .unwrap();
        assert!(admission.admit(ip("192.168.1.20"), || false).is_err());
        drop(first);
        let third = admission.admit(ip("192.168.1.20"), || false).unwrap();
        drop((second, third));
        let registry = lock_unpoisoned(&admission.registry);
        assert!(registry.open.is_empty() && registry.per_address.is_empty());
        assert_eq!(registry.asked, 0);
    }

    #[test]
    fn past_the_limit_the_busiest_address_makes_room_and_newcomers_are_never_held() {
        let admission = Admission::new(4, 4);
        let victim = admission.admit(ip("10.0.0.1"), || false).unwrap();
        let attacker: Vec<_> = (0..3)
            .map(|_| admission.admit(ip("10.0.0.2"), || false).unwrap())
            .collect();
        assert!(
            !victim.close.is_asked() && attacker.iter().all(|t| !t.close.is_asked()),
            "nobody asked while there is room"
        );
        // A newcomer past the limit is served, and the busiest address's
        // oldest connection (not the older victim) is asked to close.
        let newcomer = admission.admit(ip("10.0.0.3"), || false).unwrap();
        assert!(attacker[0].close.is_asked());
        assert!(!victim.close.is_asked() && !newcomer.close.is_asked());
        // The spare places (2 for 4) fill, then the busiest address is
        // refused at once (a lighter one is the next test's case).
        let next = admission.admit(ip("10.0.0.4"), || false).unwrap();
        assert!(attacker[1].close.is_asked());
        assert_eq!(
            admission.admit(ip("10.0.0.2"), || false).err(),
            Some(Refusal::Full)
        );
        // As the asked connections go, there is room again.
        drop(attacker);
        assert_eq!(admission.open(), 3);
        let _more = admission.admit(ip("10.0.0.5"), || false).unwrap();
        assert_eq!(lock_unpoisoned(&admission.registry).asked, 0);
        drop((victim, newcomer, next));
    }

    #[test]
    fn when_even_the_spare_places_are_taken_a_lighter_address_drops_the_busiest() {
        let admission = Admission::new(4, 6);
        // Two addresses hold every slot and both spare places.
        let heavy: Vec<_> = (0..4)
            .map(|_| admission.admit(ip("10.0.0.2"), || false).unwrap())
            .collect();
        let other: Vec<_> = (0..2)
            .map(|_| admission.admit(ip("10.0.0.4"), || false).unwrap())
            .collect();
        // The busiest address cannot take more, nor can one as busy.
        assert_eq!(
            admission.admit(ip("10.0.0.2"), || false).err(),
            Some(Refusal::Full)
        );
        let third = admission.admit(ip("10.0.0.4"), || false).unwrap();
        assert!(
            heavy[0].close.is_dropped(),
            "4 against 2: the busiest's oldest goes"
        );
        drop(third);
        // A device with no connection gets in, the busiest's next oldest
        // dropped at once.
        let victim = admission.admit(ip("10.0.0.3"), || false).unwrap();
        assert!(heavy[1].close.is_dropped());
        assert!(!victim.close.is_asked() && other.iter().all(|t| !t.close.is_dropped()));
        // Past twice the spare places, no one.
        let _more = admission.admit(ip("10.0.0.5"), || false).unwrap();
        assert_eq!(admission.open(), 8);
        assert_eq!(
            admission.admit(ip("10.0.0.6"), || false).err(),
            Some(Refusal::Full)
        );
        drop((heavy, other, victim));
    }

    #[test]
    fn a_flooding_address_makes_no_one_go_once_every_slot_is_taken() {
        let admission = Admission::new(4, 4);
        let flooder: Vec<_> = (0..3)
            .map(|_| admission.admit(ip("10.0.0.2"), || true).unwrap())
            .collect();
        // While there is room, flooding or not changes nothing.
        let device = admission.admit(ip("10.0.0.3"), || false).unwrap();
        // Full: the flooding address is refused without asking anyone.
        assert_eq!(
            admission.admit(ip("10.0.1.1"), || true).err(),
            Some(Refusal::Flooding)
        );
        assert!(flooder.iter().all(|t| !t.close.is_asked()));
        // A device not flooding still gets in, and the flooder makes room.
        let newcomer = admission.admit(ip("10.0.0.4"), || false).unwrap();
        assert!(flooder[0].close.is_asked());
        drop((flooder, device, newcomer));
    }

    #[test]
    fn many_addresses_holding_one_headless_connection_each_make_room_for_a_device() {
        let admission = Admission::new(4, 4);
        // Every slot and every spare place, one silent connection per
        // address.
        let silent: Vec<_> = (1..=6)
            .map(|i| {
                admission
                    .admit(ip(&format!("10.0.1.{i}")), || false)
                    .unwrap()
            })
            .collect();
        // A device (no connection yet) still gets in: the oldest headless
        // connection goes at once.
        let device = admission.admit(ip("10.0.0.3"), || false).unwrap();
        assert!(silent[0].close.is_dropped());
        // One that sent a request is not taken for a headless one.
        device.close.mark_headed();
        silent[1].close.mark_headed();
        let _next = admission.admit(ip("10.0.1.20"), || false).unwrap();
        assert!(silent[2].close.is_dropped() && !silent[1].close.is_dropped());
        assert!(!device.close.is_dropped());
        // A silent address cannot take another's place.
        let silent_more = admission.admit(ip("10.0.1.4"), || false);
        assert_eq!(silent_more.err(), Some(Refusal::Full));
        drop((silent, device));
    }

    #[tokio::test]
    async fn every_waiter_sees_the_close_signal_even_when_it_came_first() {
        let signal = Arc::new(CloseSignal::default());
        let early = tokio::spawn({
            let signal = signal.clone();
            async move { signal.asked().await }
        });
        tokio::task::yield_now().await;
        signal.ask();
        early.await.unwrap();
        // A waiter that starts after the signal returns at once.
        signal.asked().await;
    }
}
