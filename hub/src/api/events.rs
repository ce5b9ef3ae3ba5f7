//! `GET /v1/events`: the live Server-Sent Events stream for browsers.
//!
//! Query: `device=a,b`, `group=g,h`, `metric=x,y`, `types=alert,status`
//! (filters; a metric filter concerns readings only), `last_event_id=N`
//! (where a first connection resumes; the browser's `Last-Event-ID`
//! header, sent on its own reconnects, wins over it). Past
//! `--max-subscribers`, 503 with `Retry-After`.
//!
//! A key limited to groups gets only their devices' events, whatever it
//! asks for: the devices are read when the stream opens (a device that
//! joins a group later is seen from the browser's next reconnect). The
//! stream ends when its key is revoked or expires.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio_util::sync::CancellationToken;

use super::access;
use crate::access::Principal;
use crate::http_error::ApiError;
use crate::live::Live;
use crate::live::subscription::{Filter, Start, Subscription, Timing};
use crate::store::Store;

fn list(value: &str) -> Option<HashSet<String>> {
    let items: HashSet<String> = value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect();
    (!items.is_empty()).then_some(items)
}

/// What a subscriber asked for: the filter, the groups it narrows the
/// devices to, and where it starts.
#[derive(Debug)]
struct Asked {
    filter: Filter,
    groups: Option<Vec<String>>,
    start: Start,
}

fn parse(pairs: &[(String, String)], headers: &HeaderMap) -> Result<Asked, ApiError> {
    let mut filter = Filter::default();
    let mut groups = None;
    let mut start = Start::Live;
    for (name, value) in pairs {
        match name.as_str() {
            "device" => filter.devices = list(value),
            "group" => groups = Some(super::groups_parameter(value)?),
            "metric" => filter.metrics = list(value),
            "types" => filter.types = types(value)?,
            "last_event_id" => start = Start::After(event_id(name, value)?),
            // Read by the monitor-token check.
            "token" => {}
            _ => {
                return Err(ApiError::bad_parameter(
                    name,
                    format!(
                        "unknown parameter {name:?}; known: device, group, metric, types, last_event_id, token"
                    ),
                ));
            }
        }
    }
    if let Some(value) = headers.get("last-event-id") {
        let value = value.to_str().map_err(|_| {
            ApiError::bad_parameter("Last-Event-ID", "Last-Event-ID must be a number")
        })?;
        // An empty header is what a browser sends before it has seen an id.
        if !value.trim().is_empty() {
            start = Start::After(event_id("Last-Event-ID", value)?);
        }
    }
    Ok(Asked {
        filter,
        groups,
        start,
    })
}

/// Narrows `devices` (`None`: all) to `allowed`.
fn narrow(devices: &mut Option<HashSet<String>>, allowed: Vec<String>) {
    let allowed: HashSet<String> = allowed.into_iter().collect();
    *devices = Some(match devices.take() {
        Some(asked) => asked.intersection(&allowed).cloned().collect(),
        None => allowed,
    });
}

/// The event names a subscriber may ask for.
const TYPES: [&str; 5] = ["reading", "status", "alert", "audit", "config"];

/// `types=alert,status`: each one a known event name, nothing else (not
/// even spaces), as the document's pattern says.
fn types(value: &str) -> Result<Option<HashSet<String>>, ApiError> {
    let mut types = HashSet::new();
    for item in value.split(',') {
        if !TYPES.contains(&item) {
            return Err(ApiError::bad_parameter(
                "types",
                format!("{item:?} is not an event type; known: reading, status, alert, audit"),
            ));
        }
        types.insert(item.to_owned());
    }
    Ok(Some(types))
}

fn event_id(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| {
            ApiError::bad_parameter(
                name,
                format!("{name} must be an event id (0 or more), got {value:?}"),
            )
        })
}

/// One event of the stream, as an `EventSource` sees it (the README shows
/// each kind's `data`). Only the document uses it: the stream is written by
/// `live::format`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Event {
    /// `reading`, `status`, `alert`, `audit` (admins of every device only)
    /// or `reset`.
    event: Option<String>,
    /// JSON text.
    data: String,
    /// A reading's, a status's or an alert transition's storage position
    /// (one sequence).
    id: Option<String>,
    /// How long the browser waits before it reconnects, in ms.
    retry: Option<u64>,
}

/// The live stream of readings, device status and alerts, as Server-Sent
/// Events: `reading`, `status`, `alert` and (for admins of every device) `audit` events whose id is their storage position,
/// `reset` when a resume point is gone, and keep-alive comments.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(
        ("device" = Option<String>, Query, description = "Only these devices, comma-separated"),
        ("group" = Option<String>, Query, pattern = "^[A-Za-z0-9._:-]{1,64}(,[A-Za-z0-9._:-]{1,64})*$", description = "Only devices of these groups, comma-separated"),
        ("metric" = Option<String>, Query, description = "Only readings of these metrics, comma-separated"),
        ("types" = Option<String>, Query, pattern = "^(reading|status|alert|audit|config)(,(reading|status|alert|audit|config))*$",
         description = "Only these kinds of event, comma-separated: reading, status, alert, audit (admins of every device only), config"),
        ("last_event_id" = Option<i64>, Query, minimum = 0, maximum = 9_223_372_036_854_775_807_i64,
         description = "Resume after this event id on a first connection; 0 is everything still stored"),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^[0-9]{0,18}$",
         description = "The browser's resume point on its reconnects; wins over `last_event_id`"),
        ("token" = Option<String>, Query, description = "A key, for `EventSource`, which cannot send headers"),
    ),
    responses(
        (status = 200, description = "An endless event stream", body = Event, content_type = "text/event-stream"),
        (status = 400, description = "A bad parameter, named", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "`types=audit` with a key that is not an admin of every device (`forbidden`); on a hub without keys or monitor token: a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
        (status = 503, description = "As many subscribers as `--max-subscribers`; retry after `Retry-After`", body = ApiError),
    ),
)]
pub async fn events(
    State(live): State<Arc<Live>>,
    State(store): State<Store>,
    State(timing): State<Timing>,
    State(shutdown): State<CancellationToken>,
    Extension(principal): Extension<Principal>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Asked {
        mut filter,
        groups,
        start,
    } = parse(&pairs, &headers)?;
    if let Some(groups) = groups {
        narrow(&mut filter.devices, store.devices_in_groups(&groups).await?);
    }
    if let Some(scope) = access::scope(&principal, &store).await? {
        narrow(&mut filter.devices, scope);
    }
    // The audit trail is for admins of every device only.
    filter.hide_audit = !principal.is_admin_of_everything();
    if filter.hide_audit && filter.types.as_ref().is_some_and(|t| t.contains("audit")) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "audit events are for admin keys of every device",
        ));
    }
    let Some(slot) = live.admit() else {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            "the hub serves as many live subscribers as it is allowed to; retry shortly",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok(response);
    };
    let subscription = Subscription::start(live, slot, filter, start, timing, shutdown).await?;
    // Ends with its key: the next piece, unless the key stopped working.
    let body = stream::unfold(
        (subscription, principal),
        |(mut subscription, principal)| async move {
            let text = tokio::select! {
                text = subscription.next_text() => text?,
                () = principal.ended() => return None,
            };
            Some((Ok::<_, Infallible>(text), (subscription, principal)))
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_are_comma_lists() {
        let Asked { filter, start, .. } = parse(
            &pairs(&[("device", "a, b"), ("metric", "x")]),
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(
            filter.devices,
            Some(HashSet::from(["a".to_string(), "b".to_string()]))
        );
        assert_eq!(filter.metrics, Some(HashSet::from(["x".to_string()])));
        assert_eq!(start, Start::Live);
    }

    #[test]
    fn the_last_event_id_header_wins_over_the_query() {
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", HeaderValue::from_static("77"));
        let Asked { start, .. } = parse(&pairs(&[("last_event_id", "5")]), &headers).unwrap();
        assert_eq!(start, Start::After(77));
    }

    #[test]
    fn an_empty_last_event_id_header_is_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", HeaderValue::from_static(""));
        let Asked { start, .. } = parse(&pairs(&[("last_event_id", "5")]), &headers).unwrap();
        assert_eq!(start, Start::After(5));
    }

    #[test]
    fn bad_ids_and_unknown_parameters_name_themselves() {
        for (name, value) in [
            ("last_event_id", "-1"),
            ("last_event_id", "x"),
            ("colour", "red"),
        ] {
            let err = parse(&pairs(&[(name, value)]), &HeaderMap::new()).unwrap_err();
            assert_eq!(serde_json::to_value(&err).unwrap()["parameter"], name);
        }
    }
}
