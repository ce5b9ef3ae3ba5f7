//! The live monitor page served at `/`: one self-contained HTML file (no
//! external scripts or fonts, so it works on a network with no internet).
//! It lists devices from `/v1/devices` and follows `/v1/events` with the
//! browser's `EventSource`, which reconnects by itself with `Last-Event-ID`.

use axum::response::Html;

const PAGE: &str = include_str!("index.html");

/// The live monitor page. With `?token=`, the token is traded for a cookie
/// and the answer is a 303 to `/`.
#[utoipa::path(
    get,
    path = "/",
    tag = "monitor",
    params(("token" = Option<String>, Query, description = "A key, traded for an HttpOnly cookie")),
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html"),
        (status = 303, description = "The token became a cookie; the page is at `/`"),
    ),
)]
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
