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
        super::me,
        super::readings::readings,
        super::commands::send,
        super::alerts::rules,
        super::alerts::add_rule,
        super::alerts::remove_rule,
        super::alerts::alerts,
        super::alerts::acknowledge,
        super::config::get_config,
        super::config::put_config,
        super::config::patch_config,
        super::config::put_group_config,
        super::config::patch_group_config,
        super::admin::add_device,
        super::admin::update_device,
        super::admin::revoke_device,
        super::admin::new_token,
        super::admin::keys,
        super::admin::add_key,
        super::admin::revoke_key,
        super::admin::groups,
        super::admin::audit,
        super::backup::backup,
        crate::ingest::upgrade,
        super::health,
        super::metrics,
        document,
    ),
    modifiers(&Credentials),
    tags(
        (name = "monitor", description = "For browsers and scripts: behind a key once any key exists or `--monitor-token` is set; viewers read, operators also send commands and acknowledge alerts"),
        (name = "admin", description = "Devices, keys and groups: admin keys only"),
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
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`hub key add`, `POST /v1/admin/keys`) or `--monitor-token` \
                         (an admin key of every device); also accepted as the `hub_token` cookie \
                         or `?token=`",
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
            "/v1/admin/devices",
            "/v1/admin/keys",
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
