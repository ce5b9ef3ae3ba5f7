//! `GET /v1/readings?device=&metric=&from=&to=&limit=&cursor=&format=json|csv`,
//! and with `step=` the same device's readings in buckets.
//!
//! Paged: an answer that is not the last names the next page in `next` (JSON)
//! and in a `Link: <…>; rel="next"` header (both formats), so every request
//! costs about its `limit` however much is stored. A `step` query answers
//! at most 100,000 buckets at once, read from the roll-ups where the step
//! allows.

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use std::fmt::Write;

use super::access;
use crate::access::Principal;
use crate::http_error::ApiError;
use crate::store::Store;
use crate::store::buckets::{BucketQuery, BucketRow};
use crate::store::query::{After, ReadingFilter, ReadingRow};

const DEFAULT_LIMIT: u32 = 1_000;
const MAX_LIMIT: u32 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// What a query string asks for.
#[derive(Debug, Clone, PartialEq)]
enum Asked {
    /// A page of readings.
    Page(ReadingFilter),
    /// Buckets of `step` (`step=`).
    Buckets(BucketQuery),
}

/// The most buckets one `step` query may span.
const MAX_BUCKETS: i64 = 100_000;

/// Parses the query string; every problem names its parameter.
fn parse(pairs: &[(String, String)]) -> Result<(Asked, Format), ApiError> {
    let mut filter = ReadingFilter {
        limit: DEFAULT_LIMIT,
        ..ReadingFilter::default()
    };
    let mut format = Format::Json;
    let mut step_ms = None;
    let mut paging = None;
    for (name, value) in pairs {
        let ms = |value: &str| {
            value.parse::<i64>().map_err(|_| {
                ApiError::bad_parameter(
                    name,
                    format!("{name} must be milliseconds since the Unix epoch, got {value:?}"),
                )
            })
        };
        match name.as_str() {
            "device" => filter.device = Some(value.clone()),
            "metric" => filter.metric = Some(value.clone()),
            "from" => filter.from_ms = Some(ms(value)?),
            "to" => filter.to_ms = Some(ms(value)?),
            "limit" => {
                paging = Some("limit");
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                    .ok_or_else(|| {
                        ApiError::bad_parameter(
                            name,
                            format!("limit must be 1 to {MAX_LIMIT}, got {value:?}"),
                        )
                    })?;
            }
            "format" => {
                format = match value.as_str() {
                    "json" => Format::Json,
                    "csv" => Format::Csv,
                    _ => {
                        return Err(ApiError::bad_parameter(
                            name,
                            format!("format must be json or csv, got {value:?}"),
                        ));
                    }
                }
            }
            "cursor" => {
                paging = Some("cursor");
                filter.after = Some(cursor_from(value)?);
            }
            "step" => step_ms = Some(step_from(value)?),
            // Read by the monitor-token check.
            "token" => {}
            _ => {
                return Err(ApiError::bad_parameter(
                    name,
                    format!(
                        "unknown parameter {name:?}; known: device, metric, from, to, limit, cursor, step, format, token"
                    ),
                ));
            }
        }
    }
    if let (Some(from), Some(to)) = (filter.from_ms, filter.to_ms)
        && from > to
    {
        return Err(ApiError::bad_parameter("to", "to must not be before from"));
    }
    if let Some(step_ms) = step_ms {
        return Ok((Asked::Buckets(buckets(filter, step_ms, paging)?), format));
    }
    // A cursor belongs to the order it was made in: time with a device,
    // storage without.
    match (&filter.device, filter.after) {
        (Some(_), Some(After::Storage(_))) | (None, Some(After::Time { .. })) => {
            return Err(ApiError::bad_parameter(
                "cursor",
                "this cursor belongs to a query with a different device filter; \
                 pass back the `next` of the same query",
            ));
        }
        _ => {}
    }
    Ok((Asked::Page(filter), format))
}

/// A step: a duration such as `10s`, `1m`, `15m`, `1h` or `1d`, in whole
/// milliseconds.
fn step_from(text: &str) -> Result<i64, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_parameter(
            "step",
            format!("step must be a duration such as 10s, 1m, 15m, 1h or 1d ({why}), got {text:?}"),
        )
    };
    let step = humantime::parse_duration(text).map_err(|_| bad("not a duration"))?;
    if step.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad("whole milliseconds"));
    }
    match i64::try_from(step.as_millis()) {
        Ok(0) => Err(bad("more than zero")),
        Ok(ms) => Ok(ms),
        Err(_) => Err(bad("too long")),
    }
}

/// A `step` query from the rest of the parameters: one device, a range
/// rounded out to whole steps, no paging.
fn buckets(
    filter: ReadingFilter,
    step_ms: i64,
    paging: Option<&str>,
) -> Result<BucketQuery, ApiError> {
    if let Some(paging) = paging {
        return Err(ApiError::bad_parameter(
            paging,
            "a step query is not paged: it answers every bucket of its range at once",
        ));
    }
    let device = filter
        .device
        .ok_or_else(|| ApiError::bad_parameter("device", "a step query needs device"))?;
    let from = filter
        .from_ms
        .ok_or_else(|| ApiError::bad_parameter("from", "a step query needs from"))?;
    let to = filter.to_ms.unwrap_or_else(crate::store::now_ms).max(from);
    // Rounded out to whole steps: every bucket is whole. In i128, so the
    // edges of i64 cannot overflow.
    let step = i128::from(step_ms);
    let start = i128::from(from) - i128::from(from).rem_euclid(step);
    let count = ((i128::from(to) - start + step - 1) / step).max(1);
    if count > i128::from(MAX_BUCKETS) {
        return Err(ApiError::bad_parameter(
            "step",
            format!(
                "{count} buckets of {step_ms} ms from `from` to `to`; at most {MAX_BUCKETS}: take a longer step or a shorter range"
            ),
        ));
    }
    let in_range = |ms: i128| i64::try_from(ms).ok();
    let (Some(from_ms), Some(to_ms)) = (in_range(start), in_range(start + count * step)) else {
        return Err(ApiError::bad_parameter(
            "from",
            "the range, rounded out to whole steps, leaves what 64-bit milliseconds hold",
        ));
    };
    Ok(BucketQuery {
        device,
        metric: filter.metric,
        from_ms,
        to_ms,
        step_ms,
    })
}

/// The text of a cursor: `t{ts_ms}.{pos}` in time order, `p{pos}` in
/// storage order. Clients pass back what `next` said; its shape is not a
/// promise.
fn cursor_text(after: After) -> String {
    match after {
        After::Time { ts_ms, pos } => format!("t{ts_ms}.{pos}"),
        After::Storage(pos) => format!("p{pos}"),
    }
}

fn cursor_from(text: &str) -> Result<After, ApiError> {
    let parsed = if let Some(rest) = text.strip_prefix('t') {
        rest.rsplit_once('.').and_then(|(ts, pos)| {
            Some(After::Time {
                ts_ms: ts.parse().ok()?,
                pos: pos.parse().ok()?,
            })
        })
    } else {
        text.strip_prefix('p')
            .and_then(|pos| pos.parse().ok())
            .map(After::Storage)
    };
    parsed.ok_or_else(|| {
        ApiError::bad_parameter(
            "cursor",
            format!("cursor must be the `next` of an earlier answer, got {text:?}"),
        )
    })
}

/// The next page's address: this query with its cursor moved. The monitor
/// token is left out: a credential is never echoed back.
fn next_link(pairs: &[(String, String)], next: After) -> String {
    let mut query: Vec<(&str, String)> = pairs
        .iter()
        .filter(|(name, _)| name != "cursor" && name != "token")
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    query.push(("cursor", cursor_text(next)));
    let query = serde_urlencoded::to_string(&query).unwrap_or_default();
    format!("</v1/readings?{query}>; rel=\"next\"")
}

/// One page of `GET /v1/readings` as JSON.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct Readings {
    readings: Vec<ReadingRow>,
    /// Pass it back as `cursor` (with the same filters) for the next page;
    /// `null` once everything that matched has been returned.
    next: Option<String>,
}

/// A `step` query's answer as JSON: every bucket with readings, by metric
/// name, then time.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct Buckets {
    /// The step, in ms.
    step_ms: i64,
    /// The range after rounding out to whole steps: `from` inclusive, `to`
    /// exclusive, ms since the Unix epoch.
    from: i64,
    to: i64,
    buckets: Vec<BucketRow>,
}

/// What `GET /v1/readings` answers in JSON: a page of readings, or with
/// `step` buckets.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum Answer {
    Readings(Readings),
    Buckets(Buckets),
}

/// Stored readings, one page. With `device`, oldest first by device time
/// (`ts_ms`, then `pos`); without, in storage order (`pos`), reading at most
/// 100,000 positions a page, so a page may hold fewer than `limit` and still
/// not be the last. While there is more, both formats carry
/// `Link: <…>; rel="next"`.
///
/// With `step` (and `device` and `from`): the device's readings in buckets
/// of that duration by device time, starting at multiples of `step` since
/// the epoch, `from` and `to` rounded out to whole steps, at most 100,000
/// buckets, not paged. A step that is a multiple of an hour or a minute is
/// read from those roll-ups, a smaller one from the raw readings.
#[utoipa::path(
    get,
    path = "/v1/readings",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(
        ("device" = Option<String>, Query, description = "Only this device; its readings then come by time"),
        ("metric" = Option<String>, Query, description = "Only this metric name"),
        ("from" = Option<i64>, Query, description = "From this device time on (inclusive), ms since the Unix epoch"),
        ("to" = Option<i64>, Query, description = "Before this device time (exclusive), ms since the Unix epoch; not before `from`"),
        ("limit" = Option<u32>, Query, description = "At most this many readings (default 1000)", minimum = 1, maximum = 100000),
        ("cursor" = Option<String>, Query, pattern = "^(t-?[0-9]{1,18}\\.[0-9]{1,18}|p[0-9]{1,18})$",
         description = "The `next` of the page before, with the same filters (a cursor from a query with a device is refused without one, and the other way round)"),
        ("step" = Option<String>, Query, description = "Buckets of this duration (`10s`, `1m`, `15m`, `1h`, `1d`) instead of readings; needs `device` and `from`, and neither `limit` nor `cursor`"),
        ("format" = Option<String>, Query, description = "`json` (default) or `csv`", pattern = "^(json|csv)$"),
        ("token" = Option<String>, Query, description = "A key, for clients that cannot send a header"),
    ),
    responses(
        (status = 200, description = "One page", headers(("link" = String, description = "`</v1/readings?…&cursor=…>; rel=\"next\"` while there is more")),
         content(
            (Answer = "application/json"),
            (String = "text/csv", example = "pos,device,metric,unit,ts_ms,value\n1,sim-01,temperature,°C,1764300000000,21.5\n"),
         )),
        (status = 400, description = "A bad parameter, named", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "On a hub without keys or monitor token: a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
        (status = 503, description = "The database cannot be read", body = ApiError),
    ),
)]
pub async fn readings(
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (mut filter, format) = match parse(&pairs)? {
        (Asked::Page(filter), format) => (filter, format),
        (Asked::Buckets(query), format) => {
            access::sees(&principal, &store, &query.device).await?;
            return buckets_answer(&store, &query, format).await;
        }
    };
    match &filter.device {
        Some(device) => access::sees(&principal, &store, device).await?,
        None => filter.groups = principal.groups.as_deref().map(<[String]>::to_vec),
    }
    let page = store.readings(&filter).await?;
    let mut response = match format {
        Format::Json => Json(Answer::Readings(Readings {
            readings: page.rows,
            next: page.next.map(cursor_text),
        }))
        .into_response(),
        Format::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&page.rows),
        )
            .into_response(),
    };
    if let Some(next) = page.next
        && let Ok(link) = HeaderValue::from_str(&next_link(&pairs, next))
    {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

fn to_csv(rows: &[ReadingRow]) -> String {
    let mut out = String::from("pos,device,metric,unit,ts_ms,value\n");
    for row in rows {
        let value = row.value.map(|v| v.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            row.pos,
            csv_field(&row.device),
            csv_field(&row.metric),
            csv_field(&row.unit),
            row.ts_ms,
            value
        );
    }
    out
}

async fn buckets_answer(
    store: &Store,
    query: &BucketQuery,
    format: Format,
) -> Result<Response, ApiError> {
    let buckets = store.buckets(query).await?;
    Ok(match format {
        Format::Json => Json(Answer::Buckets(Buckets {
            step_ms: query.step_ms,
            from: query.from_ms,
            to: query.to_ms,
            buckets,
        }))
        .into_response(),
        Format::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            buckets_csv(&buckets),
        )
            .into_response(),
    })
}

fn buckets_csv(buckets: &[BucketRow]) -> String {
    let number = |value: Option<f64>| value.map(|v| v.to_string()).unwrap_or_default();
    let mut out = String::from("metric,unit,ts_ms,n,mean,min,max\n");
    for bucket in buckets {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{}",
            csv_field(&bucket.metric),
            csv_field(&bucket.unit),
            bucket.ts_ms,
            bucket.n,
            number(bucket.mean),
            number(bucket.min),
            number(bucket.max)
        );
    }
    out
}

/// A text field as CSV: quoted when RFC 4180 requires it, and safe to open
/// in a spreadsheet. A field that begins like a formula (`=`, `+`, `-`,
/// `@`, a tab or a carriage return) gets a leading `'` inside quotes, as
/// OWASP advises against CSV injection, and control characters (which a
/// database from before `Hello` refused them may hold) become U+FFFD.
fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let controls = text.contains(|c: char| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    if !formula && !controls && !text.contains([',', '"', '\n', '\r']) {
        return text.into();
    }
    let mut field = String::with_capacity(text.len() + 3);
    field.push('"');
    if formula {
        field.push('\'');
    }
    for c in text.chars() {
        match c {
            '"' => field.push_str("\"\""),
            '\n' | '\r' | '\t' => field.push(c),
            c if c.is_control() => field.push(char::REPLACEMENT_CHARACTER),
            c => field.push(c),
        }
    }
    field.push('"');
    field.into()
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

    fn page(query: &[(&str, &str)]) -> (ReadingFilter, Format) {
        match parse(&pairs(query)).unwrap() {
            (Asked::Page(filter), format) => (filter, format),
            other => panic!("not a page: {other:?}"),
        }
    }

    fn step(query: &[(&str, &str)]) -> Result<BucketQuery, serde_json::Value> {
        match parse(&pairs(query)) {
            Ok((Asked::Buckets(query), _)) => Ok(query),
            Ok(other) => panic!("not buckets: {other:?}"),
            Err(err) => Err(serde_json::to_value(&err).unwrap()),
        }
    }

    #[test]
    fn defaults_are_json_and_a_thousand_rows() {
        let (filter, format) = page(&[]);
        assert_eq!(filter.limit, DEFAULT_LIMIT);
        assert_eq!(format, Format::Json);
    }

    #[test]
    fn a_step_query_rounds_its_range_out_to_whole_steps() {
        let query = step(&[
            ("device", "d1"),
            ("step", "1m"),
            ("from", "90000"),
            ("to", "150001"),
        ])
        .unwrap();
        assert_eq!(
            query,
            BucketQuery {
                device: "d1".into(),
                metric: None,
                from_ms: 60_000,
                to_ms: 180_000,
                step_ms: 60_000,
            }
        );
        assert_eq!(
            step(&[("device", "d"), ("from", "0"), ("to", "0"), ("step", "10s")])
                .unwrap()
                .to_ms,
            10_000
        );
        assert_eq!(
            step(&[("device", "d"), ("from", "0"), ("step", "1d")])
                .unwrap()
                .step_ms,
            86_400_000
        );
    }

    #[test]
    fn bad_steps_name_the_parameter_at_fault() {
        for (query, at_fault) in [
            (
                &[("device", "d"), ("from", "0"), ("step", "0s")][..],
                "step",
            ),
            (
                &[("device", "d"), ("from", "0"), ("step", "soon")][..],
                "step",
            ),
            (&[("device", "d"), ("from", "0"), ("step", "1")][..], "step"),
            (
                &[
                    ("device", "d"),
                    ("from", "0"),
                    ("to", "1000000000"),
                    ("step", "1ms"),
                ][..],
                "step",
            ),
            (&[("from", "0"), ("step", "1m")][..], "device"),
            (&[("device", "d"), ("step", "1m")][..], "from"),
            (
                &[
                    ("device", "d"),
                    ("from", "0"),
                    ("step", "1m"),
                    ("limit", "5"),
                ][..],
                "limit",
            ),
            (
                &[
                    ("device", "d"),
                    ("from", "0"),
                    ("step", "1m"),
                    ("cursor", "t1.1"),
                ][..],
                "cursor",
            ),
        ] {
            let body = step(query).unwrap_err();
            assert_eq!(body["parameter"], at_fault, "{query:?}: {body}");
        }
        // The edges of i64 do not overflow.
        let far = i64::MAX.to_string();
        let body = step(&[
            ("device", "d"),
            ("from", "-9223372036854775808"),
            ("to", &far),
            ("step", "1d"),
        ])
        .unwrap_err();
        assert_eq!(body["parameter"], "step");
    }

    #[test]
    fn every_parameter_is_read() {
        let (filter, format) = page(&[
            ("device", "d1"),
            ("metric", "temperature"),
            ("from", "10"),
            ("to", "20"),
            ("limit", "5"),
            ("format", "csv"),
        ]);
        assert_eq!(
            filter,
            ReadingFilter {
                device: Some("d1".into()),
                metric: Some("temperature".into()),
                from_ms: Some(10),
                to_ms: Some(20),
                limit: 5,
                after: None,
                groups: None,
            }
        );
        assert_eq!(format, Format::Csv);
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (name, value) in [
            ("from", "yesterday"),
            ("to", "1.5"),
            ("limit", "0"),
            ("limit", "100001"),
            ("format", "xml"),
            ("colour", "blue"),
        ] {
            let err = parse(&pairs(&[(name, value)])).unwrap_err();
            let body = serde_json::to_value(&err).unwrap();
            assert_eq!(body["parameter"], name, "{name}={value}");
            assert_eq!(body["error"], "bad_parameter");
        }
    }

    #[test]
    fn the_monitor_token_may_come_in_the_query() {
        assert!(parse(&pairs(&[("token", "secret"), ("limit", "5")])).is_ok());
    }

    #[test]
    fn a_range_that_ends_before_it_starts_is_refused() {
        let err = parse(&pairs(&[("from", "20"), ("to", "10")])).unwrap_err();
        assert_eq!(serde_json::to_value(&err).unwrap()["parameter"], "to");
    }

    #[test]
    fn cursors_read_back_what_they_wrote() {
        for after in [
            After::Time { ts_ms: -5, pos: 3 },
            After::Time {
                ts_ms: 1_764_300_000_000,
                pos: i64::MAX,
            },
            After::Storage(0),
        ] {
            assert_eq!(cursor_from(&cursor_text(after)).unwrap(), after);
        }
        for bad in ["", "t", "t5", "t.5", "p", "px", "q5", "t5.x"] {
            assert!(cursor_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cursor_is_refused_in_the_other_order() {
        for query in [
            [("device", "d1"), ("cursor", "p5")],
            [("metric", "m"), ("cursor", "t5.5")],
        ] {
            let err = parse(&pairs(&query)).unwrap_err();
            assert_eq!(serde_json::to_value(&err).unwrap()["parameter"], "cursor");
        }
    }

    #[test]
    fn the_next_link_keeps_the_query_but_not_the_token() {
        let link = next_link(
            &pairs(&[("device", "a b"), ("token", "secret"), ("cursor", "t1.1")]),
            After::Time { ts_ms: 2, pos: 9 },
        );
        assert_eq!(link, "</v1/readings?device=a+b&cursor=t2.9>; rel=\"next\"");
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn csv_fields_that_look_like_formulas_are_neutralised() {
        for (name, cell) in [
            ("=HYPERLINK(\"x\")", "\"'=HYPERLINK(\"\"x\"\")\""),
            ("+1", "\"'+1\""),
            ("-2+3", "\"'-2+3\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\tcmd", "\"'\tcmd\""),
            ("\rcmd", "\"'\rcmd\""),
        ] {
            assert_eq!(csv_field(name), cell, "{name:?}");
        }
        assert_eq!(csv_field("a=b"), "a=b", "only a leading sign is a formula");
    }

    #[test]
    fn control_characters_never_reach_a_csv_raw() {
        assert_eq!(
            csv_field("nul\0esc\u{1b}[31m"),
            "\"nul\u{fffd}esc\u{fffd}[31m\""
        );
    }
}
