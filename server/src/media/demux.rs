//! Demultiplexing one UDP port across every peer connection.
//!
//! A new remote address is only ever learned from a STUN binding request whose USERNAME
//! starts with one of our connections' ICE ufrags (ICE credentials are unique per
//! connection). After that, every datagram from that 5-tuple (one local socket, so the
//! remote address suffices) goes to the same connection. Packets from unknown
//! addresses that are not such STUN requests are dropped, so a stranger cannot inject
//! DTLS or SRTP into a session.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Identifies one peer connection inside the media plane.
pub type PeerId = u64;

/// STUN attribute type of USERNAME (RFC 8489 §14.3).
const ATTR_USERNAME: u16 = 0x0006;
/// STUN magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN message type of a Binding request.
const BINDING_REQUEST: u16 = 0x0001;

/// Whether a datagram is STUN, by its first byte (RFC 7983 §7: 0..=3).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| *b <= 3)
}

/// STUN attribute type of USE-CANDIDATE (RFC 8445 §16.1).
const ATTR_USE_CANDIDATE: u16 = 0x0025;

/// A STUN transaction id.
pub type TransactionId = [u8; 12];

/// The attributes of a well-formed STUN binding request, as (type, value) pairs, with its
/// transaction id; `None` if the datagram is not one. The walk stops at the first
/// malformed attribute.
fn binding_request_attrs(
    datagram: &[u8],
) -> Option<(TransactionId, impl Iterator<Item = (u16, &[u8])>)> {
    if datagram.len() < 20 {
        return None;
    }
    let msg_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    let msg_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let cookie = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    if msg_type != BINDING_REQUEST || cookie != MAGIC_COOKIE || datagram.len() < 20 + msg_len {
        return None;
    }
    let transaction: TransactionId = datagram[8..20].try_into().ok()?;
    let mut rest = &datagram[20..20 + msg_len];
    let attrs = std::iter::from_fn(move || {
        let typ = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
        let len = usize::from(u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]));
        let value = rest.get(4..4 + len)?;
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..).unwrap_or_default();
        Some((typ, value))
    });
    Some((transaction, attrs))
}

/// Extracts the local ufrag (the part of USERNAME before `:`) from a STUN binding
/// request, or `None` if the datagram is not one or is malformed.
pub fn binding_request_local_ufrag(datagram: &[u8]) -> Option<&str> {
    let (_, mut attrs) = binding_request_attrs(datagram)?;
    let (_, username) = attrs.find(|(typ, _)| *typ == ATTR_USERNAME)?;
    std::str::from_utf8(username).ok()?.split(':').next()
}

/// The transaction id of a STUN binding request and whether it nominates its candidate
/// pair (carries USE-CANDIDATE); `None` if the datagram is not a binding request. Nothing
/// here is authenticated: `rtc` checks MESSAGE-INTEGRITY.
pub fn binding_request_check(datagram: &[u8]) -> Option<(TransactionId, bool)> {
    let (transaction, mut attrs) = binding_request_attrs(datagram)?;
    let nominates = attrs.any(|(typ, _)| typ == ATTR_USE_CANDIDATE);
    Some((transaction, nominates))
}

/// The routing table: ICE ufrag → connection, remote address → connection.
#[derive(Debug, Default)]
pub struct Demux {
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
}

impl Demux {
    /// Registers a connection's local ICE ufrag.
    pub fn add_ufrag(&mut self, ufrag: String, peer: PeerId) {
        self.by_ufrag.insert(ufrag, peer);
    }

    /// Forgets a connection entirely (its ufrag and every address it used).
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.by_ufrag.retain(|_, p| *p != peer);
        self.by_addr.retain(|_, p| *p != peer);
    }

    /// Decides which connection a datagram from `from` belongs to, learning the address
    /// from a binding request that names one of our ufrags.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<PeerId> {
        if is_stun(datagram) {
            if let Some(ufrag) = binding_request_local_ufrag(datagram) {
                if let Some(peer) = self.by_ufrag.get(ufrag).copied() {
                    // A binding request can move a known address to a new connection
                    // (the browser reused a port for its next connection).
                    self.by_addr.insert(from, peer);
                    return Some(peer);
                }
                return None;
            }
        }
        self.by_addr.get(&from).copied()
    }

    /// Number of remote addresses currently mapped (for metrics and leak tests).
    pub fn addr_count(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a STUN binding request with the given USERNAME and a trailing attribute.
    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        // PRIORITY attribute, to check we walk past the username too.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        let mut msg = Vec::new();
        msg.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attrs);
        msg
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn extracts_local_ufrag() {
        let req = binding_request("srvUfrag:cliUfrag");
        assert_eq!(binding_request_local_ufrag(&req), Some("srvUfrag"));
        assert_eq!(binding_request_check(&req), Some(([7; 12], false)));
        let mut nominating = req.clone();
        nominating.extend_from_slice(&ATTR_USE_CANDIDATE.to_be_bytes());
        nominating.extend_from_slice(&[0, 0]);
        let len = (nominating.len() - 20) as u16;
        nominating[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(binding_request_check(&nominating), Some(([7; 12], true)));
        // The attribute outside the declared length is not read.
        nominating[2..4].copy_from_slice(&(len - 4).to_be_bytes());
        assert_eq!(binding_request_check(&nominating), Some(([7; 12], false)));
    }

    #[test]
    fn rejects_truncated_and_non_binding_messages() {
        let req = binding_request("abc:def");
        for cut in 0..req.len() {
            // Must not panic on any truncation.
            let _ = binding_request_local_ufrag(&req[..cut]);
            let _ = binding_request_check(&req[..cut]);
        }
        let mut resp = req.clone();
        resp[0] = 0x01; // 0x0101 = binding success response
        assert_eq!(binding_request_local_ufrag(&resp), None);
        assert_eq!(binding_request_check(&resp), None);
        let mut bad_len = req.clone();
        bad_len[2] = 0xFF;
        assert_eq!(binding_request_local_ufrag(&bad_len), None);
    }

    #[test]
    fn learns_address_from_stun_then_routes_media() {
        let mut d = Demux::default();
        d.add_ufrag("aaaa".into(), 1);
        d.add_ufrag("bbbb".into(), 2);
        let dtls = [22u8, 254, 253, 0, 0];
        assert_eq!(
            d.route(addr(5000), &dtls),
            None,
            "unknown address, not STUN"
        );
        assert_eq!(d.route(addr(5000), &binding_request("bbbb:x")), Some(2));
        assert_eq!(d.route(addr(5000), &dtls), Some(2));
        assert_eq!(d.route(addr(5001), &binding_request("cccc:x")), None);
        assert_eq!(d.route(addr(5001), &dtls), None);
        d.remove_peer(2);
        assert_eq!(d.route(addr(5000), &dtls), None);
        assert_eq!(d.route(addr(5000), &binding_request("bbbb:x")), None);
        assert_eq!(d.addr_count(), 0);
    }
}
