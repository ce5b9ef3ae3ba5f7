//! Who a monitor or admin request is: its key (an API key from `hub key
//! add`, or `--monitor-token`, an admin key of every device) becomes the
//! request's [`Principal`], which handlers ask what it may do
//! ([`require`]) and which devices it sees ([`sees`], [`scope`]).
//!
//! A key comes as `Authorization: Bearer <key>`, the `hub_token` cookie,
//! or the `token` query parameter — the last two because a browser's
//! `EventSource` cannot set headers. Opening the page as `/?token=…`
//! trades the key for an `HttpOnly`, `SameSite=Strict` cookie and
//! redirects to `/`, so the key leaves the address bar and history, and
//! scripts on the page never see it. A request that carries only the
//! cookie and changes something (`POST`) must come from the hub's own
//! origin: another site cannot make a browser send commands with it
//! (CSRF). The hub never logs request URLs or keys.
//!
//! A hub with neither keys nor a monitor token is open, but answers only
//! for host names it knows (DNS rebinding). Wrong keys from one address
//! are answered 429 for a while (`access::failures`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::access::failures::Failures;
use crate::access::{Keys, Principal, Refusal, Role};
use crate::auth;
use crate::http_error::ApiError;
use crate::store::Store;

/// The cookie the page's key is traded for.
const COOKIE: &str = "hub_token";

/// What the gate in front of the monitor and admin API knows: the keys,
/// the wrong ones per address, whether the hub serves TLS (its cookie is
/// then `Secure`), and the host names an open API answers to.
#[derive(Debug, Clone)]
pub struct Gate {
    pub keys: Keys,
    pub failures: Arc<Failures>,
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

/// Puts the request's [`Principal`] on it, or refuses it: 401 without a
/// working key when one is needed, 429 for an address that sent too many
/// wrong ones, 403 for a cross-site request with the cookie, and on an
/// open hub 403 for a host name it does not know.
pub async fn require(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    if !gate.keys.required() {
        if let Some(host) = request_host(&request)
            && !host_allowed(host, &gate.allowed_hosts)
        {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "this hub has no keys and no monitor token: its API answers only for an IP \
                 address, localhost, or a name given with --allowed-host",
            )
            .into_response();
        }
        // A key made a moment ago makes this a request that needs one:
        // it is judged as such below.
        if let Ok(principal) = gate.keys.resolve(None) {
            request.extensions_mut().insert(principal);
            return next.run(request).await;
        }
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    let now = Instant::now();
    if let Some(wait) = peer.and_then(|peer| gate.failures.blocked(peer, now)) {
        return too_many(wait);
    }
    let presented = presented(&request);
    let (secret, by_cookie) = match &presented {
        Some(Presented::Explicit(secret)) => (Some(secret.as_str()), false),
        Some(Presented::Cookie(secret)) => (Some(secret.as_str()), true),
        None => (None, false),
    };
    let principal = match gate.keys.resolve(secret) {
        Ok(principal) => principal,
        Err(Refusal::Missing) => {
            return ApiError::unauthorized(
                "this hub needs a key: Authorization: Bearer, the hub_token cookie, or ?token=",
            )
            .into_response();
        }
        Err(Refusal::Wrong) => {
            tracing::info!(peer = ?peer, "a request with a key that does not work");
            if let Some(wait) = peer.and_then(|peer| gate.failures.failed(peer, now)) {
                tracing::warn!(peer = ?peer, "too many wrong keys from one address; refusing it for a while");
                return too_many(wait);
            }
            return ApiError::unauthorized("this key does not work: unknown, revoked or expired")
                .into_response();
        }
    };
    if by_cookie && request.method() != Method::GET && cross_site(request.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            "a request from another site cannot use the monitor cookie; send the key as Authorization: Bearer",
        )
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// 429 with `Retry-After` in whole seconds.
fn too_many(wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_wrong_keys",
        format!("too many wrong keys from this address; retry in {seconds} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// `GET /?token=…` with a working key: sets the cookie and sends the
/// browser to `/` without the key in its address. Anything else is the
/// page itself (which reports a missing or wrong key when it calls the
/// API).
pub async fn trade_token_for_cookie(
    State(gate): State<Gate>,
    request: Request,
    next: Next,
) -> Response {
    let secure = if gate.secure { "; Secure" } else { "" };
    if let Some(token) = query_token(request.uri().query())
        && gate.keys.is_valid(&token)
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

/// 403 unless the principal's role may do what `role` may.
///
/// # Errors
/// The role is short of it.
pub fn require_role(principal: &Principal, role: Role, what: &str) -> Result<(), ApiError> {
    if principal.may(role) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "{what} needs the {role} role; this key is a {}",
            principal.role
        ),
    ))
}

/// The answer for a device the principal does not see: the same as for a
/// device that does not exist, so ids do not leak.
#[must_use]
pub fn unknown_device(device: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_device",
        format!("no device {device:?}"),
    )
}

/// Ok if the principal sees `device` (every device, or one of its
/// groups'); 404 [`unknown_device`] otherwise.
///
/// # Errors
/// It does not, or storage cannot be read.
pub async fn sees(principal: &Principal, store: &Store, device: &str) -> Result<(), ApiError> {
    match &principal.groups {
        None => Ok(()),
        Some(groups) if store.in_groups(device, groups).await? => Ok(()),
        Some(_) => Err(unknown_device(device)),
    }
}

/// The devices a principal sees, for lists and streams: every device, or
/// those of its groups, read now.
///
/// # Errors
/// Storage cannot be read.
pub async fn scope(principal: &Principal, store: &Store) -> Result<Option<Vec<String>>, ApiError> {
    match &principal.groups {
        None => Ok(None),
        Some(groups) => Ok(Some(store.devices_in_groups(groups).await?)),
    }
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
