//! The driver's HTTP/1.1 client: keep-alive connections to the one origin
//! the load goes to, reused from a stack of idle ones, opened when none is
//! idle. Each request is written and its reply read by the task that sends
//! it, on the connection itself.
//!
//! Why not reqwest, which the rest of the CLI uses: per request it parses
//! the URL, checks a pool keyed by scheme and host, and wraps the request in
//! layers the driver never needs; at thousands of arrivals per second that
//! was most of the driver's CPU. Why not hyper's client connection either
//! (used until 2026-12-03): every request went through a channel to the
//! connection's own task and back, two wake-ups and a header map per
//! request (docs/performance.md, "The load driver against wrk").

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of a reply's head (status line and headers) read.
const MAX_HEAD: usize = 16 * 1024;

/// Why a request got no reply, in the words the driver counts errors by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be opened in time, or it was refused.
    Connect,
    /// No complete reply within the request timeout.
    Timeout,
    /// The connection broke while the request or its reply was on it, or
    /// the reply was not HTTP/1.1 the client can read.
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
    idle: Mutex<Vec<Conn>>,
    /// Idle connections kept for reuse; more are closed when they come back.
    max_idle: usize,
    connect_timeout: Duration,
    timeout: Duration,
}

impl Client {
    /// A client for `base_url`; `timeout` bounds each request from taking a
    /// connection to the reply's last byte. Up to `max_idle` connections are
    /// kept for reuse: the driver keeps as many as it may hold at once, or
    /// one that fell behind and caught up would close what it opened and
    /// open it again at the next burst.
    pub fn new(
        base_url: &str,
        connect_timeout: Duration,
        timeout: Duration,
        max_idle: usize,
    ) -> anyhow::Result<Client> {
        let origin = Origin::parse(base_url)?;
        if origin
            .authority
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ')
        {
            bail!("{base_url:?} cannot be a Host header");
        }
        Ok(Client {
            origin,
            idle: Mutex::new(Vec::new()),
            max_idle,
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
        // A header the caller made unsendable (a line break in a value)
        // is the caller's bug, but still only one failed request.
        let request = self
            .encode(&method, path, headers, body.as_deref())
            .ok_or(Failure::Transport)?;
        tokio::time::timeout(self.timeout, self.exchange(&request))
            .await
            .unwrap_or(Err(Failure::Timeout))
    }

    /// The request's bytes: request line, Host, the caller's headers, then
    /// the body with its length.
    fn encode(
        &self,
        method: &Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let body = body.unwrap_or_default();
        let mut req = Vec::with_capacity(128 + path.len() + body.len());
        let line = |req: &mut Vec<u8>, parts: &[&[u8]]| {
            parts.iter().for_each(|p| req.extend_from_slice(p));
            req.extend_from_slice(b"\r\n");
        };
        line(
            &mut req,
            &[
                method.as_str().as_bytes(),
                b" ",
                self.origin.prefix.as_bytes(),
                path.as_bytes(),
                b" HTTP/1.1",
            ],
        );
        line(&mut req, &[b"host: ", self.origin.authority.as_bytes()]);
        for (name, value) in headers {
            if value.bytes().any(|b| b == b'\r' || b == b'\n') {
                return None;
            }
            line(&mut req, &[name.as_bytes(), b": ", value.as_bytes()]);
        }
        if !body.is_empty() || *method == Method::POST {
            line(&mut req, &[b"content-type: application/json"]);
            line(
                &mut req,
                &[b"content-length: ", body.len().to_string().as_bytes()],
            );
        }
        line(&mut req, &[]);
        req.extend_from_slice(body);
        Some(req)
    }

    async fn exchange(&self, request: &[u8]) -> Result<Reply, Failure> {
        let (mut conn, reused) = self.connection().await?;
        let (reply, keep) = match conn.round_trip(request).await {
            Ok(done) => done,
            // A connection the server closed while it sat idle, found out
            // only now, before any byte of a reply: the server saw nothing
            // it answered, so the request goes out once more on a new one.
            Err(Broken::BeforeReply) if reused => {
                conn = self.connect().await?;
                conn.round_trip(request).await.map_err(|_| Failure::Transport)?
            }
            Err(_) => return Err(Failure::Transport),
        };
        if keep {
            self.put_back(conn);
        }
        Ok(reply)
    }

    /// An idle connection that is still open, or a new one; and whether it was reused.
    async fn connection(&self) -> Result<(Conn, bool), Failure> {
        loop {
            let idle = self.idle.lock().expect("idle connections lock").pop();
            match idle {
                Some(conn) if conn.still_open() => return Ok((conn, true)),
                Some(_) => continue,
                None => return Ok((self.connect().await?, false)),
            }
        }
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let addr = (self.origin.host.as_str(), self.origin.port);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Failure::Connect)?
            .map_err(|_| Failure::Connect)?;
        // Requests are small and each waits for its reply: Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
        })
    }

    /// Opens up to `n` connections, as many as the idle stack has room
    /// for, and keeps them idle; stops at the first that cannot be opened
    /// (the requests will meet the same failure and count it) or after
    /// `within`. Returns how many it opened.
    pub async fn warm(&self, n: usize, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        let mut opened = 0;
        while opened < n && self.idle.lock().expect("idle connections lock").len() < self.max_idle {
            match tokio::time::timeout_at(deadline, self.connect()).await {
                Ok(Ok(conn)) => self.idle.lock().expect("idle connections lock").push(conn),
                _ => break,
            }
            opened += 1;
        }
        opened
    }

    fn put_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("idle connections lock");
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
}

/// One keep-alive connection and what was read from it past the last reply.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// How a round trip failed.
#[derive(Debug, PartialEq)]
enum Broken {
    /// Closed or failed before a byte of the reply came.
    BeforeReply,
    /// Broke off inside the reply, or the reply could not be read.
    InReply,
}

impl Conn {
    /// False if the server has closed it (or sent bytes nobody asked for).
    fn still_open(&self) -> bool {
        let mut probe = [0u8; 1];
        self.buf.is_empty()
            && matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes `request` and reads its reply; and whether the connection
    /// may carry another request.
    async fn round_trip(&mut self, request: &[u8]) -> Result<(Reply, bool), Broken> {
        self.stream
            .write_all(request)
            .await
            .map_err(|_| Broken::BeforeReply)?;
        let head = loop {
            if let Some(head) = parse_head(&self.buf).map_err(|_| Broken::InReply)? {
                break head;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Broken::InReply);
            }
            let before = self.buf.len();
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) if before == 0 => return Err(Broken::BeforeReply),
                Ok(0) | Err(_) => return Err(Broken::InReply),
                Ok(_) => {}
            }
        };
        self.buf.advance(head.len);
        let body = match head.body {
            Framing::Length(n) => self.read_exact(n).await?,
            Framing::Chunked => self.read_chunked().await?,
            Framing::UntilClose => {
                while self
                    .stream
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|_| Broken::InReply)?
                    > 0
                {}
                self.buf.split().freeze()
            }
        };
        let keep = head.keep_alive && head.body != Framing::UntilClose;
        Ok((
            Reply {
                status: head.status,
                body,
            },
            keep,
        ))
    }

    /// Reads more of a reply that has begun; its end here breaks it off.
    async fn read_more(&mut self) -> Result<(), Broken> {
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => Err(Broken::InReply),
            Ok(_) => Ok(()),
        }
    }

    /// The next `n` bytes, read as far as needed.
    async fn read_exact(&mut self, n: usize) -> Result<Bytes, Broken> {
        while self.buf.len() < n {
            self.read_more().await?;
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// A line ending in CRLF, without it.
    async fn read_line(&mut self) -> Result<Bytes, Broken> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(end).freeze();
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Broken::InReply);
            }
            self.read_more().await?;
        }
    }

    /// A chunked body, joined (trailers are read and dropped).
    async fn read_chunked(&mut self) -> Result<Bytes, Broken> {
        let mut body = BytesMut::new();
        loop {
            let line = self.read_line().await?;
            let size = std::str::from_utf8(&line)
                .ok()
                .map(|l| l.split(';').next().unwrap_or_default().trim())
                .and_then(|hex| usize::from_str_radix(hex, 16).ok())
                .ok_or(Broken::InReply)?;
            if size == 0 {
                while !self.read_line().await?.is_empty() {}
                return Ok(body.freeze());
            }
            body.extend_from_slice(&self.read_exact(size).await?);
            if !self.read_line().await?.is_empty() {
                return Err(Broken::InReply);
            }
        }
    }
}

/// How a reply's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// What a reply's head says.
#[derive(Debug)]
struct Head {
    /// Its length in bytes, blank line included.
    len: usize,
    status: StatusCode,
    body: Framing,
    keep_alive: bool,
}

/// The reply's head if `buf` holds all of it.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut reply = httparse::Response::new(&mut headers);
    let len = match reply.parse(buf).map_err(drop)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = reply.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(())?;
    let mut body = Framing::UntilClose;
    let mut keep_alive = reply.version == Some(1);
    for h in reply.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(drop)?.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            body = Framing::Length(value.parse().map_err(drop)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            body = Framing::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    // Replies that never have a body.
    if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        body = Framing::Length(0);
    }
    Ok(Some(Head {
        len,
        status,
        body,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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
        counting_server(reply, after).await.0
    }

    /// [`server`], and how many connections it has accepted so far.
    async fn counting_server(reply: &'static str, after: After) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::Relaxed);
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
        (format!("http://{addr}"), accepted)
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
        Client::new(base, Duration::from_millis(500), Duration::from_millis(500), 8).unwrap()
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

    /// `n` GETs sent at once; how many were answered 200.
    async fn at_once(c: &Arc<Client>, n: usize) -> usize {
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..n {
            let c = c.clone();
            sends.spawn(async move { c.send(Method::GET, "/", &[], None).await });
        }
        let replies = sends.join_all().await;
        replies
            .iter()
            .filter(|r| matches!(r, Ok(r) if r.status == StatusCode::OK))
            .count()
    }

    #[tokio::test]
    async fn warmed_connections_carry_the_requests() {
        let (base, accepted) = counting_server(OK, After::KeepAlive).await;
        let c = Arc::new(client(&base));
        assert_eq!(c.warm(5, Duration::from_secs(1)).await, 5);
        assert_eq!(c.idle.lock().unwrap().len(), 5);
        assert_eq!(at_once(&c, 5).await, 5);
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            5,
            "no connection opened past the warm ones"
        );
        // No more than the client keeps idle (8 here), counting those it has.
        assert_eq!(c.warm(20, Duration::from_secs(1)).await, 3);
        assert_eq!(at_once(&c, 8).await, 8);
        assert_eq!(accepted.load(Ordering::Relaxed), 8);
    }

    #[tokio::test]
    async fn warming_stops_at_a_target_that_refuses() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let c = client(&closed);
        assert_eq!(c.warm(5, Duration::from_secs(1)).await, 0);
        assert!(c.idle.lock().unwrap().is_empty());
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

    #[tokio::test]
    async fn replies_framed_by_length_chunks_or_close_are_read_whole() {
        const CHUNKED: &str =
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n3;x=y\r\n!!!\r\n0\r\n\r\n";
        let c = client(&server(CHUNKED, After::KeepAlive).await);
        for _ in 0..2 {
            let r = c.send(Method::GET, "/", &[], None).await.unwrap();
            assert_eq!(&r.body[..], b"ok!!!");
        }
        assert_eq!(
            c.idle.lock().unwrap().len(),
            1,
            "a chunked reply keeps its connection"
        );

        const CLOSE: &str = "HTTP/1.1 201 Created\r\nconnection: close\r\n\r\nbye";
        let c = client(&server(CLOSE, After::IdleTimeout).await);
        let r = c
            .send(Method::POST, "/", &[], Some(Bytes::from_static(b"{}")))
            .await
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (StatusCode::CREATED, &b"bye"[..]));
        assert!(
            c.idle.lock().unwrap().is_empty(),
            "a closed connection is not kept"
        );
    }

    #[test]
    fn requests_are_written_as_http_1_1_and_bad_header_values_refused() {
        let c = Client::new(
            "http://127.0.0.1:8080/api",
            Duration::from_secs(1),
            Duration::from_secs(1),
            8,
        )
        .unwrap();
        let req = c
            .encode(
                &Method::POST,
                "/orders",
                &[("idempotency-key", "k1")],
                Some(b"{}"),
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "POST /api/orders HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nidempotency-key: k1\r\n\
             content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        let req = c.encode(&Method::GET, "/orders/1", &[], None).unwrap();
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "GET /api/orders/1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\r\n"
        );
        assert!(c.encode(&Method::GET, "/", &[("x", "a\r\nb: c")], None).is_none());
    }

    #[test]
    fn reply_heads_say_how_their_bodies_end() {
        let head = |s: &str| parse_head(s.as_bytes()).unwrap().unwrap();
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(
            (h.status, h.body, h.keep_alive, h.len),
            (StatusCode::OK, Framing::Length(12), true, 39)
        );
        let h = head("HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (Framing::Chunked, false));
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert_eq!(head("HTTP/1.1 204 No Content\r\n\r\n").body, Framing::Length(0));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
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
