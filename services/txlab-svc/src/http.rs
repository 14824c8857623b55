//! What every service shares on the wire.
//!
//! Every non-2xx reply is an [`ApiError`] rendered as [`txlab_api::ErrorBody`];
//! internals (SQL, stack) go to the log, never to the client.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use txlab_api::ErrorBody;

/// Largest request body any service accepts.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input: the message says what and where.
    #[error("{0}")]
    BadRequest(String),
    /// A body that is too large (413) or not JSON (415).
    #[error("{message}")]
    Payload { status: StatusCode, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the resource's state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Refused on business grounds (no funds, no stock, no slot): final.
    #[error("{message}")]
    Refused { code: String, message: String },
    /// Transient: an injected fault or an overloaded dependency; retry.
    #[error("{0}")]
    Unavailable(String),
    /// Load shed: too much work is open; retry later (503 `overloaded`).
    #[error("{0}")]
    Overloaded(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // Pool exhaustion and lost connections pass; tell callers to retry.
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable(format!("database unavailable: {e}"))
            }
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => ApiError::Payload {
                status: s,
                message: r.body_text(),
            },
            // axum says 422 for well-formed JSON of the wrong shape; to a
            // client both are malformed input.
            _ => ApiError::BadRequest(r.body_text()),
        }
    }
}
impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}
impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Payload { status, .. } => *status,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn refused(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::Refused {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self {
            ApiError::BadRequest(_) => "bad_request".to_string(),
            ApiError::Payload { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                "payload_too_large".to_string()
            }
            ApiError::Payload { .. } => "unsupported_media_type".to_string(),
            ApiError::NotFound(_) => "not_found".to_string(),
            ApiError::Conflict { code, .. } => code.to_string(),
            ApiError::Refused { code, .. } => code.clone(),
            ApiError::Unavailable(_) => "unavailable".to_string(),
            ApiError::Overloaded(_) => "overloaded".to_string(),
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "internal".to_string()
            }
        };
        let body = ErrorBody {
            error: code,
            message: self.to_string(),
        };
        (self.status(), Json(body)).into_response()
    }
}

/// Request counters and latency histograms, labelled by route pattern (not
/// raw path, so order ids do not explode the label set).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Business events: saga steps, retries, compensations, relayed events.
    pub events: IntCounterVec,
    /// What woke the outbox relay (`cause`: `memory`, `notify`, `poll`);
    /// apart from the business events, as idle polls count here too.
    relay_wakeups: IntCounterVec,
}

impl Metrics {
    pub fn new(role: txlab_api::Role) -> Metrics {
        let registry = Registry::new_custom(
            Some("txlab".into()),
            Some([("role".to_string(), role.to_string())].into()),
        )
        .expect("static registry labels are valid");
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests served"),
            &["method", "route", "status"],
        )
        .expect("static metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["method", "route"],
        )
        .expect("static metric definition");
        let events = IntCounterVec::new(
            Opts::new("events_total", "Transaction events by kind"),
            &["kind", "detail"],
        )
        .expect("static metric definition");
        let relay_wakeups = IntCounterVec::new(
            Opts::new("relay_wakeups_total", "Outbox relay wake-ups by cause"),
            &["cause"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(events.clone()),
            Box::new(relay_wakeups.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            latency,
            events,
            relay_wakeups,
        }
    }

    pub fn event(&self, kind: &str, detail: &str) {
        self.events.with_label_values(&[kind, detail]).inc();
    }

    pub fn relay_woken(&self, cause: &str) {
        self.relay_wakeups.with_label_values(&[cause]).inc();
    }

    fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics
        .latency
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .inc();
    resp
}

/// Wraps a role's routes with what every service has: `/health`, `/metrics`,
/// JSON 404/405, a body limit and request metrics.
pub fn common(role_routes: Router, metrics: Arc<Metrics>) -> Router {
    let m = metrics.clone();
    role_routes
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/metrics", get(move || async move { m.render() }))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(ErrorBody {
                    error: "method_not_allowed".into(),
                    message: "method not allowed on this endpoint".into(),
                }),
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(metrics, track))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn body_json(resp: Response) -> (StatusCode, serde_json::Value) {
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn internal_errors_keep_their_details_out_of_the_reply() {
        let err = ApiError::Internal(anyhow::anyhow!(
            "relation \"wallets\" does not exist: SELECT secret"
        ));
        let (status, body) = body_json(err.into_response()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            serde_json::json!({"error": "internal", "message": "internal error"})
        );
    }

    #[tokio::test]
    async fn refusals_carry_their_business_code() {
        let (status, body) = body_json(ApiError::refused("no_slot", "slot s1 is full").into_response()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"], "no_slot");
        assert_eq!(body["message"], "slot s1 is full");
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_answer_in_json() {
        let metrics = Arc::new(Metrics::new(txlab_api::Role::Payment));
        let app = common(
            Router::new().route("/x", axum::routing::post(|| async { "ok" })),
            metrics.clone(),
        );
        let (status, body) = body_json(
            app.clone()
                .oneshot(Request::get("/nowhere").body(Body::empty()).unwrap())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (status, body) = body_json(
            app.clone()
                .oneshot(Request::get("/x").body(Body::empty()).unwrap())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
        );
        // Both were counted, under their route pattern.
        let text = metrics.render();
        assert!(
            text.contains(
                r#"txlab_http_requests_total{method="GET",route="unmatched",status="404",role="payment"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"route="/x",status="405",role="payment"} 1"#),
            "{text}"
        );
    }
}
