//! Entra ID's v2.0 token endpoint for client credentials (secret or federated assertion).

use super::http::{Req, Resp, json_resp};
use super::world::Shared;
use hyper::{Method, StatusCode};
use serde_json::json;
use std::collections::HashMap;

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Resp {
    json_resp(
        status,
        &json!({ "error": error, "error_description": description, "error_codes": [], "timestamp": chrono::Utc::now().to_rfc3339() }),
    )
}

pub fn handle(shared: &Shared, req: &Req) -> Resp {
    let segs = req.segments();
    if req.method != Method::POST || segs.len() != 4 || segs[1..] != ["oauth2", "v2.0", "token"] {
        return oauth_error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "AADSTS900561: The endpoint only accepts POST requests.",
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect();
    let mut w = shared.world();
    if segs[0] != w.ids.tenant {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "AADSTS90002: Tenant '{}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.",
                segs[0]
            ),
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if form.get("client_id") != Some(&w.ids.client_id) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{}' was not found in the directory.",
                form.get("client_id").cloned().unwrap_or_default()
            ),
        );
    }
    let secret_ok = form.get("client_secret") == Some(&w.ids.client_secret);
    // Workload identity: a federated token (a JWT: three dot-separated parts) as a jwt-bearer
    // client assertion.
    let assertion_ok = form
        .get("client_assertion")
        .is_some_and(|a| a.split('.').count() == 3)
        && form.get("client_assertion_type").map(String::as_str)
            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    if !secret_ok && !assertion_ok {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        );
    }
    let Some(scope) = form.get("scope") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'scope'.",
        );
    };
    let audience = scope
        .split(' ')
        .next()
        .unwrap_or_default()
        .trim_end_matches("/.default")
        .trim_end_matches('/')
        .to_string();
    let token = w.issue_token(&audience);
    json_resp(
        StatusCode::OK,
        &json!({ "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token }),
    )
}
