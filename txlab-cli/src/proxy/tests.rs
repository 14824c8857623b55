//! The proxy against real loopback sockets: an echo server behind it, this
//! test process as the sender (`load`), faults switched on and off.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use txlab_api::Role;

use super::*;
use crate::chaos::fault::{Bandwidth, Delay, Direction, NetworkEffect, NetworkFault, Pick};

const PAYMENT: Component = Component::Service(Role::Payment);

/// An echo server; returns its address.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A proxy for `payment` in front of an echo server, with this process as `load`.
async fn proxied() -> (Proxy, TcpStream) {
    let proxy = Proxy::new().unwrap();
    let port = proxy.listen(PAYMENT).unwrap();
    proxy.route(PAYMENT, vec![echo().await]);
    proxy.identify_senders(|| vec![(std::process::id(), Component::Load)]);
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    (proxy, stream)
}

/// One small request and its echo; how long the round trip took.
async fn round_trip(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    started.elapsed()
}

fn fault(direction: Direction, effect: NetworkEffect) -> NetworkFault {
    NetworkFault {
        selector: vec![Component::Load],
        pick: Pick::All,
        direction,
        target: vec![PAYMENT],
        effect,
    }
}

fn delay(ms: u64) -> NetworkEffect {
    NetworkEffect::Shape {
        delay: Some(Delay {
            latency: Duration::from_millis(ms),
            jitter: Duration::ZERO,
            correlation: 0.0,
        }),
        loss: None,
        duplicate: None,
    }
}

#[tokio::test]
async fn delay_applies_per_direction_and_goes_away_when_switched_off() {
    let (proxy, mut s) = proxied().await;
    // The first round trip waits for the connection's set-up (its sender
    // looked up in /proc); the ones after it show the link itself.
    round_trip(&mut s).await;
    let plain = round_trip(&mut s).await;
    assert!(plain < Duration::from_millis(20), "{plain:?}");

    proxy.apply("one-way", fault(Direction::To, delay(40)));
    let one_way = round_trip(&mut s).await;
    assert!((40..80).contains(&one_way.as_millis()), "{one_way:?}");

    proxy.apply("one-way", fault(Direction::Both, delay(40)));
    let both = round_trip(&mut s).await;
    assert!((80..130).contains(&both.as_millis()), "{both:?}");
    assert_eq!(proxy.active(), vec!["one-way".to_string()]);

    assert!(proxy.remove("one-way"));
    assert!(!proxy.remove("one-way"));
    assert!(round_trip(&mut s).await < Duration::from_millis(20));

    // Bytes are counted per link and direction, by sender.
    let traffic = proxy.traffic();
    let sent = |from, to| {
        traffic
            .iter()
            .find(|t| t.sender == Some(from) && t.receiver == Some(to))
            .map(|t| t.bytes)
    };
    assert_eq!(sent(Component::Load, PAYMENT), Some(20));
    assert_eq!(sent(PAYMENT, Component::Load), Some(20));
}

#[tokio::test]
async fn a_fault_on_other_components_leaves_this_link_alone() {
    let (proxy, mut s) = proxied().await;
    let mut elsewhere = fault(Direction::Both, delay(100));
    elsewhere.target = vec![Component::Postgres];
    proxy.apply("elsewhere", elsewhere);
    assert!(round_trip(&mut s).await < Duration::from_millis(50));
}

#[tokio::test]
async fn a_partition_holds_traffic_without_losing_it() {
    let (proxy, mut s) = proxied().await;
    round_trip(&mut s).await;
    proxy.apply("cut", fault(Direction::Both, NetworkEffect::Partition));
    s.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    let waited = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
    assert!(waited.is_err(), "nothing crosses a partition");

    // A new connection is accepted but goes nowhere meanwhile.
    let port = s.peer_addr().unwrap().port();
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    fresh.write_all(b"new!").await.unwrap();
    let mut fresh_buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), fresh.read_exact(&mut fresh_buf))
            .await
            .is_err()
    );

    proxy.clear();
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
        .await
        .expect("delivered once healed")
        .unwrap();
    assert_eq!(&buf, b"held");
    tokio::time::timeout(Duration::from_secs(2), fresh.read_exact(&mut fresh_buf))
        .await
        .expect("connected once healed")
        .unwrap();
    assert_eq!(&fresh_buf, b"new!");
}

#[tokio::test]
async fn bandwidth_paces_a_bulk_transfer_at_the_rate() {
    let (proxy, s) = proxied().await;
    proxy.apply(
        "thin",
        fault(
            Direction::To,
            NetworkEffect::Bandwidth(Bandwidth {
                bytes_per_s: 500_000.0,
                buffer: 10_000,
                limit: 50_000,
            }),
        ),
    );
    let (mut r, mut w) = s.into_split();
    let total = 250_000;
    let started = Instant::now();
    let send = tokio::spawn(async move {
        w.write_all(&vec![7u8; total]).await.unwrap();
        w
    });
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < total {
        got += r.read(&mut buf).await.unwrap();
    }
    let took = started.elapsed();
    let _w = send.await.unwrap();
    // (250 kB - the 10 kB bucket) at 500 kB/s is 0.48 s.
    assert!(took >= Duration::from_millis(440), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn connections_are_spread_over_every_upstream() {
    let proxy = Proxy::new().unwrap();
    let port = proxy.listen(PAYMENT).unwrap();
    let (a, b) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    proxy.route(PAYMENT, vec![a.local_addr().unwrap(), b.local_addr().unwrap()]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let within = Duration::from_secs(2);
    for upstream in [&a, &b] {
        for _ in 0..2 {
            tokio::time::timeout(within, upstream.accept())
                .await
                .expect("two each")
                .unwrap();
        }
    }
}

/// A server that answers every connection with its own name and closes.
async fn named(name: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(name).await;
        }
    });
    addr
}

#[tokio::test]
async fn connections_go_to_the_replicas_in_turn_passing_over_a_dead_one() {
    let proxy = Proxy::new().unwrap();
    let port = proxy.listen(PAYMENT).unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap() // closed when `l` drops: refuses connections
    };
    proxy.route(PAYMENT, vec![named(b"a").await, dead, named(b"b").await]);
    proxy.identify_senders(|| vec![(std::process::id(), Component::Load)]);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut name = [0u8; 1];
        s.read_exact(&mut name).await.unwrap();
        seen.push(name[0]);
    }
    // Turns a, dead→b, b, a, dead→b, b: nobody waits on the dead replica.
    assert_eq!(seen, b"abbabb");
}

#[tokio::test]
async fn a_link_s_own_port_names_its_sender_without_a_look_up() {
    let proxy = Proxy::new().unwrap();
    let order = Component::Service(Role::Order);
    let port = proxy.listen_from(PAYMENT, order).unwrap();
    proxy.route(PAYMENT, vec![echo().await]);
    // Nobody is listed: a looked-up sender would stay unknown.
    proxy.identify_senders(Vec::new);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    round_trip(&mut s).await;
    let traffic = proxy.traffic();
    assert!(
        traffic
            .iter()
            .any(|t| t.sender == Some(order) && t.receiver == Some(PAYMENT) && t.bytes == 4),
        "{traffic:?}"
    );
    // And a fault on that link acts on it, as on a looked-up one.
    let mut slow = fault(Direction::To, delay(40));
    slow.selector = vec![order];
    proxy.apply("slow", slow);
    assert!(round_trip(&mut s).await >= Duration::from_millis(40));
}
