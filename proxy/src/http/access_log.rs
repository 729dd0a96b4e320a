//! Access log lines in Envoy's default format, written to stdout when a response has been
//! sent (or abandoned):
//!
//! ```text
//! [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
//! %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
//! "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%"
//! "%UPSTREAM_HOST%"
//! ```
//!
//! A field the request does not have is `-`, as Envoy writes it.

use std::io::Write;
use std::time::Instant;

use http::{HeaderMap, Request, Version};
use time::OffsetDateTime;
use time::format_description::well_known::Iso8601;

/// The upstream a response came from, set by the forward path as a response extension.
#[derive(Clone, Debug)]
pub struct UpstreamHost(pub String);

/// What is known of a request when it arrives.
#[derive(Debug)]
pub struct Entry {
    start: OffsetDateTime,
    started: Instant,
    method: String,
    path: String,
    protocol: &'static str,
    forwarded_for: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    authority: Option<String>,
    /// The request's Content-Length (a chunked body counts 0).
    bytes_received: u64,
    // Set once the response is known.
    status: u16,
    flags: &'static str,
    upstream_service_time: Option<String>,
    upstream_host: Option<String>,
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Entry {
    pub fn new<B>(req: &Request<B>) -> Entry {
        let headers = req.headers();
        Entry {
            start: OffsetDateTime::now_utc(),
            started: Instant::now(),
            method: req.method().as_str().to_string(),
            path: header(headers, "x-envoy-original-path").unwrap_or_else(|| {
                req.uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string()
            }),
            protocol: match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            forwarded_for: header(headers, "x-forwarded-for"),
            user_agent: header(headers, "user-agent"),
            request_id: header(headers, "x-request-id"),
            authority: req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| header(headers, "host")),
            bytes_received: headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0),
            status: 0,
            flags: "-",
            upstream_service_time: None,
            upstream_host: None,
        }
    }

    /// The response: its status, headers and upstream; `routed`: a route took the request
    /// (else Envoy's `NR` flag).
    pub fn responded(
        &mut self,
        status: u16,
        headers: &HeaderMap,
        upstream: Option<UpstreamHost>,
        routed: bool,
    ) {
        self.status = status;
        self.flags = if routed { "-" } else { "NR" };
        self.upstream_service_time = header(headers, "x-envoy-upstream-service-time");
        self.upstream_host = upstream.map(|u| u.0);
    }

    /// The line, once `bytes_sent` bytes of body went out.
    pub fn line(&self, bytes_sent: u64) -> String {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
        let start = self
            .start
            .replace_nanosecond(self.start.millisecond() as u32 * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Iso8601::DEFAULT).ok())
            .map(|t| {
                // Envoy's `%Y-%m-%dT%H:%M:%E3SZ`: milliseconds, a Z.
                let t = t.trim_end_matches('Z');
                let (secs, frac) = t.split_once('.').unwrap_or((t, "0"));
                format!("{secs}.{:0<3.3}Z", frac)
            })
            .unwrap_or_default();
        format!(
            "[{start}] \"{} {} {}\" {} {} {} {bytes_sent} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\"\n",
            self.method,
            self.path,
            self.protocol,
            self.status,
            self.flags,
            self.bytes_received,
            self.started.elapsed().as_millis(),
            or_dash(&self.upstream_service_time),
            or_dash(&self.forwarded_for),
            or_dash(&self.user_agent),
            or_dash(&self.request_id),
            or_dash(&self.authority),
            or_dash(&self.upstream_host),
        )
    }

    /// Writes the line to stdout.
    pub fn write(&self, bytes_sent: u64) {
        let line = self.line(bytes_sent);
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_in_envoys_default_format_with_dashes_for_what_is_missing() {
        let req = Request::builder()
            .method("POST")
            .uri("/ratings/1?x=1")
            .header("host", "ratings:9080")
            .header("user-agent", "test/1")
            .header("content-length", "7")
            .body(())
            .unwrap();
        let mut entry = Entry::new(&req);
        entry.responded(
            201,
            &HeaderMap::new(),
            Some(UpstreamHost("127.0.0.1:8080".into())),
            true,
        );
        let line = entry.line(12);
        let rest = line
            .split_once("] ")
            .map(|(t, rest)| {
                assert!(
                    t.starts_with('[') && t.ends_with('Z') && t.len() == 25,
                    "{t}"
                );
                rest
            })
            .unwrap();
        let (before, after) = rest.split_once(" 12 ").unwrap();
        assert_eq!(before, "\"POST /ratings/1?x=1 HTTP/1.1\" 201 - 7");
        let after = after.split_once(' ').unwrap().1;
        assert_eq!(
            after,
            "- \"-\" \"test/1\" \"-\" \"ratings:9080\" \"127.0.0.1:8080\"\n"
        );
        entry.responded(404, &HeaderMap::new(), None, false);
        assert!(
            entry.line(0).contains("\" 404 NR 7 0 "),
            "{}",
            entry.line(0)
        );
    }
}
