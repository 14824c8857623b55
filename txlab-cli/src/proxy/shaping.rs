//! How one network fault changes one chunk of bytes: when it may be
//! written on (delay, jitter, a lost segment's retransmission, the
//! bandwidth's queue), or that nothing passes (a partition).
//!
//! A TCP proxy sees a byte stream, not packets, so each fault is mapped
//! to what the stream's reader would see:
//! - delay: each chunk waits `latency ± jitter`; chunks never overtake
//!   each other (TCP delivers in order, so netem's reordering by jitter
//!   shows up as the later chunk waiting for the earlier).
//! - loss: a lost segment is retransmitted by TCP after its timeout, so a
//!   "lost" chunk is held for Linux's minimum retransmission timeout
//!   (200 ms); connections are not reset.
//! - bandwidth: a token bucket of `buffer` bytes filling at `rate`; when
//!   more than `limit` bytes wait behind it the proxy stops reading, and
//!   TCP's flow control pushes back on the sender (tc would drop them, and
//!   the sender would retransmit: the same slow-down, without the loss).
//! - partition: the stream stops — nothing is read or written, new
//!   connections are accepted but not connected on — until it is lifted,
//!   as when every packet is dropped; callers see their own timeouts.
//! - duplicate: TCP's receiver drops duplicated segments, so it changes
//!   nothing a stream can see; the proxy says so when it is applied.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::chaos::fault::{Bandwidth, Chance, Delay, NetworkEffect, NetworkFault};

/// Linux's minimum TCP retransmission timeout: what a lost segment costs.
pub const RETRANSMISSION_TIMEOUT: Duration = Duration::from_millis(200);

/// A network fault switched on, with the state its randomness and its
/// token bucket keep between chunks (shared by every stream it matches,
/// as a qdisc on an interface is).
pub struct ActiveRule {
    pub name: String,
    pub fault: NetworkFault,
    state: Mutex<RuleState>,
}

struct RuleState {
    rng: SmallRng,
    /// The previous draws, for correlation.
    last_jitter: f64,
    last_loss: f64,
    /// Tokens in the bucket at `refilled` (negative: bytes owed).
    tokens: f64,
    refilled: Instant,
}

/// What a chunk must wait for.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Hold {
    /// Write the chunk on no earlier than this.
    pub until: Option<Instant>,
    /// Read nothing more before this (the bandwidth queue is full).
    pub read_after: Option<Instant>,
}

impl ActiveRule {
    pub fn new(name: String, fault: NetworkFault) -> ActiveRule {
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let buffer = match fault.effect {
            NetworkEffect::Bandwidth(b) => b.buffer as f64,
            _ => 0.0,
        };
        ActiveRule {
            name,
            fault,
            state: Mutex::new(RuleState {
                rng: SmallRng::seed_from_u64(seed),
                last_jitter: 0.5,
                last_loss: 0.5,
                tokens: buffer,
                refilled: Instant::now(),
            }),
        }
    }

    pub fn is_partition(&self) -> bool {
        self.fault.effect == NetworkEffect::Partition
    }

    /// The wait this rule puts on `bytes` bytes arriving at `now`, given
    /// the time `at` other rules already hold them until.
    pub fn hold(&self, bytes: usize, now: Instant, at: Instant) -> Hold {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &self.fault.effect {
            NetworkEffect::Shape { delay, loss, .. } => {
                let mut wait = Duration::ZERO;
                if let Some(d) = delay {
                    wait += s.delay(d);
                }
                if loss.is_some_and(|l| s.lost(&l)) {
                    wait += RETRANSMISSION_TIMEOUT;
                }
                Hold {
                    until: Some(at + wait),
                    read_after: None,
                }
            }
            NetworkEffect::Bandwidth(b) => s.bandwidth(b, bytes, now, at),
            NetworkEffect::Partition => Hold::default(),
        }
    }
}

impl RuleState {
    /// netem's correlated draw: the new value leans on the previous one.
    fn correlated(&mut self, last: f64, correlation: f64) -> f64 {
        let fresh: f64 = self.rng.gen();
        fresh * (1.0 - correlation) + last * correlation
    }

    fn delay(&mut self, d: &Delay) -> Duration {
        let u = self.correlated(self.last_jitter, d.correlation);
        self.last_jitter = u;
        let jitter = d.jitter.as_secs_f64() * (2.0 * u - 1.0);
        Duration::from_secs_f64((d.latency.as_secs_f64() + jitter).max(0.0))
    }

    fn lost(&mut self, l: &Chance) -> bool {
        let u = self.correlated(self.last_loss, l.correlation);
        self.last_loss = u;
        u < l.probability
    }

    fn bandwidth(&mut self, b: &Bandwidth, bytes: usize, now: Instant, at: Instant) -> Hold {
        let start = at.max(now);
        let elapsed = start.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * b.bytes_per_s).min(b.buffer as f64);
        self.refilled = start;
        self.tokens -= bytes as f64;
        let owed = (-self.tokens).max(0.0);
        let until = start + Duration::from_secs_f64(owed / b.bytes_per_s);
        // Past `limit` queued bytes, stop reading until the queue is back under it.
        let over = owed - b.limit as f64;
        Hold {
            until: Some(until),
            read_after: (over > 0.0).then(|| start + Duration::from_secs_f64(over / b.bytes_per_s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::fault::{Component, Direction, Pick};

    fn rule(effect: NetworkEffect) -> ActiveRule {
        ActiveRule::new(
            "t".into(),
            NetworkFault {
                selector: vec![Component::Load],
                pick: Pick::All,
                direction: Direction::To,
                target: vec![],
                effect,
            },
        )
    }

    #[test]
    fn jitter_spreads_delays_around_the_latency_within_its_bounds() {
        let r = rule(NetworkEffect::Shape {
            delay: Some(Delay {
                latency: Duration::from_millis(50),
                jitter: Duration::from_millis(10),
                correlation: 0.0,
            }),
            loss: None,
            duplicate: None,
        });
        let now = Instant::now();
        let waits: Vec<f64> = (0..2000)
            .map(|_| (r.hold(100, now, now).until.unwrap() - now).as_secs_f64() * 1e3)
            .collect();
        let mean = waits.iter().sum::<f64>() / waits.len() as f64;
        assert!(
            waits.iter().all(|w| (40.0..=60.0).contains(w)),
            "within 50 ± 10 ms"
        );
        assert!((mean - 50.0).abs() < 1.0, "centred on the latency: {mean}");
        assert!(
            waits.iter().any(|w| *w < 43.0) && waits.iter().any(|w| *w > 57.0),
            "spread"
        );
    }

    #[test]
    fn loss_holds_about_its_share_of_chunks_for_a_retransmission() {
        let r = rule(NetworkEffect::Shape {
            delay: None,
            loss: Some(Chance {
                probability: 0.1,
                correlation: 0.0,
            }),
            duplicate: None,
        });
        let now = Instant::now();
        let held = (0..5000)
            .filter(|_| r.hold(100, now, now).until.unwrap() - now == RETRANSMISSION_TIMEOUT)
            .count();
        assert!((400..600).contains(&held), "about 10% of 5000: {held}");
    }

    #[test]
    fn bandwidth_lets_the_buffer_through_then_paces_at_the_rate() {
        let r = rule(NetworkEffect::Bandwidth(Bandwidth {
            bytes_per_s: 1000.0,
            buffer: 500,
            limit: 1000,
        }));
        let now = Instant::now();
        let first = r.hold(500, now, now);
        assert_eq!(first.until, Some(now), "a full bucket passes at once");
        let second = r.hold(250, now, now);
        assert_eq!(second.until, Some(now + Duration::from_millis(250)));
        assert_eq!(second.read_after, None);
        // 2000 more bytes owed: 1250 over the limit, 2.25 s of sending.
        let third = r.hold(2000, now, now);
        assert_eq!(third.until, Some(now + Duration::from_millis(2250)));
        assert_eq!(third.read_after, Some(now + Duration::from_millis(1250)));
    }
}
