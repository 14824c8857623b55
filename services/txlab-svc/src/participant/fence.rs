//! The epoch fence on participant calls. The order service sends each
//! order's lab epoch in [`EPOCH_HEADER`]; a participant checks it inside
//! the operation's own transaction (holding the epoch row, as event
//! handlers do), so a call left over from a cell the lab has reset cannot
//! change the next cell's data. A call without the header is not fenced
//! (a person trying the API by hand).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sqlx::PgConnection;
use txlab_api::admin::{EPOCH_HEADER, STALE_EPOCH};

use super::OpError;
use crate::http::ApiError;

#[derive(Debug, Clone, Default)]
pub struct Fence(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Fence {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get(EPOCH_HEADER) {
            None => Ok(Fence(None)),
            Some(v) => v
                .to_str()
                .map(|s| Fence(Some(s.to_string())))
                .map_err(|_| ApiError::BadRequest(format!("{EPOCH_HEADER} must be visible ASCII"))),
        }
    }
}

impl Fence {
    /// Refuses (409 `stale_epoch`) when the caller's epoch is not the lab's
    /// current one. Call it first in the operation's transaction.
    pub async fn check(&self, conn: &mut PgConnection) -> Result<(), OpError> {
        let Some(theirs) = &self.0 else { return Ok(()) };
        Self::compare(theirs, crate::epoch::epoch(conn).await?)
    }

    /// [`Fence::check`] before a statement that runs outside any
    /// transaction (COMMIT / ROLLBACK PREPARED), where holding the epoch
    /// row is impossible and would only cost a commit.
    pub async fn check_alone(&self, conn: &mut PgConnection) -> Result<(), OpError> {
        let Some(theirs) = &self.0 else { return Ok(()) };
        Self::compare(theirs, crate::epoch::epoch_unlocked(conn).await?)
    }

    /// The caller's epoch, if it sent one.
    pub fn epoch(&self) -> Option<&str> {
        self.0.as_deref()
    }

    fn compare(theirs: &str, ours: String) -> Result<(), OpError> {
        if ours == theirs {
            return Ok(());
        }
        Err(Self::stale(theirs, &ours))
    }

    /// The refusal of a call of epoch `theirs` in a lab now in `ours`.
    pub fn stale(theirs: &str, ours: &str) -> OpError {
        OpError::Conflict {
            code: STALE_EPOCH,
            message: format!(
                "the call belongs to lab epoch `{theirs}`, but this service is in `{ours}` (reset since)"
            ),
        }
    }
}
