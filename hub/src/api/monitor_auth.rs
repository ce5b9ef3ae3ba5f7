//! The monitor token (`--monitor-token`): when set, the monitor API (events,
//! devices, readings, commands) needs it as `Authorization: Bearer <token>`,
//! the `hub_token` cookie, or the `token` query parameter — the last two
//! because a browser's `EventSource` cannot set headers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::auth;
use crate::server::Shared;

fn presented(request: &Request) -> Option<String> {
    let headers = request.headers();
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
    {
        return Some(token.to_owned());
    }
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("hub_token=").map(str::to_owned));
    if from_cookie.is_some() {
        return from_cookie;
    }
    request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(percent_decode)
    })
}

/// Decodes `%XX` escapes and `+`, enough for a token in a URL.
fn percent_decode(text: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? << 4 | hex(*bytes.get(i + 2)?)?))
            .flatten();
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, other) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuses monitor requests without the token, when one is configured.
pub async fn require(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(expected) = &shared.monitor_token else {
        return next.run(request).await;
    };
    match presented(&request) {
        Some(token) if auth::secrets_match(&token, expected) => next.run(request).await,
        Some(_) => ApiError::unauthorized("wrong monitor token").into_response(),
        None => ApiError::unauthorized(
            "this hub needs its monitor token: Authorization: Bearer, the hub_token cookie, or ?token=",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_urls_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Fb%3D"), "a/b=");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%2"), "end%2");
        assert_eq!(percent_decode("%é"), "%é");
    }
}
