//! Where one peer connection's packets go, and whether its client is still there.
//!
//! `rtc`'s ICE-lite agent takes the remote address of the first nominated candidate pair
//! and never moves from it. When a client's NAT hands it a new port mid-call (a pocket
//! Wi-Fi router whose mobile link reconnects does that), its checks arrive from the new
//! address and are answered there, so the browser sees nothing wrong, while media, RTCP
//! and DTLS would keep going to the old address: a subscriber's picture freezes, and a
//! publisher no longer hears keyframe requests or NACKs. After 30 s of silence on the old
//! address the agent would fail the connection.
//!
//! [`RemotePath`] follows the client instead. It switches to a new address only on a
//! binding request that `rtc` answered with a success response (so the request carried
//! the connection's ICE password in its MESSAGE-INTEGRITY), and only when
//! - the request nominates (USE-CANDIDATE): the controlling agent chose this pair, which
//!   Chrome repeats on every check of its selected pair when the remote is ICE-lite; or
//! - nothing has arrived from the current address for [`SWITCH_AFTER_SILENCE`]: a client
//!   that does not renominate is still followed, and a check on a backup pair does not
//!   pull the media away from a path that works.
//!
//! What this does not defend against: an attacker on the path who replays a captured
//! nominating check from another address pulls the media there (still SRTP-encrypted, so
//! unreadable) until the client's next check, about 2.5 s later, pulls it back. An attacker
//! on the path can drop the media anyway; one off the path cannot produce a check that
//! `rtc` answers.
//!
//! The connection's liveness lives here too, because `rtc`'s own ICE timeouts watch only
//! the first address (they are switched off in `sfu.rs`): a connection from whose current
//! address nothing has arrived for the silence limit is over.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::demux;

/// How long the current address must have been silent before an authenticated check from
/// another address (one that does not nominate) moves the connection there. Chrome checks
/// its selected pair every 2.5 s and sends RTCP about once a second, so a live path is
/// never silent this long.
pub const SWITCH_AFTER_SILENCE: Duration = Duration::from_secs(3);

/// STUN message type of a Binding success response (RFC 8489 §5).
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];

/// A binding request being handled: its transaction and whether it nominates.
#[derive(Debug, Clone, Copy)]
struct Check {
    from: SocketAddr,
    transaction: [u8; 12],
    nominates: bool,
}

/// What [`RemotePath::outbound`] decided for one datagram `rtc` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Where to send the datagram.
    pub to: SocketAddr,
    /// Set when this datagram (a check's success response) moved the connection from one
    /// address to another. The first nomination is not a move.
    pub moved: Option<Move>,
}

/// A connection's move to a new remote address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The new address.
    pub to: SocketAddr,
    /// Whether the check nominated (otherwise the old address had gone silent).
    pub nominated: bool,
}

/// One connection's remote address as followed across NAT rebinding, and when it was last
/// heard from.
#[derive(Debug, Clone)]
pub struct RemotePath {
    current: Option<SocketAddr>,
    last_heard: Option<Instant>,
    pending: Option<Check>,
    silence_limit: Duration,
}

impl RemotePath {
    /// A connection with no nominated address yet; it is over once its current address has
    /// been silent for `silence_limit`.
    pub fn new(silence_limit: Duration) -> Self {
        RemotePath {
            current: None,
            last_heard: None,
            pending: None,
            silence_limit,
        }
    }

    /// Where the connection's media goes, once a pair was nominated.
    pub fn current(&self) -> Option<SocketAddr> {
        self.current
    }

    /// Notes a datagram routed to this connection, before `rtc` reads it. A binding
    /// request is remembered until `rtc`'s answer to it shows whether it authenticated.
    pub fn inbound(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if self.current == Some(from) {
            self.last_heard = Some(now);
        }
        self.pending =
            demux::binding_request_check(datagram).map(|(transaction, nominates)| Check {
                from,
                transaction,
                nominates,
            });
    }

    /// Decides where a datagram `rtc` wrote for address `to` goes. STUN keeps its
    /// destination (answers go where their request came from); everything else goes to the
    /// current address. A success response to the pending request may move the connection
    /// first, by the rules in the module documentation.
    pub fn outbound(&mut self, now: Instant, to: SocketAddr, datagram: &[u8]) -> Routed {
        if demux::is_stun(datagram) {
            let moved = self.answered(now, to, datagram);
            return Routed { to, moved };
        }
        Routed {
            to: self.current.unwrap_or(to),
            moved: None,
        }
    }

    /// When the connection counts as gone unless something arrives from its current
    /// address first (`None` before a pair was nominated: the connect watchdog covers that).
    pub fn deadline(&self) -> Option<Instant> {
        self.current?;
        Some(self.last_heard? + self.silence_limit)
    }

    /// Whether the current address has been silent for the silence limit as of `now`.
    pub fn is_gone(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| d <= now)
    }

    /// Handles an outgoing STUN message: a success response to the pending request proves
    /// that request authentic, and may move the connection to its source.
    fn answered(&mut self, now: Instant, to: SocketAddr, datagram: &[u8]) -> Option<Move> {
        let check = self.pending?;
        if datagram.get(..2) != Some(&BINDING_SUCCESS[..])
            || datagram.get(8..20) != Some(&check.transaction[..])
            || check.from != to
        {
            return None;
        }
        self.pending = None;
        let silent = self
            .last_heard
            .is_none_or(|t| now.saturating_duration_since(t) >= SWITCH_AFTER_SILENCE);
        match self.current {
            Some(current) if current == to => {
                self.last_heard = Some(now);
                None
            }
            // The first nomination: the address `rtc` selects too. Not a move.
            None if check.nominates => {
                self.current = Some(to);
                self.last_heard = Some(now);
                None
            }
            Some(_) if check.nominates || silent => {
                self.current = Some(to);
                self.last_heard = Some(now);
                Some(Move {
                    to,
                    nominated: check.nominates,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 7], port))
    }

    /// A binding request with transaction `tx`, USERNAME, optionally USE-CANDIDATE.
    fn request(tx: u8, nominates: bool) -> Vec<u8> {
        let mut attrs = vec![0x00, 0x06, 0x00, 0x04, b'a', b'b', b':', b'c'];
        if nominates {
            attrs.extend_from_slice(&[0x00, 0x25, 0x00, 0x00]);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        msg.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        msg.extend_from_slice(&[tx; 12]);
        msg.extend_from_slice(&attrs);
        msg
    }

    /// A success response to transaction `tx`.
    fn success(tx: u8) -> Vec<u8> {
        let mut msg = vec![0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        msg.extend_from_slice(&[tx; 12]);
        msg
    }

    /// An SRTP-looking datagram.
    fn media() -> Vec<u8> {
        vec![0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9]
    }

    /// Feeds one check from `from` and, if `answered`, `rtc`'s success response to it.
    fn check(
        path: &mut RemotePath,
        now: Instant,
        from: SocketAddr,
        tx: u8,
        nominates: bool,
        answered: bool,
    ) -> Option<Move> {
        path.inbound(now, from, &request(tx, nominates));
        if !answered {
            return None;
        }
        path.outbound(now, from, &success(tx)).moved
    }

    #[test]
    fn the_first_answered_nomination_sets_the_address_and_media_follows_it() {
        let t0 = Instant::now();
        let mut path = RemotePath::new(LIMIT);
        // Before any nomination, rtc's destination stands.
        assert_eq!(path.outbound(t0, addr(1), &media()).to, addr(1));
        assert_eq!(check(&mut path, t0, addr(1), 1, false, true), None);
        assert_eq!(path.current(), None);
        assert_eq!(
            check(&mut path, t0, addr(1), 2, true, true),
            None,
            "not a move"
        );
        assert_eq!(path.current(), Some(addr(1)));
        // rtc's own destination for media is overridden by the followed address.
        assert_eq!(path.outbound(t0, addr(9), &media()).to, addr(1));
    }

    #[test]
    fn a_new_port_that_nominates_takes_the_media_at_once() {
        let t0 = Instant::now();
        let mut path = RemotePath::new(LIMIT);
        check(&mut path, t0, addr(1), 1, true, true);
        let t1 = t0 + Duration::from_millis(100);
        path.inbound(t1, addr(1), &media());
        let moved = Move {
            to: addr(2),
            nominated: true,
        };
        assert_eq!(check(&mut path, t1, addr(2), 2, true, true), Some(moved));
        assert_eq!(path.outbound(t1, addr(1), &media()).to, addr(2));
        // STUN keeps its own destination: the answer to a check from the old address
        // goes back there.
        path.inbound(t1, addr(1), &request(3, false));
        assert_eq!(path.outbound(t1, addr(1), &success(3)).to, addr(1));
        assert_eq!(
            path.current(),
            Some(addr(2)),
            "a non-nominating check does not pull back"
        );
    }

    #[test]
    fn a_check_that_does_not_nominate_moves_the_media_only_after_silence() {
        let t0 = Instant::now();
        let mut path = RemotePath::new(LIMIT);
        check(&mut path, t0, addr(1), 1, true, true);
        // A backup pair checked while the current address is live: no move.
        let t1 = t0 + SWITCH_AFTER_SILENCE - Duration::from_millis(1);
        assert_eq!(check(&mut path, t1, addr(2), 2, false, true), None);
        path.inbound(t1, addr(1), &media());
        let t2 = t1 + SWITCH_AFTER_SILENCE - Duration::from_millis(1);
        assert_eq!(check(&mut path, t2, addr(2), 3, false, true), None);
        // The current address silent for the whole interval: the client moved.
        let t3 = t1 + SWITCH_AFTER_SILENCE;
        let moved = Move {
            to: addr(2),
            nominated: false,
        };
        assert_eq!(check(&mut path, t3, addr(2), 4, false, true), Some(moved));
        assert_eq!(path.current(), Some(addr(2)));
    }

    #[test]
    fn an_unanswered_or_mismatched_check_never_moves_the_media() {
        let t0 = Instant::now();
        let mut path = RemotePath::new(LIMIT);
        check(&mut path, t0, addr(1), 1, true, true);
        let late = t0 + Duration::from_secs(10);
        // rtc refused it (bad MESSAGE-INTEGRITY): no success response.
        assert_eq!(check(&mut path, late, addr(2), 2, true, false), None);
        // A success response for another transaction, or to another address.
        path.inbound(late, addr(2), &request(3, true));
        assert_eq!(path.outbound(late, addr(2), &success(4)).moved, None);
        assert_eq!(path.outbound(late, addr(3), &success(3)).moved, None);
        // A later datagram clears the pending check: its answer cannot come late.
        path.inbound(late, addr(2), &request(5, true));
        path.inbound(late, addr(2), &media());
        assert_eq!(path.outbound(late, addr(2), &success(5)).moved, None);
        assert_eq!(path.current(), Some(addr(1)));
    }

    #[test]
    fn the_connection_is_gone_after_the_silence_limit_on_its_current_address() {
        let t0 = Instant::now();
        let mut path = RemotePath::new(LIMIT);
        assert_eq!(path.deadline(), None, "not before a nomination");
        check(&mut path, t0, addr(1), 1, true, true);
        assert_eq!(path.deadline(), Some(t0 + LIMIT));
        let t1 = t0 + Duration::from_secs(20);
        path.inbound(t1, addr(1), &media());
        assert_eq!(path.deadline(), Some(t1 + LIMIT));
        // Traffic from elsewhere (not followed) does not keep the connection alive.
        path.inbound(t1 + Duration::from_secs(29), addr(5), &media());
        assert!(!path.is_gone(t1 + LIMIT - Duration::from_millis(1)));
        assert!(path.is_gone(t1 + LIMIT));
    }
}
