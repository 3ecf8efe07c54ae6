//! Errors as `application/problem+json` ProblemDetails (RFC 9457, as 3GPP TS 29.571 uses them):
//! `status`, `title`, `detail` for people and `cause` for programs.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tollgate_node::NodeError;
use tollgate_runtime::RuntimeError;

/// One ProblemDetails answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The HTTP status, repeated in the body.
    pub status: u16,
    /// The status's reason phrase.
    pub title: String,
    /// What went wrong, naming the field or the key.
    pub detail: String,
    /// A stable code for programs, e.g. `MANDATORY_IE_INCORRECT` or a rejection code.
    pub cause: String,
    /// The rejection's kind (`business`, `malformed`, `unknown-command`) when an actor refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Seconds to wait before retrying, on `503`.
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl Problem {
    /// A problem with `status`, `cause` and `detail`.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use tollgate_serve::problem::Problem;
    ///
    /// let p = Problem::new(StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND", "no such session");
    /// assert_eq!((p.status, p.title.as_str()), (404, "Not Found"));
    /// ```
    pub fn new(status: StatusCode, cause: &str, detail: impl Into<String>) -> Problem {
        Problem {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            detail: detail.into(),
            cause: cause.into(),
            kind: None,
            retry_after: None,
        }
    }

    /// `503` with `Retry-After`: the node cannot take the request now; nothing ran.
    pub fn unavailable(cause: &str, detail: impl Into<String>) -> Problem {
        Problem { retry_after: Some(1), ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, cause, detail) }
    }

    /// `400`: the body is not the JSON the route takes.
    pub fn malformed(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "INVALID_MSG_FORMAT", detail)
    }
}

impl From<NodeError> for Problem {
    fn from(error: NodeError) -> Problem {
        let detail = error.to_string();
        match error {
            NodeError::Invalid(_) | NodeError::Command(_) => {
                Problem::new(StatusCode::BAD_REQUEST, "MANDATORY_IE_INCORRECT", detail)
            }
            NodeError::Stopped => Problem::unavailable("NF_SERVICE_FAILURE", detail),
            // A client naming what the node does not have, or what is not theirs, is the
            // client's mistake: never a 5xx that pages the operator.
            NodeError::Runtime(RuntimeError::NoSuchStream(_)) => {
                Problem::new(StatusCode::NOT_FOUND, "RESOURCE_URI_STRUCTURE_NOT_FOUND", detail)
            }
            NodeError::Runtime(RuntimeError::Reserved { .. }) => {
                Problem::new(StatusCode::FORBIDDEN, "RESERVED_NAME", detail)
            }
            NodeError::Runtime(_) | NodeError::CatchUp(_) => {
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_FAILURE", detail)
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
