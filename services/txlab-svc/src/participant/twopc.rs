//! Two-phase commit, participant side. Prepare does the branch's work — the
//! business change and the record — in a PostgreSQL transaction and
//! `PREPARE TRANSACTION`s it, so its locks are held until the coordinator's
//! decision arrives: that wait is what the lab measures. Commit and
//! rollback are idempotent. In-doubt branches (prepared, no decision heard)
//! are resolved by [`recover`], which asks the coordinator.

use std::time::Duration;

use axum::routing::post;
use axum::Router;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use txlab_api::fault::FaultPoint;
use txlab_api::participant::StepReply;
use uuid::Uuid;

use super::*;
use crate::db::{is_unknown_gid, on_branch, OnBranch};

/// How long a prepare waits for a row lock held by another in-doubt branch
/// before it gives up (and the coordinator retries or aborts).
const LOCK_TIMEOUT: &str = "2s";
/// A prepared branch older than this is asked about.
const IN_DOUBT_AFTER: Duration = Duration::from_secs(5);

/// The global transaction id of this participant's branch of an order.
pub fn gid(role: Role, order_id: Uuid) -> String {
    format!("txlab_{role}_{}", order_id.simple())
}

pub fn path<P: Participant>(op: &str) -> String {
    format!("/twopc/{}/{{order_id}}/{op}", P::COLLECTION)
}

/// The branch's work inside an explicit BEGIN, ending in PREPARE TRANSACTION.
/// sqlx's own transactions cannot be used: they would roll back on drop.
/// The fence's share lock on the epoch row is held by the prepared branch
/// until its decision; the lab's reset rolls lab branches back first.
async fn prepare_in<P: Participant>(
    conn: &mut PgConnection,
    faults: &Faults,
    fence: &Fence,
    order_id: Uuid,
    req: &P::Request,
) -> Result<StepReply, OpError> {
    if !forward_at_once::<P>(conn, fence, order_id, req, ledger::Forward::Take, P::APPLIED).await? {
        fence.check(conn).await?;
        // A refusal rolls the whole branch back, partial changes included.
        if let Err(refusal) = ledger::forward::<P>(conn, order_id, req, ledger::Forward::Take).await? {
            return Err(OpError::refused(refusal.code, refusal.message));
        }
        let request = stored_request::<P>(req)?;
        insert_record::<P>(conn, order_id, P::APPLIED, None, &request).await?;
    }
    faults
        .fire(FaultPoint::DuringPrepare)
        .await
        .map_err(OpError::Fault)?;
    on_branch(&mut *conn, OnBranch::Prepare, &gid(P::ROLE, order_id)).await?;
    Ok(reply(order_id, RecordState::Prepared, false))
}

/// Rolls back the explicit transaction, or closes the connection if even
/// that fails, so no pooled connection is left inside a transaction.
async fn abandon(mut conn: PoolConnection<Postgres>) {
    if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
        drop(conn.detach());
    }
}

/// Runs the prepare in a task of its own: the explicit transaction must end
/// (PREPARE or ROLLBACK) before its connection goes back to the pool, and a
/// caller that hangs up (a timed-out coordinator) would otherwise drop this
/// future half-way and hand the next user a connection still inside it.
async fn prepare_once<P: Participant>(
    pool: &PgPool,
    faults: &Faults,
    fence: &Fence,
    order_id: Uuid,
    req: &P::Request,
) -> Result<StepReply, OpError> {
    let (pool, faults, fence, req) = (pool.clone(), faults.clone(), fence.clone(), req.clone());
    tokio::spawn(async move { prepare_to_end::<P>(&pool, &faults, &fence, order_id, &req).await })
        .await
        .map_err(|e| OpError::Internal(format!("prepare task failed: {e}")))?
}

async fn prepare_to_end<P: Participant>(
    pool: &PgPool,
    faults: &Faults,
    fence: &Fence,
    order_id: Uuid,
    req: &P::Request,
) -> Result<StepReply, OpError> {
    let mut conn = pool.acquire().await?;
    // The order's record here, and whether its branch is prepared, in one read.
    let (state, reason, prepared): (Option<String>, Option<String>, bool) = sqlx::query_as(&format!(
        "SELECT r.state, r.reason, EXISTS (SELECT FROM pg_prepared_xacts WHERE gid = $2) \
         FROM (SELECT) AS one LEFT JOIN {} AS r ON r.order_id = $1",
        P::RECORDS
    ))
    .bind(order_id)
    .bind(gid(P::ROLE, order_id))
    .fetch_one(&mut *conn)
    .await?;
    if let Some(state) = state {
        // Committed already (a repeated prepare), or compensated first.
        let state = record_state(&state)?;
        if state == P::APPLIED {
            return Ok(reply(order_id, state, true));
        }
        return Err(refused_by_record(
            order_id,
            &Record {
                state,
                reason,
                request: serde_json::Value::Null,
            },
        ));
    }
    if prepared {
        return Ok(reply(order_id, RecordState::Prepared, true));
    }
    // A prepare waits this long at most for a row an in-doubt branch holds.
    let begin = format!("BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'");
    sqlx::Executor::execute(&mut *conn, begin.as_str()).await?;
    match prepare_in::<P>(&mut conn, faults, fence, order_id, req).await {
        Ok(r) => Ok(r),
        Err(e) => {
            abandon(conn).await;
            match e {
                OpError::Database(e) if crate::db::is_lock_timeout(&e) => Err(OpError::Busy(
                    "a row this branch needs is locked by another in-doubt branch".into(),
                )),
                other => Err(other),
            }
        }
    }
}

async fn commit_once<P: Participant>(
    pool: &PgPool,
    faults: &Faults,
    fence: &Fence,
    order_id: Uuid,
) -> Result<StepReply, OpError> {
    faults
        .fire(FaultPoint::DuringCommit)
        .await
        .map_err(OpError::Fault)?;
    let mut conn = pool.acquire().await?;
    fence.check_alone(&mut conn).await?;
    match on_branch(&mut *conn, OnBranch::Commit, &gid(P::ROLE, order_id)).await {
        Ok(()) => Ok(reply(order_id, P::APPLIED, false)),
        Err(e) if is_unknown_gid(&e) => {
            let state: Option<String> =
                sqlx::query_scalar(&format!("SELECT state FROM {} WHERE order_id = $1", P::RECORDS))
                    .bind(order_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            match state.as_deref().map(record_state).transpose()? {
                Some(s) if s == P::APPLIED || s == P::UNDONE => Ok(reply(order_id, s, true)),
                other => Err(OpError::Conflict {
                    code: "not_prepared",
                    message: format!("order {order_id} has no prepared branch here (record: {other:?})"),
                }),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Rolls the branch back if it is prepared, and leaves a `voided` record if
/// nothing was ever prepared, so a late prepare is refused.
pub async fn rollback_once<P: Participant>(
    pool: &PgPool,
    fence: &Fence,
    order_id: Uuid,
) -> Result<StepReply, OpError> {
    let mut conn = pool.acquire().await?;
    fence.check_alone(&mut conn).await?;
    let rolled_back = match on_branch(&mut *conn, OnBranch::Rollback, &gid(P::ROLE, order_id)).await {
        Ok(()) => true,
        Err(e) if is_unknown_gid(&e) => false,
        Err(e) => return Err(e.into()),
    };
    drop(conn);
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '1s'")
        .execute(&mut *tx)
        .await?;
    let out = match lock_record::<P>(&mut tx, order_id).await {
        Ok(None) => void_record::<P>(&mut tx, order_id).await?,
        Ok(Some(r)) if r.state == P::APPLIED => {
            return Err(OpError::Conflict {
                code: "already_committed",
                message: format!("order {order_id}'s branch committed; it can only be compensated"),
            })
        }
        Ok(Some(r)) => reply(order_id, r.state, !rolled_back),
        // A prepare racing with this rollback holds the record's key: retry.
        Err(e) if crate::db::is_lock_timeout(&e) => {
            return Err(OpError::Busy("branch is being prepared; retry".into()))
        }
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    Ok(out)
}

participant_op!(fn prepare, "prepare", |state, faults, fence, id, req| prepare_once::<P>(&state.pool, &faults, &fence, id, &req));
participant_op!(fn commit, "commit", |state, faults, fence, id| commit_once::<P>(&state.pool, &faults, &fence, id));
participant_op!(fn rollback, "rollback", |state, faults, fence, id| rollback_once::<P>(&state.pool, &fence, id));

pub fn routes<P: Participant>() -> Router<AppState> {
    Router::new()
        .route(&path::<P>("prepare"), post(prepare::<P>))
        .route(&path::<P>("commit"), post(commit::<P>))
        .route(&path::<P>("rollback"), post(rollback::<P>))
}

/// Resolves in-doubt branches until `stop`: each prepared branch older than
/// a few seconds is settled by the coordinator's logged decision (the
/// coordinator presumes abort for a transaction it never decided).
pub async fn recover<P: Participant>(
    pool: PgPool,
    http: reqwest::Client,
    order_url: String,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let stopped = crate::stopped(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = recover_exclusively::<P>(&pool, &http, &order_url).await {
            tracing::warn!(error = format!("{e:#}"), "in-doubt recovery pass failed");
        }
    }
}

/// A recovery pass by one replica at a time: the prepared branches are the
/// database's, shared by every replica of the role, so the pass runs under
/// a session advisory lock and a replica that finds it taken skips its
/// turn. The lock dies with its session, so a replica that crashes
/// mid-pass does not stop the others for good.
async fn recover_exclusively<P: Participant>(
    pool: &PgPool,
    http: &reqwest::Client,
    order_url: &str,
) -> anyhow::Result<()> {
    let mut holder = pool.acquire().await?;
    let lock = (crate::db::locks::IN_DOUBT_RECOVERY, 0i32);
    let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(lock.0)
        .bind(lock.1)
        .fetch_one(&mut *holder)
        .await?;
    if !ours {
        return Ok(());
    }
    let pass = recover_once::<P>(pool, http, order_url).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(lock.0)
        .bind(lock.1)
        .execute(&mut *holder)
        .await;
    if unlocked.is_err() {
        // Never hand a session holding the lock back to the pool: closing it frees the lock.
        holder.close_on_drop();
    }
    pass
}

async fn recover_once<P: Participant>(
    pool: &PgPool,
    http: &reqwest::Client,
    order_url: &str,
) -> anyhow::Result<()> {
    let prefix = format!("txlab_{}_", P::ROLE);
    let in_doubt: Vec<String> = sqlx::query_scalar(
        "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE $1 AND database = current_database() \
         AND prepared < now() - make_interval(secs => $2)",
    )
    .bind(format!("{prefix}%"))
    .bind(IN_DOUBT_AFTER.as_secs_f64())
    .fetch_all(pool)
    .await?;
    for g in in_doubt {
        let Some(order_id) = g.strip_prefix(&prefix).and_then(|hex| Uuid::parse_str(hex).ok()) else {
            continue;
        };
        let url = format!("{order_url}/twopc/{order_id}/decision?presume_abort=true");
        let decision: txlab_api::participant::Decision =
            http.get(&url).send().await?.error_for_status()?.json().await?;
        tracing::info!(order_id = %order_id, decision = ?decision.decision, "resolving in-doubt branch");
        match decision.decision {
            Some(txlab_api::participant::DecisionKind::Commit) => {
                match on_branch(pool, OnBranch::Commit, &g).await {
                    Err(e) if !is_unknown_gid(&e) => return Err(e.into()),
                    _ => {}
                }
            }
            Some(txlab_api::participant::DecisionKind::Abort) => {
                rollback_once::<P>(pool, &Fence::default(), order_id)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            None => {}
        }
    }
    Ok(())
}
