//! `GET /v1/readings?device=&metric=&from=&to=&limit=&format=json|csv`.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;

use crate::http_error::ApiError;
use crate::store::Store;
use crate::store::query::{ReadingFilter, ReadingRow};

const DEFAULT_LIMIT: u32 = 1_000;
const MAX_LIMIT: u32 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// Parses the query string; every problem names its parameter.
fn parse(pairs: &[(String, String)]) -> Result<(ReadingFilter, Format), ApiError> {
    let mut filter = ReadingFilter {
        limit: DEFAULT_LIMIT,
        ..ReadingFilter::default()
    };
    let mut format = Format::Json;
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
            // Read by the monitor-token check.
            "token" => {}
            _ => {
                return Err(ApiError::bad_parameter(
                    name,
                    format!(
                        "unknown parameter {name:?}; known: device, metric, from, to, limit, format, token"
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
    Ok((filter, format))
}

/// Stored readings, oldest first. JSON: `{"readings": [...], "truncated": bool}`
/// where `truncated` says more rows matched than `limit`. CSV: a header line
/// `pos,device,metric,unit,ts_ms,value` and one line per reading.
pub async fn readings(
    State(store): State<Store>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (mut filter, format) = parse(&pairs)?;
    let limit = filter.limit as usize;
    // One row more than asked tells whether the answer is complete.
    filter.limit += 1;
    let mut rows = store.readings(&filter).await?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    Ok(match format {
        Format::Json => {
            Json(serde_json::json!({ "readings": rows, "truncated": truncated })).into_response()
        }
        Format::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&rows),
        )
            .into_response(),
    })
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

/// Quotes a field when RFC 4180 requires it.
fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
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
    fn defaults_are_json_and_a_thousand_rows() {
        let (filter, format) = parse(&[]).unwrap();
        assert_eq!(filter.limit, DEFAULT_LIMIT);
        assert_eq!(format, Format::Json);
    }

    #[test]
    fn every_parameter_is_read() {
        let (filter, format) = parse(&pairs(&[
            ("device", "d1"),
            ("metric", "temperature"),
            ("from", "10"),
            ("to", "20"),
            ("limit", "5"),
            ("format", "csv"),
        ]))
        .unwrap();
        assert_eq!(
            filter,
            ReadingFilter {
                device: Some("d1".into()),
                metric: Some("temperature".into()),
                from_ms: Some(10),
                to_ms: Some(20),
                limit: 5,
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
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
