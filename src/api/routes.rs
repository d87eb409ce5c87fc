//! Route table and handlers. Handlers validate the request fully before asking the
//! supervisor, so an operator's typo is answered with what to send instead of reaching
//! the engine.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::status::StatusView;
use crate::control::{ControlError, ControlHandle, ControlRequest};
use crate::progress::SharedProgress;

/// How long a control request waits for the supervisor. It answers from its own state
/// machine within milliseconds; a longer wait means it is stuck, and the operator should
/// hear that rather than watch a hung command.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request body accepted; control bodies are a few bytes.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Every route, for the 404 message, so an operator sees what exists.
const ROUTES: &str = "GET /api/v1/progress, POST /api/v1/cutover, POST /api/v1/extend, \
                      POST /api/v1/pause, POST /api/v1/resume, POST /api/v1/cancel, \
                      GET /api/v1/report, GET /metrics";

/// What every handler can reach; cheap to clone into each worker's `App`.
#[derive(Clone)]
pub(super) struct ApiState {
    pub progress: SharedProgress,
    pub control: ControlHandle,
    pub prometheus: Option<PrometheusHandle>,
}

/// An error answer: the status and a message that says what to do next.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(serde_json::json!({ "error": self.message }))
    }
}

/// Registers every route; unknown paths get a JSON 404, known paths with the wrong
/// method a JSON 405 with an `Allow` header.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_BODY_BYTES));
    route(
        cfg,
        "/api/v1/progress",
        Method::GET,
        web::get().to(progress),
    );
    route(
        cfg,
        "/api/v1/cutover",
        Method::POST,
        web::post().to(cutover),
    );
    route(cfg, "/api/v1/extend", Method::POST, web::post().to(extend));
    route(cfg, "/api/v1/pause", Method::POST, web::post().to(pause));
    route(cfg, "/api/v1/resume", Method::POST, web::post().to(resume));
    route(cfg, "/api/v1/cancel", Method::POST, web::post().to(cancel));
    route(cfg, "/api/v1/report", Method::GET, web::get().to(report));
    route(cfg, "/metrics", Method::GET, web::get().to(metrics));
    cfg.default_service(web::to(not_found));
}

fn route(
    cfg: &mut web::ServiceConfig,
    path: &'static str,
    method: Method,
    handler: actix_web::Route,
) {
    cfg.service(web::resource(path).route(handler).default_service(web::to(
        move |req: HttpRequest| {
            let method = method.clone();
            async move { method_not_allowed(req, method) }
        },
    )));
}

fn method_not_allowed(req: HttpRequest, allowed: Method) -> HttpResponse {
    let message = format!(
        "{} does not accept {}; use {allowed}",
        req.path(),
        req.method()
    );
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, allowed.as_str()))
        .json(serde_json::json!({ "error": message }))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    let message = format!(
        "no route {} {}; the API serves {ROUTES}",
        req.method(),
        req.path()
    );
    HttpResponse::NotFound().json(serde_json::json!({ "error": message }))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn progress(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(StatusView::capture(&state.progress, now_unix()))
}

async fn report(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let report = state.progress.report.read().clone();
    match report {
        Some(report) => Ok(HttpResponse::Ok().json(report)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no report yet: the migration is {}; the report is written when the migration ends",
                state.progress.phase().as_str()
            ),
        )),
    }
}

async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    crate::metrics::record_scrape_time(&state.progress, now_unix());
    let body = state
        .prometheus
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}

/// Parses a JSON body; `expected` shows the operator the body to send instead.
fn parse_body<T: DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "request body is empty; send {expected}"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("request body is not valid: {e}; send {expected}"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CutoverBody {
    #[serde(default)]
    writes_stopped: bool,
}

const CUTOVER_BODY: &str = r#"{"writes_stopped": true}"#;

async fn cutover(state: web::Data<ApiState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let stop_writes_first = || {
        ApiError::bad_request(format!(
            "cutover needs the operator to stop application writes to the source first; \
             once they have stopped, send {CUTOVER_BODY}"
        ))
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(stop_writes_first());
    }
    let parsed: CutoverBody = parse_body(&body, CUTOVER_BODY)?;
    if !parsed.writes_stopped {
        return Err(stop_writes_first());
    }
    ask(
        &state.control,
        ControlRequest::Cutover {
            writes_stopped: true,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    hours: f64,
}

async fn extend(state: web::Data<ApiState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let expected = r#"{"hours": N} with N a positive number of hours"#;
    let parsed: ExtendBody = parse_body(&body, expected)?;
    if !(parsed.hours.is_finite() && parsed.hours > 0.0) {
        return Err(ApiError::bad_request(format!(
            "hours must be a positive number, got {}; send {expected}",
            parsed.hours
        )));
    }
    ask(
        &state.control,
        ControlRequest::Extend {
            hours: parsed.hours,
        },
    )
    .await
}

async fn pause(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    ask(&state.control, ControlRequest::Pause).await
}

async fn resume(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    ask(&state.control, ControlRequest::Resume).await
}

async fn cancel(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    ask(&state.control, ControlRequest::Cancel).await
}

/// Sends a request to the supervisor and answers with its reply (200) or its refusal
/// (the status it chose).
async fn ask(control: &ControlHandle, request: ControlRequest) -> Result<HttpResponse, ApiError> {
    tracing::info!(request = ?request, "operator request");
    match tokio::time::timeout(CONTROL_TIMEOUT, control.request(request)).await {
        Ok(Ok(reply)) => Ok(HttpResponse::Ok().json(reply)),
        Ok(Err(refused)) => {
            tracing::warn!(status = refused.status, reason = %refused.message, "operator request refused");
            Err(refused.into())
        }
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the supervisor did not answer within {} s; check the daemon's log, the request may still take effect",
                CONTROL_TIMEOUT.as_secs()
            ),
        )),
    }
}

#[cfg(test)]
mod docs_tests {
    use super::ROUTES;
    use crate::api::status::StatusView;
    use crate::progress::Progress;

    const API_DOC: &str = include_str!("../../docs/api.md");

    /// Every key of a JSON value, nested objects included (map keys of `namespaces`
    /// excepted: they are namespace names).
    fn keys(value: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(map) = value.as_object() {
            for (k, v) in map {
                out.push(k.clone());
                keys(v, out);
            }
        }
    }

    /// docs/api.md names every route the server has, and every field of the progress
    /// and report documents.
    #[test]
    fn the_api_document_matches_the_routes_and_fields() {
        for route in ROUTES.split(", ") {
            assert!(
                API_DOC.contains(&format!("`{route}`")) || API_DOC.contains(route),
                "docs/api.md does not describe {route}"
            );
        }
        let progress = Progress::new();
        progress
            .namespaces
            .insert("db.c".into(), Default::default());
        let mut fields = Vec::new();
        let view = serde_json::to_value(StatusView::capture(&progress, 0)).unwrap();
        keys(&view, &mut fields);
        let mut report = crate::report::Report::default();
        report
            .verification
            .mismatches
            .push(crate::report::Mismatch {
                namespace: "db.c".into(),
                kind: "count".into(),
                detail: String::new(),
            });
        let report = serde_json::to_value(report).unwrap();
        keys(&report, &mut fields);
        if let Some(m) = report["verification"]["mismatches"][0].as_object() {
            fields.extend(m.keys().cloned());
        }
        fields.retain(|f| f != "db.c");
        for field in fields {
            assert!(
                API_DOC.contains(&format!("`{field}`")),
                "docs/api.md does not describe the field {field}"
            );
        }
    }
}
