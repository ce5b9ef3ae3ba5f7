//! HTTP requests to local services (the hub, ChromeDriver), with reqwest:
//! the status and the whole body as text, within the kit's patience.

use std::sync::LazyLock;

use anyhow::Context;
use reqwest::Method;

use crate::PATIENCE;

/// One client for the process: its connection pool is shared.
static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        // The services are on loopback; a proxy in the environment must not
        // take the requests elsewhere.
        .no_proxy()
        // Tests look at answers as the server gave them, redirects too.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client without TLS always builds")
});

/// The shared client, for requests the helpers below do not cover.
pub fn client() -> &'static reqwest::Client {
    &CLIENT
}

/// `GET http://addr/path` with `headers`: status and body.
///
/// # Errors
/// No complete response in time.
pub async fn get(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    request(addr, "GET", path, headers, None).await
}

/// A request with an optional JSON body: status and body.
///
/// # Errors
/// The method is not one, or no complete response came in time.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let method = Method::from_bytes(method.as_bytes())?;
    let mut request = CLIENT.request(method.clone(), format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = json {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {path} on {addr}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.context("reading the body")?;
    Ok((status, body))
}
