//! Fault points. A handler calls [`Faults::fire`] at each point it passes.
//! What happens there is decided by the request's `X-Txlab-Fault` header
//! when it names this service and point, else by the service's standing
//! fault (set at start from `FAULT_*` or at run time via `/admin/faults`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::Json;
use rand::Rng;
use txlab_api::fault::{FaultAction, FaultPoint, FaultSpec, StandingFault, FAULT_HEADER};
use txlab_api::Role;

use crate::http::ApiError;

/// The service-wide standing fault, shared by every handler.
#[derive(Debug)]
pub struct FaultSwitch {
    pub role: Role,
    standing: RwLock<StandingFault>,
}

impl FaultSwitch {
    pub fn new(role: Role, standing: StandingFault) -> Arc<FaultSwitch> {
        Arc::new(FaultSwitch {
            role,
            standing: RwLock::new(standing),
        })
    }

    pub fn get(&self) -> StandingFault {
        self.standing.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, fault: StandingFault) {
        *self.standing.write().unwrap_or_else(|p| p.into_inner()) = fault;
    }
}

/// The faults planned for one request.
#[derive(Debug, Clone)]
pub struct Faults {
    pub spec: FaultSpec,
    /// The header text, forwarded to the next service as it came.
    pub raw: Option<String>,
    switch: Arc<FaultSwitch>,
}

impl Faults {
    pub fn parse(raw: Option<&str>, switch: Arc<FaultSwitch>) -> Result<Faults, ApiError> {
        let spec = match raw {
            None => FaultSpec::default(),
            Some(text) => {
                FaultSpec::parse(text).map_err(|e| ApiError::BadRequest(format!("{FAULT_HEADER}: {e}")))?
            }
        };
        Ok(Faults {
            spec,
            raw: raw.map(str::to_string),
            switch,
        })
    }

    /// Whether [`Faults::fire`] may do anything at `point`: work that a
    /// fault there could interrupt is then done the slower way that leaves
    /// room for it.
    pub fn may_fire(&self, point: FaultPoint) -> bool {
        self.spec.action_at(self.switch.role, point).is_some() || self.switch.get().may_hit(point)
    }

    /// Applies the fault planned here: a delay returns after sleeping, an
    /// error returns 503, a crash ends the process.
    pub async fn fire(&self, point: FaultPoint) -> Result<(), ApiError> {
        let role = self.switch.role;
        let action = self.spec.action_at(role, point).or_else(|| {
            self.switch
                .get()
                .hits(point, rand::thread_rng().gen_range(0.0..100.0))
        });
        match action {
            None => Ok(()),
            Some(FaultAction::DelayMs(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
            Some(FaultAction::Error) => Err(ApiError::Unavailable(format!(
                "injected fault at {role}.{}",
                point.as_str()
            ))),
            Some(FaultAction::Crash) => {
                tracing::error!(point = point.as_str(), "injected crash");
                // Exit at once, as a killed pod would: no graceful shutdown.
                std::process::exit(86)
            }
        }
    }
}

/// Router states that carry the service's fault switch.
pub trait HasFaults {
    fn fault_switch(&self) -> Arc<FaultSwitch>;
}

impl<S> FromRequestParts<S> for Faults
where
    S: HasFaults + Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = match parts.headers.get(FAULT_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| ApiError::BadRequest(format!("{FAULT_HEADER} is not ASCII")))?,
            ),
        };
        Faults::parse(raw, state.fault_switch())
    }
}

/// `GET /admin/faults`
pub async fn get_standing(State(switch): State<Arc<FaultSwitch>>) -> Json<StandingFault> {
    Json(switch.get())
}

/// `PUT /admin/faults`: replaces the standing fault (`{"mode": "none"}` clears it).
pub async fn put_standing(
    State(switch): State<Arc<FaultSwitch>>,
    body: Result<Json<StandingFault>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<StandingFault>, ApiError> {
    let Json(fault) = body?;
    fault.validate().map_err(ApiError::BadRequest)?;
    tracing::info!(fault = ?fault, "standing fault set");
    switch.set(fault.clone());
    Ok(Json(fault))
}

/// Marks `key` (an event and a fault point) as fired, in its own committed
/// transaction; returns false if it fired before. A planned fault thus fires
/// once even when it crashes the process and the event is redelivered.
pub async fn first_firing(pool: &sqlx::PgPool, key: &str) -> sqlx::Result<bool> {
    let inserted =
        sqlx::query("INSERT INTO fault_log (key, fired_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(key)
            .bind(txlab_tx::now_ms())
            .execute(pool)
            .await?
            .rows_affected();
    Ok(inserted == 1)
}
