//! The live monitor page served at `/`: one self-contained HTML file (no
//! external scripts or fonts, so it works on a network with no internet).
//! It lists devices from `/v1/devices` and follows `/v1/events` with the
//! browser's `EventSource`, which reconnects by itself with `Last-Event-ID`.

use axum::response::Html;

const PAGE: &str = include_str!("index.html");

/// `GET /`: the monitor page.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
