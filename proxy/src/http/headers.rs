//! Header changes on the way through: hop-by-hop headers, x-forwarded-*, XFCC, route changes.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderChanges;
use crate::http::text;
use crate::tls::PeerTls;

/// Headers that describe one hop and are never forwarded.
pub(super) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub(super) const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Envoy's SANITIZE / SANITIZE_SET of `x-forwarded-client-cert`: whatever the client sent is
/// dropped; on mTLS connections the peer's certificate is described (`By`, `Hash`, `URI`,
/// `DNS`).
pub(super) fn client_cert_details(
    headers: &mut HeaderMap,
    mode: crate::config::ClientCertDetails,
    tls: Option<&PeerTls>,
) {
    // Looking is cheaper than removing a name that is not there (a hash and a probe).
    if headers.keys().any(|k| *k == XFCC) {
        headers.remove(&XFCC);
    }
    let crate::config::ClientCertDetails::SanitizeSet { uri, dns } = mode else {
        return;
    };
    let Some(peer) = tls.filter(|t| t.hash.is_some()) else {
        return;
    };
    let mut parts = Vec::new();
    if let Some(by) = &peer.local_uri {
        parts.push(format!("By={by}"));
    }
    if let Some(hash) = &peer.hash {
        parts.push(format!("Hash={hash}"));
    }
    if uri && let Some(u) = &peer.uri {
        parts.push(format!("URI={u}"));
    }
    if dns {
        parts.extend(peer.dns.iter().map(|d| format!("DNS={d}")));
    }
    if let Ok(v) = HeaderValue::from_str(&parts.join(";")) {
        headers.insert(XFCC, v);
    }
}

/// An HTTP/1.1 WebSocket upgrade request.
pub(super) fn wants_websocket(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `upgrade` goes too; a WebSocket upgrade puts it back.
    let hop = |k: &HeaderName| *k == header::UPGRADE || HOP_BY_HOP.contains(k);
    // Most messages carry none, or just `connection: keep-alive`: looking is cheaper than
    // removing every name (each removal hashes it), so only what is there is removed.
    if !headers.keys().any(hop) {
        return;
    }
    let mut present: Vec<HeaderName> = headers.keys().filter(|k| hop(k)).cloned().collect();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim) {
            // Listed names that are hop-by-hop anyway (`keep-alive`) are handled above;
            // others are removed if the message has them.
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                && !hop(&name)
                && headers.keys().any(|k| *k == name)
            {
                present.push(name);
            }
        }
    }
    for name in &present {
        headers.remove(name);
    }
}

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Appends the peer's IP (`peer_ip`, as a header value) to `x-forwarded-for`.
pub(super) fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) => HeaderValue::from_str(&format!("{existing}, {}", text(peer_ip))),
        None => Ok(peer_ip.clone()),
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

pub(super) fn apply(
    headers: &mut HeaderMap,
    add: &[crate::config::HeaderAdd],
    remove: &[Arc<str>],
) {
    for name in remove {
        headers.remove(&**name);
    }
    for h in add {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) else {
            continue;
        };
        if h.append {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
}

pub(super) fn apply_request_headers(headers: &mut HeaderMap, changes: &HeaderChanges) {
    apply(headers, &changes.request_add, &changes.request_remove);
}

pub(super) fn apply_response_headers(headers: &mut HeaderMap, changes: &HeaderChanges) {
    apply(headers, &changes.response_add, &changes.response_remove);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: std::collections::BTreeSet<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-length", "x-kept"].into());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let peer = HeaderValue::from_static("10.0.0.1");
        append_forwarded_for(&mut h, &peer);
        append_forwarded_for(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.1");
    }
}
