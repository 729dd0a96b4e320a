//! Host names: Istio's short-name resolution, syntax checks and wildcard matching.

/// The cluster's DNS suffix, as in Istio's default `cluster.local`.
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// Resolves a host as Istio does: a name without a dot is short for
/// `<name>.<namespace>.svc.cluster.local`; anything else (and `*`) stands as written.
pub fn resolve(host: &str, namespace: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host == "*" || host.contains('.') {
        host
    } else {
        format!("{host}.{namespace}.svc.{DOMAIN_SUFFIX}")
    }
}

/// Checks a host: DNS labels, optionally led by a `*.` wildcard, or `*` alone.
pub fn check(host: &str) -> Result<(), String> {
    if host == "*" {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "invalid host {host:?}: expected a DNS name of 1-253 characters"
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "invalid host {host:?}: label {label:?} is not a DNS label (letters, digits, '-')"
            ));
        }
    }
    Ok(())
}

/// Whether `pattern` (possibly a wildcard) covers the concrete or wildcard host `host`.
pub fn covers(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        // "*.example.com" covers "a.example.com" and "*.b.example.com", not "example.com".
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => false,
    }
}

/// Whether two host patterns have any host in common.
pub fn intersect(a: &str, b: &str) -> bool {
    covers(a, b) || covers(b, a)
}

/// The more specific of two hosts that intersect (the one the other covers).
pub fn narrower<'a>(a: &'a str, b: &'a str) -> &'a str {
    if covers(a, b) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_namespace() {
        assert_eq!(
            resolve("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve("reviews.prod.svc.cluster.local", "default"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(resolve("api.example.com", "x"), "api.example.com");
        assert_eq!(resolve("*", "x"), "*");
    }

    #[test]
    fn checks_host_syntax() {
        assert!(check("reviews.default.svc.cluster.local").is_ok());
        assert!(check("*.example.com").is_ok());
        assert!(check("*").is_ok());
        assert!(check("bad_host").is_err());
        assert!(check("a..b").is_err());
        assert!(check("-a.b").is_err());
    }

    #[test]
    fn wildcards_cover_subdomains() {
        assert!(covers("*", "anything.com"));
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.example.com", "*.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("a.example.com", "*.example.com"));
        assert!(intersect("a.example.com", "*.example.com"));
        assert!(!intersect("a.example.com", "b.example.com"));
        assert_eq!(narrower("*.example.com", "a.example.com"), "a.example.com");
    }
}
