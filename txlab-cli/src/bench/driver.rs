//! How much load txlab's own driver can offer: against a trivial endpoint
//! (a stub of the order API that decides every order at once), the highest
//! rate the driver sends on schedule with HDR recording on, next to what
//! wrk gets from the same endpoint on the same cores.
//!
//! The stub is `txlab stub` (hidden), run as a child process so that it
//! does not share the driver's runtime.

use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use txlab_api::order::{OrderState, OrderView, IDEMPOTENCY_KEY_HEADER};
use txlab_api::TxMode;
use uuid::Uuid;

use crate::load::driver::decision_path;
use crate::metrics::resources::{self, Component};

/// What the stub answers for any order: decided, confirmed.
pub(crate) fn decided(id: Uuid) -> OrderView {
    OrderView {
        id,
        state: OrderState::Confirmed,
        customer: "stub".into(),
        amount: 0,
        slot: "stub".into(),
        items: Vec::new(),
        reason: None,
        method: TxMode::SagaOrch,
        created_ms: 0,
        decided_ms: Some(0),
    }
}

/// Serves the stub on loopback until the process is stopped.
pub async fn serve_stub(port: u16) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/orders",
            post(|| async { (axum::http::StatusCode::ACCEPTED, Json(decided(Uuid::new_v4()))) }),
        )
        .route(
            "/orders/{id}",
            get(|Path(id): Path<Uuid>| async move { Json(decided(id)) }),
        );
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket
        .bind(([127, 0, 0, 1], port).into())
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    // A backlog of 4,096 (the kernel's usual cap) rather than tokio's 1,024:
    // when the driver falls behind it opens connections by the thousand,
    // and SYNs dropped from a full backlog come back only after 1 s,
    // which read as the driver's own 1 s stalls.
    let listener = socket.listen(4096)?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The stub as a child process, stopped when dropped.
pub struct Stub {
    child: tokio::process::Child,
    pub base_url: String,
}

impl Stub {
    pub async fn start() -> anyhow::Result<Stub> {
        let port = crate::platform::local::free_port()?;
        let exe = std::env::current_exe().context("finding txlab's own binary")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["stub", "--port", &port.to_string()]).kill_on_drop(true);
        crate::platform::local::contain(&mut cmd, None);
        let child = cmd.spawn().context("starting the stub endpoint")?;
        let base_url = format!("http://127.0.0.1:{port}");
        let probe = format!("{base_url}/orders/{}", Uuid::nil());
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client
                .get(&probe)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(Stub { child, base_url });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the stub endpoint did not answer within 5 s")
    }

    /// A URL wrk can hammer: the stub's GET of one order.
    pub fn order_url(&self) -> String {
        format!("{}/orders/{}", self.base_url, Uuid::nil())
    }

    /// CPU seconds spent so far by this process (with the children it has
    /// waited for, wrk among them) and by the stub.
    pub fn cpu_seconds(&self) -> (f64, f64) {
        let stub = Component {
            name: "stub".into(),
            pid: self.child.id().unwrap_or(0),
            with_children: false,
        };
        let now = resources::sample(&[resources::driver(), stub]);
        let of = |name: &str| now.get(name).map_or(0.0, |s| s.cpu_s);
        (of("driver"), of("stub"))
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What wrk sends.
pub enum WrkLoad<'a> {
    /// The stub's GET of one order, again and again: the cheapest request
    /// the endpoint serves, so the highest rate any client gets from it.
    Get,
    /// The driver's requests, in turn: the POST of an order (this Lua
    /// script, see [`mix_script`]) and the GET that long-polls one.
    Mix(&'a std::path::Path),
}

/// wrk's requests per second: 2 threads, `connections` connections, `secs` seconds.
pub async fn wrk(stub: &Stub, load: WrkLoad<'_>, connections: u32, secs: u32) -> anyhow::Result<f64> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    match load {
        WrkLoad::Get => cmd.arg(stub.order_url()),
        WrkLoad::Mix(script) => cmd.arg("-s").arg(script).arg(&stub.base_url),
    };
    let out = cmd.output().await.context("running wrk (Debian package `wrk`)")?;
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text)
}

/// A wrk script that sends, in turn on each thread, the driver's POST of
/// `body` with its headers and the driver's GET of an order. Both are
/// formatted once, when the script loads; the stub answers any order id.
pub fn mix_script(body: &str, idempotency_key: &str) -> String {
    format!(
        "-- Written by `txlab bench --parts driver`: the requests txlab's driver sends.\n\
         local post = wrk.format(\"POST\", \"/orders\", {{\n\
         \x20 [\"content-type\"] = \"application/json\",\n\
         \x20 [ {} ] = {},\n\
         }}, {})\n\
         local get = wrk.format(\"GET\", {})\n\
         local sent = 0\n\
         function request()\n\
         \x20 sent = sent + 1\n\
         \x20 if sent % 2 == 1 then return post end\n\
         \x20 return get\n\
         end\n",
        lua_string(IDEMPOTENCY_KEY_HEADER),
        lua_string(idempotency_key),
        lua_string(body),
        lua_string(&decision_path(Uuid::nil())),
    )
}

/// `text` as a Lua string literal that reads back byte for byte: a long
/// bracket (`[[…]]`, `[=[…]=]`, …) that nothing in it closes early, so a
/// JSON body stays readable; decimal escapes where a long bracket would
/// change it (Lua reads any line break in one as `\n`).
fn lua_string(text: &str) -> String {
    if !text.contains(['\r', '\n']) {
        for level in 0.. {
            let eq = "=".repeat(level);
            let close = format!("]{eq}]");
            if format!("{text}{close}").find(&close) == Some(text.len()) {
                return format!("[{eq}[{text}{close}");
            }
        }
    }
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for b in text.bytes() {
        if (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\{b:03}"));
        }
    }
    s.push('"');
    s
}

/// wrk's `Requests/sec:  23456.78`; an error if any reply was not a
/// success (the stub refused what wrk sent: its rate is not a yardstick)
/// or a socket failed.
fn parse_wrk(text: &str) -> anyhow::Result<f64> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(str::trim))
    };
    if let Some(n) = field("Non-2xx or 3xx responses:") {
        bail!("wrk got {n} replies that were not a success from the stub:\n{text}");
    }
    if let Some(errors) = field("Socket errors:") {
        bail!("wrk's sockets failed ({errors}):\n{text}");
    }
    field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))
}

/// What wrk got from the stub, and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct WrkFigures {
    pub requests_per_s: f64,
    /// CPU per request, µs: wrk's (with the idle bench process), and the
    /// stub's while wrk drove it.
    pub cpu_us: f64,
    pub stub_cpu_us: f64,
}

/// The driver's figures next to wrk's.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// wrk sending the driver's requests: the yardstick of the target.
    pub wrk_mix: WrkFigures,
    /// wrk sending the GET of one order only.
    pub wrk_get: WrkFigures,
    /// Highest arrival rate the driver sent on schedule (each arrival is a
    /// POST and a GET that finds it decided).
    pub driver_arrivals_per_s: Option<f64>,
    pub driver_requests_per_s: Option<f64>,
    /// Driver requests per second over wrk's with the same requests.
    pub ratio: Option<f64>,
    /// Driver requests per second over wrk's GET-only.
    pub ratio_to_get: Option<f64>,
    /// CPU per request, µs, at the driver's highest rate on schedule:
    /// the driver's, and the stub's while the driver drove it.
    pub driver_cpu_us: Option<f64>,
    pub stub_cpu_us_under_driver: Option<f64>,
    /// The most memory the bench process (the driver) held during the
    /// search, MiB.
    pub driver_peak_rss_mib: Option<f64>,
}

/// CPU µs per request between two readings of [`Stub::cpu_seconds`].
pub fn cpu_us_per_request(before: (f64, f64), after: (f64, f64), requests: f64) -> (f64, f64) {
    let per = |a: f64, b: f64| (a - b).max(0.0) * 1e6 / requests.max(1.0);
    (per(after.0, before.0), per(after.1, before.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_rate_is_read() {
        let text = "Running 10s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n\
                    Requests/sec:  23456.78\nTransfer/sec:      3.10MB\n";
        assert_eq!(parse_wrk(text).unwrap(), 23456.78);
        assert!(parse_wrk("nothing").is_err());
        let refused = format!("{text}  Non-2xx or 3xx responses: 5120\n");
        assert!(parse_wrk(&refused)
            .unwrap_err()
            .to_string()
            .contains("5120 replies"));
        let broken = format!("{text}  Socket errors: connect 0, read 3, write 0, timeout 0\n");
        assert!(parse_wrk(&broken).unwrap_err().to_string().contains("read 3"));
    }

    #[test]
    fn lua_strings_read_back_as_written() {
        assert_eq!(lua_string(r#"{"sku":"a\"b"}"#), r#"[[{"sku":"a\"b"}]]"#);
        // Nothing inside may close the bracket early, nor end in a part of it.
        assert_eq!(lua_string("a]]b"), "[=[a]]b]=]");
        assert_eq!(lua_string("a]"), "[=[a]]=]");
        assert_eq!(lua_string("]=]]]"), "[==[]=]]]]==]");
        // Line breaks take escapes; so do quotes and backslashes then.
        assert_eq!(lua_string("é\"\\\r\n1"), r#""\195\169\034\092\013\0101""#);
    }
}
