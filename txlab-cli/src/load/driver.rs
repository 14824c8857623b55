//! Sends each order at its intended time and follows it to a decision.
//!
//! Latency is measured from the *intended* send time, so a stalled system
//! shows up as latency instead of as fewer requests (no coordinated
//! omission, per Gil Tene's "How NOT to Measure Latency"). An arrival that
//! never got its answer — dropped at `max_in_flight`, failed, or still
//! undecided at the follow limit — is not left out of the percentiles: it
//! is recorded at the follow limit (a censored value) and counted apart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, StatusCode};
use indicatif::ProgressBar;
use rand::{rngs::SmallRng, SeedableRng};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use txlab_api::fault::FAULT_HEADER;
use txlab_api::order::{CreateOrder, OrderState, OrderView, IDEMPOTENCY_KEY_HEADER};
use uuid::Uuid;

use super::client::{Client, Failure, Reply};
use super::{cell_seed, orders::make_order, schedule::arrivals};
use crate::audit::ClientView;
use crate::spec::{Cell, OrderTemplate, Plan, SeedPlan};

/// The driver opens, before the clock starts, as many connections as its
/// highest rate sends orders in this long. Past its knee a connection is
/// opened for each order that finds none idle, and opening costs driver and
/// endpoint several times a request's CPU: a pause of a few tens of ms then
/// sets off a storm of connects that feeds itself until `max_in_flight`
/// drops orders (docs/performance.md, "A warm pool of connections").
const WARM_FOR: Duration = Duration::from_millis(25);
/// Longest the warming may take (a target that does not answer connects).
const WARM_WITHIN: Duration = Duration::from_secs(1);
/// Most lanes (threads) a load is dealt to, whatever the core count.
const MAX_LANES: usize = 8;

/// A send that starts this much after its intended time counts as late.
const LATE_AFTER: Duration = Duration::from_millis(10);
/// Longest an order is followed before it counts as undecided; also the
/// value at which unanswered arrivals are recorded (censored).
pub const FOLLOW_LIMIT: Duration = Duration::from_secs(60);

/// Per-second figures, by the second the orders were due in.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SecondStats {
    pub second: u64,
    pub sent: u64,
    pub accepted: u64,
    pub decided: u64,
    pub errors: u64,
    pub decided_p50_ms: f64,
    pub decided_p99_ms: f64,
}

/// What a cell's load did, before and apart from the audit.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub target_rate: f64,
    pub duration_s: f64,
    pub scheduled: u64,
    pub sent: u64,
    pub accepted: u64,
    pub decided: u64,
    /// Arrivals counted in the histograms (due after the warm-up), answered or not.
    pub measured: u64,
    /// Measured arrivals recorded at [`FOLLOW_LIMIT`] in the decided
    /// histogram because they were dropped, failed or never decided.
    pub censored: u64,
    pub late: u64,
    pub dropped: u64,
    pub errors: u64,
    pub undecided: u64,
    /// Orders whose outcome differed from the scenario's `expect`.
    pub unexpected: u64,
    pub outcomes: BTreeMap<String, u64>,
    pub error_kinds: BTreeMap<String, u64>,
    /// Microseconds from intended send to the POST's reply (censored for
    /// arrivals dropped or refused).
    pub accepted_us: Histogram<u64>,
    /// Microseconds from intended send to a terminal state (censored for
    /// arrivals never decided).
    pub decided_us: Histogram<u64>,
    pub seconds: Vec<SecondStats>,
    /// Sent orders per second over the load's actual length.
    pub achieved_rate: f64,
    /// Orders decided as expected in each second of wall time since the
    /// load began (by when they were decided, not when they were due):
    /// the goodput over time.
    pub completions: Vec<u64>,
    /// Every order created, and the final state the driver saw, for the
    /// audit to reconcile with the databases.
    pub client: ClientView,
    /// A few unexpected outcomes, for the reader: (order, what happened).
    pub unexpected_examples: Vec<(Uuid, String)>,
    /// Every measured order that was decided, with its decided latency:
    /// where the report's sampled workflows are picked from.
    pub decided_orders: Vec<DecidedOrder>,
}

/// One measured order the driver saw decided.
#[derive(Debug, Clone, PartialEq)]
pub struct DecidedOrder {
    pub id: Uuid,
    pub state: OrderState,
    /// From intended send to the decision, µs.
    pub decided_us: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

struct Recorder {
    report: LoadReport,
    per_second: BTreeMap<u64, (SecondStats, Histogram<u64>)>,
    /// Each order as it was accepted (no state yet) and decided, in that
    /// order: turned into the audit's map of orders after the load, as
    /// inserting random ids into a map of hundreds of thousands took 4 % of
    /// the driver's CPU at its knee (docs/performance.md, "The audit's map
    /// after the load").
    sightings: Vec<(Uuid, Option<OrderState>)>,
    /// When the load began, for [`LoadReport::completions`].
    start: Instant,
}

impl Recorder {
    fn new(start: Instant) -> Recorder {
        Recorder {
            report: LoadReport {
                target_rate: 0.0,
                duration_s: 0.0,
                scheduled: 0,
                sent: 0,
                accepted: 0,
                decided: 0,
                measured: 0,
                censored: 0,
                late: 0,
                dropped: 0,
                errors: 0,
                undecided: 0,
                unexpected: 0,
                outcomes: BTreeMap::new(),
                error_kinds: BTreeMap::new(),
                accepted_us: histogram(),
                decided_us: histogram(),
                seconds: Vec::new(),
                achieved_rate: 0.0,
                completions: Vec::new(),
                client: ClientView::default(),
                unexpected_examples: Vec::new(),
                decided_orders: Vec::new(),
            },
            per_second: BTreeMap::new(),
            sightings: Vec::new(),
            start,
        }
    }

    /// The audit's view of the orders, from what the lanes saw of them.
    fn client_view(&mut self) -> ClientView {
        let mut orders = BTreeMap::new();
        for (id, state) in self.sightings.drain(..) {
            let seen = orders.entry(id).or_insert(None);
            if state.is_some() {
                *seen = state;
            }
        }
        ClientView { orders }
    }

    /// Adds what another lane recorded. Every field is named, so a field
    /// added to the report cannot be left out of the sum unnoticed.
    fn absorb(&mut self, lane: Recorder) {
        let LoadReport {
            // Set once for the whole cell, after the lanes.
            target_rate: _,
            duration_s: _,
            scheduled: _,
            seconds: _,
            achieved_rate: _,
            sent,
            accepted,
            decided,
            measured,
            censored,
            late,
            dropped,
            errors,
            undecided,
            unexpected,
            outcomes,
            error_kinds,
            accepted_us,
            decided_us,
            completions,
            // Built from the sightings once every lane is in.
            client: _,
            unexpected_examples,
            decided_orders,
        } = lane.report;
        let r = &mut self.report;
        for (sum, n) in [
            (&mut r.sent, sent),
            (&mut r.accepted, accepted),
            (&mut r.decided, decided),
            (&mut r.measured, measured),
            (&mut r.censored, censored),
            (&mut r.late, late),
            (&mut r.dropped, dropped),
            (&mut r.errors, errors),
            (&mut r.undecided, undecided),
            (&mut r.unexpected, unexpected),
        ] {
            *sum += n;
        }
        for (sums, counts) in [(&mut r.outcomes, outcomes), (&mut r.error_kinds, error_kinds)] {
            for (key, n) in counts {
                *sums.entry(key).or_default() += n;
            }
        }
        // Same bounds on every side, so adding cannot fail.
        let _ = r.accepted_us.add(&accepted_us);
        let _ = r.decided_us.add(&decided_us);
        if r.completions.len() < completions.len() {
            r.completions.resize(completions.len(), 0);
        }
        for (sum, n) in r.completions.iter_mut().zip(completions) {
            *sum += n;
        }
        self.sightings.extend(lane.sightings);
        r.unexpected_examples.extend(unexpected_examples);
        r.unexpected_examples.truncate(10);
        r.decided_orders.extend(decided_orders);
        for (s, (stats, hist)) in lane.per_second {
            let (sum, sum_hist) = self.second(s);
            sum.sent += stats.sent;
            sum.accepted += stats.accepted;
            sum.decided += stats.decided;
            sum.errors += stats.errors;
            let _ = sum_hist.add(&hist);
        }
    }

    fn second(&mut self, s: u64) -> &mut (SecondStats, Histogram<u64>) {
        self.per_second.entry(s).or_insert_with(|| {
            (
                SecondStats {
                    second: s,
                    ..Default::default()
                },
                histogram(),
            )
        })
    }

    fn error(&mut self, second: u64, kind: String) {
        self.report.errors += 1;
        *self.report.error_kinds.entry(kind).or_default() += 1;
        self.second(second).0.errors += 1;
    }

    /// Records an order the service accepted.
    fn accepted(&mut self, j: &Journey, id: Uuid) {
        let latency = j.intended.elapsed();
        self.report.accepted += 1;
        self.sightings.push((id, None));
        self.second(j.second).0.accepted += 1;
        if j.measured {
            let _ = self.report.accepted_us.record(latency.as_micros().max(1) as u64);
        }
    }

    /// Records an order's decision and whether it was the expected one.
    fn decided(&mut self, j: &Journey, v: OrderView, expect: OrderState) {
        let us = j.intended.elapsed().as_micros().max(1) as u64;
        self.report.decided += 1;
        self.sightings.push((v.id, Some(v.state)));
        *self.report.outcomes.entry(v.state.to_string()).or_default() += 1;
        if v.state == expect {
            let at = self.start.elapsed().as_secs() as usize;
            let c = &mut self.report.completions;
            if c.len() <= at {
                c.resize(at + 1, 0);
            }
            c[at] += 1;
        } else {
            self.report.unexpected += 1;
            if self.report.unexpected_examples.len() < 10 {
                let what = format!("{} ({})", v.state, v.reason.unwrap_or_default());
                self.report.unexpected_examples.push((v.id, what));
            }
        }
        let sec = self.second(j.second);
        sec.0.decided += 1;
        let _ = sec.1.record(us);
        if j.measured {
            self.report.measured += 1;
            let _ = self.report.decided_us.record(us);
            self.report.decided_orders.push(DecidedOrder {
                id: v.id,
                state: v.state,
                decided_us: us,
            });
        }
    }

    /// Records a measured arrival that got no decision at the follow limit,
    /// and no acceptance either when `unaccepted`.
    fn censor(&mut self, measured: bool, unaccepted: bool) {
        if !measured {
            return;
        }
        let limit = FOLLOW_LIMIT.as_micros() as u64;
        self.report.measured += 1;
        self.report.censored += 1;
        let _ = self.report.decided_us.record(limit);
        if unaccepted {
            let _ = self.report.accepted_us.record(limit);
        }
    }
}

/// One order's journey, as seen from the client.
struct Journey {
    index: u64,
    intended: Instant,
    second: u64,
    measured: bool,
    order: CreateOrder,
}

/// Everything the driver needs to know about the system under test.
pub struct Target<'a> {
    pub base_url: &'a str,
    pub run_id: &'a str,
}

/// Runs the cell's load and returns what it measured.
///
/// The arrivals are dealt round-robin to lanes, one per core the process
/// may use, each a thread with a single-threaded runtime and connections
/// of its own: a request, its connection and its recording stay on one
/// thread, as in wrk, instead of waking another runtime worker at each
/// reply (docs/performance.md, "Lanes: a thread per core"). Dropping the returned future
/// stops every lane and abandons the orders in flight.
pub async fn drive(
    target: Target<'_>,
    plan: &Plan,
    cell: &Cell,
    progress: &ProgressBar,
) -> anyhow::Result<LoadReport> {
    drive_in_lanes(target, plan, cell, progress, lane_count()).await
}

async fn drive_in_lanes(
    target: Target<'_>,
    plan: &Plan,
    cell: &Cell,
    progress: &ProgressBar,
    lanes: usize,
) -> anyhow::Result<LoadReport> {
    let lanes = lanes.max(1);
    let spec = &plan.profile.load;
    let orders = OrderSource::for_cell(plan, cell);
    let offsets = arrivals(
        spec.arrival,
        &cell.stages,
        &mut SmallRng::seed_from_u64(orders.seed),
    );
    let peak_rate = cell.stages.iter().map(|s| s.rate).fold(0.0, f64::max);
    let warm_each = (peak_rate * WARM_FOR.as_secs_f64() / lanes as f64).ceil() as usize;
    let scheduled = offsets.len();
    let shared = Arc::new(LaneShared {
        offsets,
        lanes,
        orders,
        warmup: Duration::from_secs_f64(spec.warmup_s),
        max_in_flight: spec.max_in_flight,
        in_flight: AtomicUsize::new(0),
        progress: progress.clone(),
    });
    let mut readies = Vec::with_capacity(lanes);
    let mut gos = Vec::with_capacity(lanes);
    let mut dones = Vec::with_capacity(lanes);
    for index in 0..lanes {
        let script = Script {
            client: Client::new(
                target.base_url,
                Duration::from_secs(2),
                Duration::from_secs(35),
                spec.max_in_flight,
            )?,
            key_prefix: key_prefix(target.run_id, &cell.id),
            fault: cell.scenario.fault.clone(),
            cancel_after_ms: cell.scenario.cancel_after_ms,
            expect: cell.scenario.expect_for(cell.method),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let lane = Lane {
            index,
            shared: shared.clone(),
            script: Arc::new(script),
        };
        std::thread::Builder::new()
            .name(format!("txlab-load-{index}"))
            .spawn(move || lane.run(warm_each, ready_tx, go_rx, done_tx))
            .context("starting a load lane's thread")?;
        readies.push(ready_rx);
        gos.push(go_tx);
        dones.push(done_rx);
    }
    let warming = Instant::now();
    let mut warm = 0;
    for ready in readies {
        warm += ready
            .await
            .map_err(|_| anyhow::anyhow!("a load lane ended before the load began"))?;
    }
    tracing::debug!(
        warm,
        lanes,
        took_ms = warming.elapsed().as_millis() as u64,
        "connections opened before the load"
    );
    let start = Instant::now() + Duration::from_millis(20);
    progress.set_length(scheduled as u64);
    progress.set_position(0);
    for go in gos {
        let _ = go.send(start);
    }
    let mut last_send = start;
    let mut r = Recorder::new(start);
    for done in dones {
        let (lane_last, lane) = done
            .await
            .map_err(|_| anyhow::anyhow!("a load lane's thread died"))??;
        last_send = last_send.max(lane_last);
        r.absorb(lane);
    }
    r.report.client = r.client_view();
    r.report.target_rate = cell.offered_rate();
    r.report.duration_s = cell.duration_s();
    r.report.scheduled = scheduled as u64;
    // The load's real length: its planned window, or longer if sending fell behind.
    let window = cell
        .duration_s()
        .max(last_send.duration_since(start).as_secs_f64());
    r.report.achieved_rate = r.report.sent as f64 / window;
    r.report.seconds = r
        .per_second
        .into_values()
        .map(|(mut s, h)| {
            if !h.is_empty() {
                s.decided_p50_ms = h.value_at_quantile(0.5) as f64 / 1000.0;
                s.decided_p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
            }
            s
        })
        .collect();
    Ok(r.report)
}

/// Lanes the arrivals are dealt to: one per core this process may use
/// (cgroup quotas included), at most [`MAX_LANES`].
fn lane_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_LANES)
}

/// Draws the order of each arrival. Each arrival's order comes from a
/// generator seeded by the cell's seed and the arrival's index, so the
/// orders are the same whichever lane sends them and however many lanes
/// there are: every method of a cell gets identical orders.
struct OrderSource {
    template: OrderTemplate,
    seed_plan: SeedPlan,
    seed: u64,
}

impl OrderSource {
    fn for_cell(plan: &Plan, cell: &Cell) -> OrderSource {
        OrderSource {
            template: cell.scenario.order.clone(),
            seed_plan: plan.seed.clone(),
            seed: cell_seed(plan.profile.seed, &cell.scenario.name, cell.repetition),
        }
    }

    fn order(&self, index: usize) -> CreateOrder {
        // SplitMix64's increment: neighbouring indices give unrelated seeds.
        let mix = self.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        make_order(&self.template, &self.seed_plan, &mut SmallRng::seed_from_u64(mix))
    }
}

/// The POST body and Idempotency-Key of the cell's first arrival, as the
/// driver sends them: what `txlab bench --parts driver` gives wrk to send,
/// so that both load the endpoint with the same requests.
pub fn first_request(plan: &Plan, cell: &Cell, run_id: &str) -> anyhow::Result<(String, String)> {
    let body =
        serde_json::to_string(&OrderSource::for_cell(plan, cell).order(0)).context("encoding an order")?;
    Ok((body, idempotency_key(&key_prefix(run_id, &cell.id), 0)))
}

/// The part of every Idempotency-Key of a cell before the arrival's index.
fn key_prefix(run_id: &str, cell_id: &str) -> String {
    format!("{run_id}/{cell_id}")
}

fn idempotency_key(prefix: &str, index: u64) -> String {
    format!("{prefix}/{index}")
}

/// The path that long-polls an order until it is decided.
pub fn decision_path(id: Uuid) -> String {
    format!("/orders/{id}?wait_ms=10000")
}

/// What every lane of a cell shares.
struct LaneShared {
    offsets: Vec<Duration>,
    lanes: usize,
    orders: OrderSource,
    warmup: Duration,
    max_in_flight: usize,
    /// Orders in flight across all lanes.
    in_flight: AtomicUsize,
    progress: ProgressBar,
}

/// One lane: every `lanes`-th arrival from `index`, with its own client.
struct Lane {
    index: usize,
    shared: Arc<LaneShared>,
    script: Arc<Script>,
}

impl Lane {
    /// The lane's thread: warm its connections, say how many, wait for the
    /// clock's start, send its arrivals and follow them; hand back when its
    /// last send was and what it recorded. Stops early, abandoning its
    /// orders, if nobody waits any more.
    fn run(
        self,
        warm: usize,
        ready: oneshot::Sender<usize>,
        go: oneshot::Receiver<Instant>,
        mut done: oneshot::Sender<anyhow::Result<(Instant, Recorder)>>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = done.send(Err(
                    anyhow::Error::new(e).context("building a load lane's runtime")
                ));
                return;
            }
        };
        let result = runtime.block_on(async {
            let work = async {
                let _ = ready.send(self.script.client.warm(warm, WARM_WITHIN).await);
                match go.await {
                    Ok(start) => Some(self.send_all(start).await),
                    Err(_) => None,
                }
            };
            tokio::select! {
                result = work => result,
                _ = done.closed() => None,
            }
        });
        // The orders' tasks go with the runtime: nothing of the lane's is
        // left running once it says it is done.
        drop(runtime);
        if let Some(result) = result {
            let _ = done.send(result);
        }
    }

    async fn send_all(&self, start: Instant) -> anyhow::Result<(Instant, Recorder)> {
        let shared = &self.shared;
        // The lane's own recorder: its orders' tasks all run on this thread,
        // so the lock is never contended nor its memory shared between cores.
        let rec = Arc::new(Mutex::new(Recorder::new(start)));
        // Finished orders are reaped as the load goes: a task's memory is
        // freed only once its handle is, and holding a handle per order grew
        // the driver by hundreds of MB at tens of thousands of arrivals/s.
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_send = start;
        for index in (self.index..shared.offsets.len()).step_by(shared.lanes) {
            let offset = shared.offsets[index];
            let order = shared.orders.order(index);
            let intended = start + offset;
            tokio::time::sleep_until(intended).await;
            let now = Instant::now();
            last_send = now;
            let journey = Journey {
                index: index as u64,
                intended,
                second: offset.as_secs(),
                measured: offset >= shared.warmup,
                order,
            };
            {
                let mut r = rec.lock().expect("recorder lock");
                if now.duration_since(intended) > LATE_AFTER {
                    r.report.late += 1;
                }
                if shared.in_flight.load(Ordering::Relaxed) >= shared.max_in_flight {
                    r.report.dropped += 1;
                    r.censor(journey.measured, true);
                    shared.progress.inc(1);
                    continue;
                }
                r.report.sent += 1;
                r.second(journey.second).0.sent += 1;
            }
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let (script, rec, shared) = (self.script.clone(), rec.clone(), self.shared.clone());
            while let Some(done) = tasks.try_join_next() {
                done?;
            }
            tasks.spawn(async move {
                follow(&script, journey, &rec).await;
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                shared.progress.inc(1);
            });
        }
        while let Some(done) = tasks.join_next().await {
            done?;
        }
        let rec = Arc::try_unwrap(rec)
            .map_err(|_| anyhow::anyhow!("load tasks still hold the lane's recorder"))?
            .into_inner()
            .expect("recorder lock");
        Ok((last_send, rec))
    }
}

/// What every order of a cell is sent with.
struct Script {
    /// To the order service (or the proxy in front of it).
    client: Client,
    /// Idempotency keys are `<prefix>/<arrival index>`: unique per run and cell.
    key_prefix: String,
    fault: Option<String>,
    cancel_after_ms: Option<u64>,
    expect: OrderState,
}

/// One order from its creation to its decision, recorded as it goes.
async fn follow(script: &Script, j: Journey, rec: &Mutex<Recorder>) {
    let id = match create(script, &j).await {
        Ok(id) => id,
        Err(kind) => {
            let mut r = rec.lock().expect("recorder lock");
            r.error(j.second, format!("create: {kind}"));
            r.censor(j.measured, true);
            return;
        }
    };
    rec.lock().expect("recorder lock").accepted(&j, id);
    let mut cancelled = false;
    if let Some(ms) = script.cancel_after_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        match cancel(script, id).await {
            Ok(accepted) => cancelled = accepted,
            Err(kind) => rec
                .lock()
                .expect("recorder lock")
                .error(j.second, format!("cancel: {kind}")),
        }
    }
    let decision = decision(script, id, cancelled, j.intended + FOLLOW_LIMIT).await;
    let mut r = rec.lock().expect("recorder lock");
    match decision {
        Ok(Some(view)) => r.decided(&j, view, script.expect),
        Ok(None) => {
            r.report.undecided += 1;
            r.censor(j.measured, false);
        }
        Err(kind) => {
            r.error(j.second, format!("follow: {kind}"));
            r.censor(j.measured, false);
        }
    }
}

/// How often a POST whose connection broke is sent again (with the same
/// Idempotency-Key, so an order the first attempt placed is answered, not
/// placed twice) — what a client of a replicated service does when the
/// replica it reached dies mid-request.
const CREATE_ATTEMPTS: u32 = 3;

/// `POST /orders`; the new order's id, or a short error kind.
async fn create(script: &Script, j: &Journey) -> Result<Uuid, String> {
    let key = idempotency_key(&script.key_prefix, j.index);
    let mut attempt = 1;
    let order = Bytes::from(serde_json::to_vec(&j.order).map_err(|_| "order body".to_string())?);
    let mut headers = vec![(IDEMPOTENCY_KEY_HEADER, key.as_str())];
    if let Some(f) = &script.fault {
        headers.push((FAULT_HEADER, f.as_str()));
    }
    loop {
        let reply = script
            .client
            .send(Method::POST, "/orders", &headers, Some(order.clone()))
            .await;
        match json_reply::<OrderView>(reply) {
            Err(kind) if kind == "transport" && attempt < CREATE_ATTEMPTS => {
                tracing::debug!(key, attempt, "order POST broke off; sending it again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => return result.map(|v| v.id),
        }
    }
}

/// `POST /orders/{id}/cancel`: whether the cancel was accepted (a 409 says
/// the order was already decided; the outcome check tells whether that was
/// expected), or a short error kind.
async fn cancel(script: &Script, id: Uuid) -> Result<bool, String> {
    let reply = script
        .client
        .send(Method::POST, &format!("/orders/{id}/cancel"), &[], None)
        .await;
    match reply {
        Ok(r) if r.status.is_success() => Ok(true),
        Ok(r) if r.status == StatusCode::CONFLICT => Ok(false),
        Ok(r) => Err(format!("HTTP {}", r.status.as_u16())),
        Err(failure) => Err(failure.as_str().to_string()),
    }
}

/// Long-polls the order until it is decided (`Some`), the deadline passes
/// (`None`), or reading it keeps failing until the deadline (the error kind).
/// A cancelled order is decided when its compensation is over, not when it
/// was confirmed just before the cancel landed.
async fn decision(
    script: &Script,
    id: Uuid,
    cancelled: bool,
    deadline: Instant,
) -> Result<Option<OrderView>, String> {
    let settled = |s: OrderState| {
        if cancelled {
            matches!(s, OrderState::Cancelled | OrderState::Rejected)
        } else {
            s.is_terminal()
        }
    };
    let path = decision_path(id);
    loop {
        let view: Result<OrderView, String> =
            json_reply(script.client.send(Method::GET, &path, &[], None).await);
        match view {
            Ok(v) if settled(v.state) => return Ok(Some(v)),
            Ok(_) if Instant::now() < deadline => continue,
            Ok(_) => return Ok(None),
            Err(kind) if Instant::now() < deadline => {
                tracing::debug!(order_id = %id, %kind, "follow failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(kind) => return Err(kind),
        }
    }
}

/// Decodes a JSON reply; the error is a short kind for counting.
fn json_reply<T: serde::de::DeserializeOwned>(reply: Result<Reply, Failure>) -> Result<T, String> {
    let reply = reply.map_err(|f| f.as_str().to_string())?;
    if !reply.status.is_success() {
        let body: Option<txlab_api::ErrorBody> = serde_json::from_slice(&reply.body).ok();
        return Err(format!(
            "HTTP {} {}",
            reply.status.as_u16(),
            body.map(|b| b.error).unwrap_or_default()
        ));
    }
    serde_json::from_slice(&reply.body).map_err(|_| "bad reply body".to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicU64;

    use axum::routing::{get, post};
    use axum::Router;

    use super::*;
    use crate::bench::driver::decided;

    /// A loopback order API that decides every order at once and counts
    /// the orders posted to it; its base URL.
    async fn counting_stub(posted: Arc<AtomicU64>) -> String {
        let app =
            Router::new()
                .route(
                    "/orders",
                    post(move || async move {
                        posted.fetch_add(1, Ordering::Relaxed);
                        (StatusCode::ACCEPTED, axum::Json(decided(Uuid::new_v4())))
                    }),
                )
                .route(
                    "/orders/{id}",
                    get(|axum::extract::Path(id): axum::extract::Path<Uuid>| async move {
                        axum::Json(decided(id))
                    }),
                );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn target(base: &str) -> Target<'_> {
        Target {
            base_url: base,
            run_id: "test",
        }
    }

    /// The bench profile.
    fn bench_plan() -> Plan {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Plan::load(&root.join("profiles/bench.yaml"), &root.join("scenarios")).unwrap()
    }

    /// The bench profile's happy path at a constant `rate` for
    /// `duration_s`, a counting stub to send it to, and the stub's count.
    async fn setup(rate: f64, duration_s: f64) -> (Plan, String, Arc<AtomicU64>) {
        let mut plan = bench_plan();
        plan.set_constant_load(rate, duration_s);
        let posted = Arc::new(AtomicU64::new(0));
        let base = counting_stub(posted.clone()).await;
        (plan, base, posted)
    }

    #[tokio::test]
    async fn every_arrival_is_recorded_once() {
        for lanes in [1, 3] {
            arrivals_recorded_once_in(lanes).await;
        }
    }

    async fn arrivals_recorded_once_in(lanes: usize) {
        let (plan, base, posted) = setup(300.0, 1.0).await;
        let load = drive_in_lanes(
            target(&base),
            &plan,
            &plan.cells[0],
            &ProgressBar::hidden(),
            lanes,
        )
        .await
        .unwrap();
        assert_eq!(load.scheduled, 300);
        assert_eq!(
            (load.sent, load.accepted, load.decided, load.measured),
            (300, 300, 300, 300)
        );
        assert_eq!(posted.load(Ordering::Relaxed), 300, "each arrival posted once");
        assert_eq!(load.client.orders.len(), 300, "every order in the client view");
        assert!(load
            .client
            .orders
            .values()
            .all(|s| *s == Some(OrderState::Confirmed)));
        assert_eq!(load.decided_us.len(), 300);
        assert_eq!(load.decided_orders.len(), 300);
        assert_eq!(load.completions.iter().sum::<u64>(), 300);
        assert_eq!(load.outcomes.get("confirmed"), Some(&300));
        let per_second: u64 = load.seconds.iter().map(|s| s.sent).sum();
        assert_eq!(per_second, 300, "{:?}", load.seconds);
        assert!(load
            .seconds
            .iter()
            .all(|s| s.decided == s.sent && s.decided_p99_ms > 0.0));
    }

    #[test]
    fn the_client_view_keeps_each_order_once_with_its_decision_if_seen() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut rec = Recorder::new(Instant::now());
        rec.sightings = vec![(a, None), (b, None), (a, Some(OrderState::Rejected))];
        let view = rec.client_view();
        assert_eq!(
            view.orders.into_iter().collect::<Vec<_>>(),
            vec![(a, Some(OrderState::Rejected)), (b, None)]
        );
    }

    #[test]
    fn each_arrival_draws_the_same_order_whatever_lane_sends_it() {
        let plan = bench_plan();
        let source = OrderSource {
            template: plan.cells[0].scenario.order.clone(),
            seed_plan: plan.seed.clone(),
            seed: 7,
        };
        let forward: Vec<CreateOrder> = (0..100).map(|i| source.order(i)).collect();
        let mut backward: Vec<CreateOrder> = (0..100).rev().map(|i| source.order(i)).collect();
        backward.reverse();
        assert_eq!(forward, backward, "an arrival's order depends on its index only");
        let customers: std::collections::HashSet<_> = forward.iter().map(|o| &o.customer).collect();
        assert!(
            customers.len() > 50,
            "orders vary between arrivals: {} customers",
            customers.len()
        );
        let other = OrderSource { seed: 8, ..source };
        assert_ne!(
            forward[0..10],
            (0..10).map(|i| other.order(i)).collect::<Vec<_>>()[..]
        );
    }

    #[tokio::test]
    async fn dropping_the_load_stops_sending() {
        // 200 orders/s for a minute, given 300 ms.
        let (plan, base, posted) = setup(200.0, 60.0).await;
        let progress = ProgressBar::hidden();
        let load = drive(target(&base), &plan, &plan.cells[0], &progress);
        assert!(tokio::time::timeout(Duration::from_millis(300), load)
            .await
            .is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let at_stop = posted.load(Ordering::Relaxed);
        assert!(at_stop > 0 && at_stop < 200, "{at_stop} orders in 300 ms");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            posted.load(Ordering::Relaxed),
            at_stop,
            "the driver went on sending"
        );
    }
}
