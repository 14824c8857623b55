//! The control API a background lab serves on loopback, and the client
//! the other commands use. Bad input gets a 4xx with a JSON reason.
//!
//! | call | what it does |
//! |---|---|
//! | `GET /status` | method, endpoints, chaos switched on, restarts, bytes per link |
//! | `POST /chaos` `{"path", "yaml"}` | switches a Chaos Mesh object on |
//! | `DELETE /chaos` | switches every fault off |
//! | `DELETE /chaos/{name}` | switches one off (404 if it is not on) |
//! | `POST /shutdown` | stops the lab and everything it started |

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{watch, Mutex};

use super::LabState;
use crate::platform::local::LocalPlatform;
use crate::platform::Platform;

/// What the control API holds.
pub struct Control {
    /// Taken out when the lab stops.
    pub platform: Mutex<Option<LocalPlatform>>,
    pub method: String,
    pub order_url: String,
    /// Set when the lab is asked to stop.
    pub stop: watch::Sender<bool>,
}

/// A chaos object as `txlab chaos on` sends it: the file's text and where
/// it came from (for the error messages).
#[derive(Debug, Serialize, Deserialize)]
pub struct ChaosRequest {
    pub path: String,
    pub yaml: String,
}

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/chaos", post(chaos_on).delete(all_off))
        .route("/chaos/{name}", delete(one_off))
        .route("/shutdown", post(shutdown))
        .with_state(control)
}

fn reason(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": message.to_string() }))).into_response()
}

fn stopping() -> Response {
    reason(StatusCode::SERVICE_UNAVAILABLE, "the lab is stopping")
}

async fn status(State(c): State<Arc<Control>>) -> Response {
    let guard = c.platform.lock().await;
    let Some(platform) = guard.as_ref() else {
        return stopping();
    };
    let network: std::collections::BTreeMap<String, u64> =
        crate::results::traffic_between(&[], &platform.traffic());
    Json(json!({
        "pid": std::process::id(),
        "method": c.method,
        "order_url": c.order_url,
        "chaos": platform.chaos_active(),
        "restarts": platform.restarts().await,
        "network": network,
    }))
    .into_response()
}

async fn chaos_on(State(c): State<Arc<Control>>, body: Bytes) -> Response {
    let req: ChaosRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return reason(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"path\", \"yaml\"}}: {e}"),
            )
        }
    };
    let fault = match crate::chaos::mesh::parse(Path::new(&req.path), &req.yaml) {
        Ok(f) => f,
        Err(e) => return reason(StatusCode::BAD_REQUEST, e),
    };
    let mut guard = c.platform.lock().await;
    let Some(platform) = guard.as_mut() else {
        return stopping();
    };
    match platform.chaos_on(&fault).await {
        Ok(notes) => Json(json!({ "on": fault.name, "notes": notes })).into_response(),
        Err(e) => reason(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
    }
}

async fn all_off(State(c): State<Arc<Control>>) -> Response {
    switch_off(&c, None).await
}

async fn one_off(State(c): State<Arc<Control>>, UrlPath(name): UrlPath<String>) -> Response {
    switch_off(&c, Some(&name)).await
}

async fn switch_off(c: &Control, name: Option<&str>) -> Response {
    let mut guard = c.platform.lock().await;
    let Some(platform) = guard.as_mut() else {
        return stopping();
    };
    match platform.chaos_off(name).await {
        Ok(off) if off.is_empty() && name.is_some() => reason(
            StatusCode::NOT_FOUND,
            format!("no chaos named {} is on", name.unwrap_or_default()),
        ),
        Ok(off) => Json(json!({ "off": off })).into_response(),
        Err(e) => reason(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

async fn shutdown(State(c): State<Arc<Control>>) -> StatusCode {
    c.stop.send_replace(true);
    StatusCode::ACCEPTED
}

/// Calls the lab's control API; a 4xx/5xx becomes an error with its reason.
pub async fn call(
    lab: &LabState,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(90))
        .build()?;
    let url = format!("{}{path}", lab.control);
    let mut req = client.request(method, &url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("calling the lab (pid {}) at {url}", lab.pid))?;
    let code = resp.status();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if !code.is_success() {
        let why = value["error"].as_str().unwrap_or("no reason given");
        anyhow::bail!("{why} ({code})");
    }
    Ok(value)
}
