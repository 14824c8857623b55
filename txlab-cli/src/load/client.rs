//! The driver's HTTP/1.1 client: keep-alive connections to the one origin
//! the load goes to, reused from a stack of idle ones, opened when none is
//! idle.
//!
//! Why not reqwest, which the rest of the CLI uses: per request it parses
//! the URL, checks a pool keyed by scheme and host, and wraps the request in
//! layers the driver never needs; at thousands of arrivals per second that
//! was most of the driver's CPU (docs/performance.md, "The load driver").

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// Idle connections kept for reuse; more are closed when they come back.
const MAX_IDLE: usize = 256;

/// Why a request got no reply, in the words the driver counts errors by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be opened in time, or it was refused.
    Connect,
    /// No complete reply within the request timeout.
    Timeout,
    /// The connection broke while the request or its reply was on it.
    Transport,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Transport => "transport",
        }
    }
}

/// A reply read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Where requests go: `http://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    host: String,
    port: u16,
    /// The Host header: the URL's authority as written.
    authority: String,
    /// A path every request's path is appended to; empty or `/a/b`.
    prefix: String,
}

impl Origin {
    /// Read once per cell with reqwest's URL parser, not per request.
    fn parse(base_url: &str) -> anyhow::Result<Origin> {
        let url = reqwest::Url::parse(base_url)
            .with_context(|| format!("{base_url:?} is not a URL like http://host:port"))?;
        if url.scheme() != "http" {
            bail!("the load driver speaks plain HTTP/1.1: {base_url:?} is not an http:// URL");
        }
        let written = url
            .host_str()
            .with_context(|| format!("{base_url:?} names no host"))?;
        let authority = match url.port() {
            Some(port) => format!("{written}:{port}"),
            None => written.to_string(),
        };
        Ok(Origin {
            // An IPv6 literal is written in brackets but connected to without.
            host: written.trim_start_matches('[').trim_end_matches(']').to_string(),
            port: url.port_or_known_default().unwrap_or(80),
            authority,
            prefix: url.path().trim_end_matches('/').to_string(),
        })
    }
}

pub struct Client {
    origin: Origin,
    host_header: HeaderValue,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    connect_timeout: Duration,
    timeout: Duration,
}

impl Client {
    /// A client for `base_url`; `timeout` bounds each request from taking a
    /// connection to the reply's last byte.
    pub fn new(base_url: &str, connect_timeout: Duration, timeout: Duration) -> anyhow::Result<Client> {
        let origin = Origin::parse(base_url)?;
        let host_header = HeaderValue::from_str(&origin.authority)
            .with_context(|| format!("{base_url:?} cannot be a Host header"))?;
        Ok(Client {
            origin,
            host_header,
            idle: Mutex::new(Vec::new()),
            connect_timeout,
            timeout,
        })
    }

    /// Sends one request and reads its reply. `path` starts with `/`;
    /// a `body` is sent as JSON.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Option<Bytes>,
    ) -> Result<Reply, Failure> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.origin.prefix))
            .header(HOST, self.host_header.clone());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        // A header value the caller made unsendable is the caller's bug,
        // but it is still only one failed request.
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|_| Failure::Transport)?;
        tokio::time::timeout(self.timeout, self.exchange(req))
            .await
            .unwrap_or(Err(Failure::Timeout))
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<Reply, Failure> {
        let (mut sender, reused) = self.connection().await?;
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            // hyper hands back a request it never wrote when the idle
            // connection turned out closed: safe to send on a new one.
            Err(mut e) if reused && e.error().is_canceled() => {
                let req = e.take_message().ok_or(Failure::Transport)?;
                sender = self.connect().await?;
                sender.send_request(req).await.map_err(|_| Failure::Transport)?
            }
            Err(_) => return Err(Failure::Transport),
        };
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|_| Failure::Transport)?
            .to_bytes();
        self.put_back(sender);
        Ok(Reply { status, body })
    }

    /// An idle connection that is still open, or a new one; and whether it was reused.
    async fn connection(&self) -> Result<(SendRequest<Full<Bytes>>, bool), Failure> {
        loop {
            let idle = self.idle.lock().expect("idle connections lock").pop();
            let Some(mut sender) = idle else {
                return Ok((self.connect().await?, false));
            };
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let addr = (self.origin.host.as_str(), self.origin.port);
        let stream = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| Failure::Connect)?
            .map_err(|_| Failure::Connect)?;
        // Requests are small and each waits for its reply: Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Connect)?;
        // The connection's own task; it ends when the last sender is dropped
        // or the peer closes.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "load connection closed");
            }
        });
        Ok(sender)
    }

    fn put_back(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("idle connections lock");
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_read_from_base_urls() {
        let o = Origin::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.authority.as_str(), o.prefix.as_str()),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "")
        );
        let o = Origin::parse("http://order.lab.svc/api/").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.prefix.as_str()),
            ("order.lab.svc", 80, "/api")
        );
        let o = Origin::parse("http://[::1]:9000").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("::1", 9000));
        let o = Origin::parse("http://[::1]").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("::1", 80));
    }

    /// A loopback server that answers every request on a connection with
    /// `reply` and then does what `after` says; its address.
    async fn server(reply: &'static str, after: After) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    // Every request here is a head without a body.
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        match after {
                            After::Silence => std::future::pending::<()>().await,
                            After::Hangup => return,
                            After::IdleTimeout | After::KeepAlive => {}
                        }
                        socket.write_all(reply.as_bytes()).await.unwrap();
                        if after == After::IdleTimeout {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            return;
                        }
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    #[derive(Clone, Copy, PartialEq)]
    enum After {
        /// Keeps the connection open for the next request.
        KeepAlive,
        /// Closes the connection 20 ms after its reply, without saying so
        /// (as a server whose keep-alive timeout is short would).
        IdleTimeout,
        /// Closes the connection instead of replying.
        Hangup,
        /// Never replies.
        Silence,
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn client(base: &str) -> Client {
        Client::new(base, Duration::from_millis(500), Duration::from_millis(500)).unwrap()
    }

    #[tokio::test]
    async fn connections_are_kept_and_reused() {
        let c = client(&server(OK, After::KeepAlive).await);
        for _ in 0..5 {
            let r = c.send(Method::GET, "/", &[], None).await.unwrap();
            assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
        }
        assert_eq!(
            c.idle.lock().unwrap().len(),
            1,
            "one connection, back in the stack"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_not_a_failed_request() {
        // Each connection is closed by the server while it is idle in the
        // stack: the next request must go out on a new one.
        let c = client(&server(OK, After::IdleTimeout).await);
        for i in 0..10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = c.send(Method::GET, "/", &[], None).await;
            assert_eq!(r.map(|r| r.status).ok(), Some(StatusCode::OK), "request {i}");
        }
    }

    #[tokio::test]
    async fn failures_are_told_apart() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let get = |c: Client| async move { c.send(Method::GET, "/", &[], None).await.unwrap_err() };
        assert_eq!(get(client(&closed)).await, Failure::Connect);
        assert_eq!(
            get(client(&server(OK, After::Hangup).await)).await,
            Failure::Transport
        );
        assert_eq!(
            get(client(&server(OK, After::Silence).await)).await,
            Failure::Timeout
        );
    }

    #[test]
    fn urls_the_driver_cannot_use_are_refused_with_a_reason() {
        let e = Origin::parse("https://example.test").unwrap_err().to_string();
        assert!(e.contains("plain HTTP/1.1"), "{e}");
        let e = format!("{:#}", Origin::parse("http://h:http").unwrap_err());
        assert!(e.contains("port"), "{e}");
        let e = format!("{:#}", Origin::parse("http://:80").unwrap_err());
        assert!(e.contains("empty host"), "{e}");
    }
}
