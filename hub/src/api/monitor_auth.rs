//! The monitor token (`--monitor-token`): when set, the monitor API (events,
//! devices, readings, commands) needs it as `Authorization: Bearer <token>`,
//! the `hub_token` cookie, or the `token` query parameter — the last two
//! because a browser's `EventSource` cannot set headers.
//!
//! Opening the page as `/?token=…` trades the token for an `HttpOnly`,
//! `SameSite=Strict` cookie and redirects to `/`, so the token leaves the
//! address bar and history, and scripts on the page never see it. A
//! request that carries only the cookie and changes something (`POST`) must
//! come from the hub's own origin: another site cannot make a browser send
//! commands with it (CSRF). The hub never logs request URLs or tokens.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::auth;
use crate::http_error::ApiError;

/// The cookie the page's token is traded for.
const COOKIE: &str = "hub_token";

/// The token the monitor API needs (`None` leaves it open), whether the
/// hub serves TLS (its cookie is then `Secure`), and the host names an open
/// API answers to.
#[derive(Debug, Clone, Default)]
pub struct MonitorToken {
    pub token: Option<Arc<str>>,
    pub secure: bool,
    /// `--allowed-host`, lowercase.
    pub allowed_hosts: Arc<[String]>,
}

/// Whether an open monitor API answers a request for `host` (a `Host`
/// header or an HTTP/2 authority, with or without its port). DNS
/// rebinding makes a browser send a page's own name to the hub's address:
/// an IP address, `localhost` (and `*.localhost`, which browsers resolve
/// to loopback themselves) and names the operator listed cannot be such a
/// page's; any other name can.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    if host.starts_with('[') {
        return true; // an IPv6 address, [::1]:8080
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.contains(&name)
}

/// The host a request is for: HTTP/2's authority, or HTTP/1.1's `Host`.
fn request_host(request: &Request) -> Option<&str> {
    match request.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => request.headers().get(header::HOST)?.to_str().ok(),
    }
}

/// How a request presented a token.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    /// A header or the query: the client chose to send it.
    Explicit(String),
    /// The cookie: a browser sends it by itself, even when another site
    /// makes the request.
    Cookie(String),
}

fn presented(request: &Request) -> Option<Presented> {
    let headers = request.headers();
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
    {
        return Some(Presented::Explicit(token.to_owned()));
    }
    if let Some(token) = query_token(request.uri().query()) {
        return Some(Presented::Explicit(token));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| Presented::Cookie(value.to_owned()))
        })
}

fn query_token(query: Option<&str>) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query?)
        .ok()?
        .into_iter()
        .find_map(|(name, value)| (name == "token").then_some(value))
}

/// Whether a browser says the request comes from another site: its
/// `Sec-Fetch-Site`, or else an `Origin` whose host is not this one.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Not a browser's cross-site request: browsers send Origin on every
        // cross-origin POST.
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    origin_host != host
}

/// Refuses monitor requests without the token, when one is configured;
/// without one, refuses requests for a host name it does not know.
pub async fn require(
    State(MonitorToken {
        token: expected,
        allowed_hosts,
        ..
    }): State<MonitorToken>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = expected else {
        if let Some(host) = request_host(&request)
            && !host_allowed(host, &allowed_hosts)
        {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "this hub has no monitor token: its API answers only for an IP address, \
                 localhost, or a name given with --allowed-host",
            )
            .into_response();
        }
        return next.run(request).await;
    };
    let (token, by_cookie) = match presented(&request) {
        Some(Presented::Explicit(token)) => (token, false),
        Some(Presented::Cookie(token)) => (token, true),
        None => {
            return ApiError::unauthorized(
                "this hub needs its monitor token: Authorization: Bearer, the hub_token cookie, or ?token=",
            )
            .into_response();
        }
    };
    if !auth::secrets_match(&token, &expected) {
        return ApiError::unauthorized("wrong monitor token").into_response();
    }
    if by_cookie && request.method() != Method::GET && cross_site(request.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            "a request from another site cannot use the monitor cookie; send the token as Authorization: Bearer",
        )
        .into_response();
    }
    next.run(request).await
}

/// `GET /?token=…` with the right token: sets the cookie and sends the
/// browser to `/` without the token in its address. Anything else is the
/// page itself (which reports a missing or wrong token when it calls the
/// API).
pub async fn trade_token_for_cookie(
    State(MonitorToken {
        token: expected,
        secure,
        ..
    }): State<MonitorToken>,
    request: Request,
    next: Next,
) -> Response {
    let secure = if secure { "; Secure" } else { "" };
    if let (Some(expected), Some(token)) = (expected, query_token(request.uri().query()))
        && auth::secrets_match(&token, &expected)
        && let Ok(cookie) = HeaderValue::from_str(&format!(
            "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"
        ))
    {
        let mut response = Redirect::to("/").into_response();
        response.headers_mut().insert(header::SET_COOKIE, cookie);
        return response;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_hub_answers_addresses_localhost_and_listed_names_only() {
        let listed = ["hub.plant.example".to_owned()];
        for host in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "monitor.localhost:8080",
            "Hub.Plant.Example:8080",
            "hub.plant.example.",
        ] {
            assert!(host_allowed(host, &listed), "{host}");
        }
        for host in [
            "attacker.example:8080",
            "127.0.0.1.nip.io",
            "localhost.attacker.example",
            "",
        ] {
            assert!(!host_allowed(host, &listed), "{host}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    header::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn requests_from_the_hubs_own_origin_are_not_cross_site() {
        assert!(!cross_site(&headers(&[
            ("host", "hub:8080"),
            ("origin", "http://hub:8080")
        ])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!cross_site(&headers(&[("host", "hub:8080")])), "curl");
    }

    #[test]
    fn another_origin_or_a_cross_site_fetch_is() {
        assert!(cross_site(&headers(&[
            ("host", "hub:8080"),
            ("origin", "https://evil.example")
        ])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])));
    }

    #[test]
    fn the_query_token_is_decoded() {
        assert_eq!(
            query_token(Some("a=1&token=s3cret%2F%2B")),
            Some("s3cret/+".into())
        );
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
    }
}
