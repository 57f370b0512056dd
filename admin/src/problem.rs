//! Errors as `application/problem+json` (RFC 9457): a status, a title, and a detail that says
//! what is wrong.

use crate::router::{Resp, full};
use http::{StatusCode, header};
use serde_json::{Value, json};
use spinforge_state::config::ConfigErrors;
use spinforge_supervisor::control::ControlError;

#[derive(Debug)]
pub(crate) struct Problem {
    pub status: StatusCode,
    pub detail: String,
    /// Located errors in a request body (`errors: [{line, column, key, message}]`).
    pub errors: Option<Value>,
    pub headers: Vec<(header::HeaderName, String)>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
            errors: None,
            headers: Vec::new(),
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// A body that failed validation: every error, located in it.
    pub fn invalid(errors: &ConfigErrors) -> Problem {
        let list: Vec<Value> = errors
            .0
            .iter()
            .map(|e| {
                json!({
                    "line": e.line,
                    "column": e.column,
                    "key": e.key,
                    "message": e.message,
                })
            })
            .collect();
        let detail = errors
            .0
            .iter()
            .map(|e| {
                if e.key.is_empty() {
                    format!("line {}: {}", e.line, e.message)
                } else {
                    format!("line {}: {}: {}", e.line, e.key, e.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        Problem {
            errors: Some(Value::Array(list)),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: impl Into<String>) -> Problem {
        self.headers.push((name, value.into()));
        self
    }

    pub fn into_response(self) -> Resp {
        let mut body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(errors) = self.errors {
            body["errors"] = errors;
        }
        let mut resp = full(self.status, "application/problem+json", body.to_string());
        for (name, value) in self.headers {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

impl From<ControlError> for Problem {
    fn from(e: ControlError) -> Problem {
        let status = match &e {
            ControlError::UnknownApp(_) | ControlError::UnknownRelease(..) => StatusCode::NOT_FOUND,
            ControlError::Invalid(errors) => return Problem::invalid(errors),
            ControlError::Conflict(_) | ControlError::Refused(_) => StatusCode::CONFLICT,
            ControlError::Busy | ControlError::Gone => {
                return Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .with_header(header::RETRY_AFTER, "1");
            }
            ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem::new(status, e.to_string())
    }
}

impl From<spinforge_state::StoreError> for Problem {
    fn from(e: spinforge_state::StoreError) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the state store: {e}"),
        )
        .with_header(header::RETRY_AFTER, "1")
    }
}
