//! Who may call the API: with `api.token` set, every state-changing request (POST) must
//! carry `Authorization: Bearer <token>`, and so must reads when
//! `api.token_required_for_reads` is true. A missing token is answered 401, a wrong one
//! 403, both with a JSON `error` that says what to send.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

/// The API's access rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiAccess {
    /// The bearer token; `None` leaves the API open (loopback, or explicitly allowed).
    pub token: Option<String>,
    /// Reads (progress, report, metrics) need the token too.
    pub token_required_for_reads: bool,
}

impl ApiAccess {
    /// An API without a token.
    pub fn open() -> ApiAccess {
        ApiAccess::default()
    }

    /// Whether a request with `method` needs the token.
    fn guards(&self, method: &Method) -> bool {
        self.token.is_some() && (*method != Method::GET || self.token_required_for_reads)
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a
/// guessed token was right.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        difference |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    difference == 0
}

fn refuse(req: ServiceRequest, status: StatusCode, message: &str) -> ServiceResponse<BoxBody> {
    let mut response = HttpResponse::build(status);
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
    }
    let response = response.json(serde_json::json!({ "error": message }));
    req.into_response(response)
}

/// The middleware: passes a request through when the rule allows it.
pub(super) async fn check(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let access = req
        .app_data::<web::Data<ApiAccess>>()
        .map(|a| a.get_ref().clone())
        .unwrap_or_default();
    let Some(token) = access
        .token
        .as_deref()
        .filter(|_| access.guards(req.method()))
    else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => Ok(refuse(
            req,
            StatusCode::UNAUTHORIZED,
            "this API requires a token: send `Authorization: Bearer <api.token>` (the ferry CLI sends FERRY_API_TOKEN)",
        )),
        Some(given) if !same_token(given.as_bytes(), token.as_bytes()) => Ok(refuse(
            req,
            StatusCode::FORBIDDEN,
            "the bearer token does not match api.token",
        )),
        Some(_) => next.call(req).await.map(ServiceResponse::map_into_boxed_body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"s3cret", b"s3cret"));
        assert!(!same_token(b"s3cre", b"s3cret"));
        assert!(!same_token(b"s3crett", b"s3cret"));
        assert!(!same_token(b"", b"s3cret"));
        assert!(!same_token(b"S3cret", b"s3cret"));
    }

    #[test]
    fn reads_are_open_unless_asked() {
        let access = ApiAccess {
            token: Some("t".into()),
            token_required_for_reads: false,
        };
        assert!(access.guards(&Method::POST));
        assert!(!access.guards(&Method::GET));
        let strict = ApiAccess {
            token_required_for_reads: true,
            ..access
        };
        assert!(strict.guards(&Method::GET));
        assert!(!ApiAccess::open().guards(&Method::POST));
    }
}
