//! Fault points. A handler calls [`Faults::fire`] at each point it passes;
//! the per-request `X-Txlab-Fault` header decides what happens there.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use txlab_api::fault::{FaultAction, FaultPoint, FaultSpec, FAULT_HEADER};
use txlab_api::Role;

use crate::http::ApiError;

/// The faults planned for this request (none without the header).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub spec: FaultSpec,
    /// The header text, forwarded to the next service as it came.
    pub raw: Option<String>,
}

impl Faults {
    pub fn parse(raw: Option<&str>) -> Result<Faults, ApiError> {
        match raw {
            None => Ok(Faults::default()),
            Some(text) => Ok(Faults {
                spec: FaultSpec::parse(text).map_err(|e| ApiError::BadRequest(format!("{FAULT_HEADER}: {e}")))?,
                raw: Some(text.to_string()),
            }),
        }
    }

    /// Applies the fault planned for `role` at `point`: a delay returns
    /// after sleeping, an error returns 503, a crash ends the process.
    pub async fn fire(&self, role: Role, point: FaultPoint) -> Result<(), ApiError> {
        match self.spec.action_at(role, point) {
            None => Ok(()),
            Some(FaultAction::DelayMs(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
            Some(FaultAction::Error) => Err(ApiError::Unavailable(format!("injected fault at {role}.{}", point.as_str()))),
            Some(FaultAction::Crash) => {
                tracing::error!(point = point.as_str(), "injected crash");
                // Exit at once, as a killed pod would: no graceful shutdown.
                std::process::exit(86)
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Faults {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let raw = match parts.headers.get(FAULT_HEADER) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| ApiError::BadRequest(format!("{FAULT_HEADER} is not ASCII")))?),
        };
        Faults::parse(raw)
    }
}
