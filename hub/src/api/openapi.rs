//! `GET /v1/openapi.json`: the HTTP API as an OpenAPI 3.1 document, built
//! from the handlers' own annotations and types (utoipa), so what it says is
//! what they do. The suite runs schemathesis against it.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document's paths and their types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Telemetry hub",
        description = "Stored readings, the live stream, devices and their commands, alert rules and alerts. \
                       Every error answers `application/json` with `error` (a stable code), \
                       `message` and, when one is at fault, `parameter`.",
    ),
    paths(
        crate::monitor::page,
        super::events::events,
        super::devices,
        super::readings::readings,
        super::commands::send,
        super::alerts::rules,
        super::alerts::add_rule,
        super::alerts::remove_rule,
        super::alerts::alerts,
        super::alerts::acknowledge,
        crate::ingest::upgrade,
        super::health,
        super::metrics,
        document,
    ),
    modifiers(&Credentials),
    tags(
        (name = "monitor", description = "For browsers and scripts: behind `--monitor-token` when one is set"),
        (name = "devices", description = "Where devices connect"),
        (name = "operations", description = "Open to anyone who can reach the port"),
    ),
)]
struct Document;

/// The credentials the paths name.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "monitor_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`--monitor-token`; also accepted as the `hub_token` cookie or `?token=`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "device_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Bearer <device token>` from `hub device add`, or the provisioning key",
            ))),
        );
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
)]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(Document::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let document = Document::openapi();
        let paths: Vec<&str> = document.paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/",
            "/v1/events",
            "/v1/devices",
            "/v1/readings",
            "/v1/devices/{id}/commands",
            "/v1/ws",
            "/healthz",
            "/metrics",
            "/v1/openapi.json",
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        let json = serde_json::to_value(&document).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
        // The error shape every endpoint answers with.
        let error = &json["components"]["schemas"]["Error"];
        assert_eq!(error["required"], serde_json::json!(["error", "message"]));
    }
}
