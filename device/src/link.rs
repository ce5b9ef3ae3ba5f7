//! The device side of the connection handshake: open the WebSocket with a
//! bearer token, send `Hello`, wait for `Welcome` (and the `Token` before
//! it, when the provisioning key registered the device). The simulator's devices
//! use it, and so do the end-to-end tests and the benchmark harness, so
//! every client of the hub in this workspace shakes hands the same way.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use protocol::{DeviceFrame, Hello, HubFrame, Welcome};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::reason;

/// A device's WebSocket connection to the hub.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long connecting, or waiting for `Welcome`, may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the device connection to `url` with `token` as its bearer token
/// (none when empty: the device presents a client certificate instead);
/// `tls` is whom a `wss://` hub must chain to (`None`: the system's roots).
///
/// # Errors
/// The connection fails or times out, or the hub refuses it (the error
/// says the HTTP status and body, such as a 401 for a bad token).
pub async fn connect(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: &str,
) -> anyhow::Result<Ws> {
    connect_into(url, tls, token, &[]).await
}

/// [`connect`], naming the groups a device registering itself with the
/// provisioning key asks to join (`X-Device-Groups`; the hub allows those
/// its `--provision-group` lists). Nothing is asked when `groups` is empty.
///
/// # Errors
/// As [`connect`]; a group the key may not put devices in is a 403.
pub async fn connect_into(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: &str,
    groups: &[String],
) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    if !token.is_empty() {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    if !groups.is_empty() {
        request
            .headers_mut()
            .insert("x-device-groups", HeaderValue::from_str(&groups.join(","))?);
    }
    // Small buffers: ten thousand devices in one process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    let (ws, _) = timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            tls.map(Connector::Rustls),
        ),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "no answer from {} within {} s",
            reason::address(url),
            HANDSHAKE_TIMEOUT.as_secs()
        )
    })?
    .map_err(|err| anyhow::anyhow!(reason::of_connect(url, &err)))?;
    Ok(ws)
}

/// What the hub answered a `Hello`.
#[derive(Debug, Clone, PartialEq)]
pub struct Greeting {
    pub welcome: Welcome,
    /// The device's own token, when the provisioning key registered it
    /// (it came before `Welcome`): keep it before sending any batch, and
    /// present it from then on (see [`crate::keyring`]).
    pub token: Option<String>,
}

/// Sends `hello` and waits for the hub's `Welcome` (pings aside), taking
/// the `Token` the hub sends before it when it issues one.
///
/// # Errors
/// The hub answers with an `Error` frame (its message and code are in the
/// error), anything else, nothing in time, or closes.
pub async fn greet(ws: &mut Ws, hello: Hello) -> anyhow::Result<Greeting> {
    ws.send(Message::Binary(DeviceFrame::Hello(hello).encode().into()))
        .await?;
    let mut token = None;
    loop {
        let message = timeout(HANDSHAKE_TIMEOUT, ws.next())
            .await
            .context("no Welcome in time")?
            .context("hub closed before Welcome")??;
        match message {
            Message::Binary(bytes) => match HubFrame::decode(&bytes)? {
                HubFrame::Welcome(welcome) => return Ok(Greeting { welcome, token }),
                HubFrame::Token(issued) => token = Some(issued.token),
                HubFrame::Error(error) => {
                    bail!("hub refused Hello: {} (code {})", error.message, error.code)
                }
                other => bail!("expected Welcome, got {other:?}"),
            },
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(Some(close)) => bail!(
                "the hub closed the connection: {} ({})",
                close.reason,
                u16::from(close.code)
            ),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }
}

/// [`greet`], for a device that has its own token (the hub issues none).
///
/// # Errors
/// As [`greet`].
pub async fn hello(ws: &mut Ws, hello: Hello) -> anyhow::Result<Welcome> {
    Ok(greet(ws, hello).await?.welcome)
}

/// [`connect_into`] `groups`, then [`greet`].
///
/// # Errors
/// Either step fails.
pub async fn handshake(
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: String,
    groups: Arc<[String]>,
    hello_frame: Hello,
) -> anyhow::Result<(Box<Ws>, Greeting)> {
    let mut ws = connect_into(&url, tls, &token, &groups).await?;
    let greeting = greet(&mut ws, hello_frame).await?;
    Ok((Box::new(ws), greeting))
}
