//! The monitor token (`--monitor-token`): when set, the monitor API (events,
//! devices, readings, commands) needs it as `Authorization: Bearer <token>`,
//! the `hub_token` cookie, or the `token` query parameter — the last two
//! because a browser's `EventSource` cannot set headers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth;
use crate::http_error::ApiError;

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
    let query = request.uri().query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find_map(|(name, value)| (name == "token").then_some(value))
}

/// The token the monitor API needs; `None` leaves it open.
#[derive(Debug, Clone, Default)]
pub struct MonitorToken(pub Option<Arc<str>>);

/// Refuses monitor requests without the token, when one is configured.
pub async fn require(
    State(MonitorToken(expected)): State<MonitorToken>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = expected else {
        return next.run(request).await;
    };
    match presented(&request) {
        Some(token) if auth::secrets_match(&token, &expected) => next.run(request).await,
        Some(_) => ApiError::unauthorized("wrong monitor token").into_response(),
        None => ApiError::unauthorized(
            "this hub needs its monitor token: Authorization: Bearer, the hub_token cookie, or ?token=",
        )
        .into_response(),
    }
}
