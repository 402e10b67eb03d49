//! Hybrid logical clock (Kulkarni et al.): physical milliseconds, a logical counter and the
//! node id as the final tie-break, so every version in the federation is totally ordered.
//! Pure: the caller passes the wall-clock reading in, which keeps this testable.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// One timestamp. Ordering is (physical_ms, counter, node): the node id breaks ties
/// deterministically, so two nodes never disagree about which of two versions is newer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hlc {
    pub physical_ms: u64,
    pub counter: u32,
    pub node: String,
}

impl Ord for Hlc {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.physical_ms, self.counter, &self.node).cmp(&(
            other.physical_ms,
            other.counter,
            &other.node,
        ))
    }
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hlc {
    pub fn new(physical_ms: u64, counter: u32, node: impl Into<String>) -> Self {
        Hlc {
            physical_ms,
            counter,
            node: node.into(),
        }
    }

    /// Appends the text form (see `Display`) to `out` without the formatting machinery:
    /// a partner writes one per field of every record it takes in.
    pub fn push_text(&self, out: &mut String) {
        push_hex(out, self.physical_ms, 16);
        out.push('.');
        push_hex(out, u64::from(self.counter), 8);
        out.push('.');
        out.push_str(&self.node);
    }
}

/// `value` as `digits` lowercase hex digits (the low ones, zero-padded).
fn push_hex(out: &mut String, value: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((value >> (i * 4)) & 0xf) as usize]));
    }
}

/// Text form `<ms:016x>.<counter:08x>.<node>`: fixed-width hex so that the text order of two
/// versions from the same node equals their clock order (handy in SQL and logs).
impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:016x}.{:08x}.{}",
            self.physical_ms, self.counter, self.node
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed hybrid logical clock value {0:?}")]
pub struct ParseHlcError(pub String);

impl FromStr for Hlc {
    type Err = ParseHlcError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseHlcError(s.to_string());
        let mut parts = s.splitn(3, '.');
        let ms = parts.next().ok_or_else(err)?;
        let counter = parts.next().ok_or_else(err)?;
        let node = parts.next().ok_or_else(err)?;
        if ms.len() != 16 || counter.len() != 8 || node.is_empty() {
            return Err(err());
        }
        Ok(Hlc {
            physical_ms: u64::from_str_radix(ms, 16).map_err(|_| err())?,
            counter: u32::from_str_radix(counter, 16).map_err(|_| err())?,
            node: node.to_string(),
        })
    }
}

/// A remote timestamp lies further in the future than the configured skew bound allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {remote} is {ahead_ms} ms ahead of the local clock (bound {max_skew_ms} ms)")]
pub struct ClockSkewError {
    pub remote: Hlc,
    pub ahead_ms: u64,
    pub max_skew_ms: u64,
}

/// The clock state of one node.
#[derive(Debug, Clone)]
pub struct HlcClock {
    node: String,
    last_ms: u64,
    last_counter: u32,
    max_skew_ms: u64,
}

impl HlcClock {
    pub fn new(node: impl Into<String>, max_skew_ms: u64) -> Self {
        HlcClock {
            node: node.into(),
            last_ms: 0,
            last_counter: 0,
            max_skew_ms,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The last timestamp handed out (or observed).
    pub fn last(&self) -> Hlc {
        Hlc::new(self.last_ms, self.last_counter, self.node.clone())
    }

    /// Timestamp for a local event; strictly greater than every timestamp this clock has
    /// produced or observed, even if the wall clock goes backwards.
    pub fn tick(&mut self, wall_ms: u64) -> Hlc {
        if wall_ms > self.last_ms {
            self.last_ms = wall_ms;
            self.last_counter = 0;
        } else {
            self.bump_counter();
        }
        self.last()
    }

    /// Merge a timestamp received from another node (or recovered from storage at start) and
    /// return a new local timestamp greater than both. Refuses timestamps too far ahead of our
    /// wall clock: accepting them would drag every later local version into the future.
    pub fn receive(&mut self, remote: &Hlc, wall_ms: u64) -> Result<Hlc, ClockSkewError> {
        if remote.physical_ms > wall_ms.saturating_add(self.max_skew_ms) {
            return Err(ClockSkewError {
                remote: remote.clone(),
                ahead_ms: remote.physical_ms - wall_ms,
                max_skew_ms: self.max_skew_ms,
            });
        }
        let max_ms = wall_ms.max(self.last_ms).max(remote.physical_ms);
        if max_ms == self.last_ms && max_ms == remote.physical_ms {
            self.last_counter = self.last_counter.max(remote.counter);
            self.bump_counter();
        } else if max_ms == self.last_ms {
            self.bump_counter();
        } else if max_ms == remote.physical_ms {
            self.last_ms = max_ms;
            self.last_counter = remote.counter;
            self.bump_counter();
        } else {
            self.last_ms = max_ms;
            self.last_counter = 0;
        }
        Ok(self.last())
    }

    /// Timestamp for a local write that must supersede `floor` (e.g. the current version of a
    /// field being overwritten), even if that version came from a node whose clock runs ahead.
    pub fn tick_after(&mut self, floor: Option<&Hlc>, wall_ms: u64) -> Hlc {
        if let Some(f) = floor {
            self.restore(f);
        }
        self.tick(wall_ms)
    }

    /// Restore state after a restart from the greatest version this node ever wrote, without
    /// the skew check (our own history is trusted).
    pub fn restore(&mut self, persisted: &Hlc) {
        if (persisted.physical_ms, persisted.counter) > (self.last_ms, self.last_counter) {
            self.last_ms = persisted.physical_ms;
            self.last_counter = persisted.counter;
        }
    }

    fn bump_counter(&mut self) {
        // A counter overflow (4 billion events in one millisecond) borrows the next millisecond
        // rather than wrapping, which would break monotonicity.
        match self.last_counter.checked_add(1) {
            Some(c) => self.last_counter = c,
            None => {
                self.last_ms += 1;
                self.last_counter = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_text_form_is_pushed_as_display_writes_it() {
        for h in [
            Hlc::new(0, 0, "a"),
            Hlc::new(1_764_000_000_123, 7, "acme/node1"),
            Hlc::new(u64::MAX, u32::MAX, "x"),
        ] {
            let mut pushed = String::from(">");
            h.push_text(&mut pushed);
            assert_eq!(pushed, format!(">{h}"));
            assert_eq!(pushed[1..].parse::<Hlc>().ok(), Some(h));
        }
    }

    #[test]
    fn text_round_trip_and_order() {
        let a = Hlc::new(1_700_000_000_000, 3, "acme/n1");
        let s = a.to_string();
        assert_eq!(s.parse::<Hlc>().unwrap(), a);
        let b = Hlc::new(1_700_000_000_000, 4, "acme/n1");
        assert!(a < b && a.to_string() < b.to_string());
        assert!("garbage".parse::<Hlc>().is_err());
        assert!("0000.0000.x".parse::<Hlc>().is_err());
    }

    #[test]
    fn node_breaks_ties() {
        let a = Hlc::new(5, 0, "a");
        let b = Hlc::new(5, 0, "b");
        assert!(a < b);
    }

    #[test]
    fn skew_bound_rejects_future() {
        let mut c = HlcClock::new("n", 1_000);
        let far = Hlc::new(10_000, 0, "m");
        let err = c.receive(&far, 5_000).unwrap_err();
        assert_eq!(err.ahead_ms, 5_000);
        // Within the bound it is accepted and the clock moves past it.
        let near = Hlc::new(5_500, 7, "m");
        let t = c.receive(&near, 5_000).unwrap();
        assert!(t > near);
        assert!(c.tick(5_000) > t);
    }

    #[test]
    fn tick_after_supersedes_the_floor() {
        let mut c = HlcClock::new("a", 1_000);
        let ahead = Hlc::new(9_000, 4, "b");
        let t = c.tick_after(Some(&ahead), 5_000);
        assert!(t > ahead);
        assert!(c.tick_after(None, 5_000) > t);
    }

    #[test]
    fn counter_overflow_borrows_a_millisecond() {
        let mut c = HlcClock::new("n", 0);
        c.restore(&Hlc::new(10, u32::MAX, "n"));
        let t = c.tick(10);
        assert_eq!((t.physical_ms, t.counter), (11, 0));
    }

    proptest! {
        #[test]
        fn tick_is_strictly_monotonic(walls in proptest::collection::vec(0u64..1_000, 1..200)) {
            let mut c = HlcClock::new("n", 10_000);
            let mut prev: Option<Hlc> = None;
            for w in walls {
                let t = c.tick(w);
                if let Some(p) = &prev { prop_assert!(&t > p); }
                prop_assert!(t.physical_ms >= w);
                prev = Some(t);
            }
        }

        #[test]
        fn receive_exceeds_both(events in proptest::collection::vec((any::<bool>(), 0u64..1_000, 0u64..1_200, 0u32..5), 1..200)) {
            let mut c = HlcClock::new("n", 500);
            let mut prev = c.last();
            for (is_remote, wall, rms, rc) in events {
                let t = if is_remote {
                    let remote = Hlc::new(rms, rc, "m");
                    match c.receive(&remote, wall) {
                        Ok(t) => { prop_assert!(t > remote); t }
                        Err(_) => { prop_assert!(rms > wall + 500); prop_assert_eq!(c.last(), prev.clone()); continue; }
                    }
                } else {
                    c.tick(wall)
                };
                prop_assert!(t > prev);
                prev = t;
            }
        }

        #[test]
        fn text_order_matches_clock_order(a in 0u64..u64::MAX/2, ac in any::<u32>(), b in 0u64..u64::MAX/2, bc in any::<u32>()) {
            let x = Hlc::new(a, ac, "n");
            let y = Hlc::new(b, bc, "n");
            prop_assert_eq!(x.cmp(&y), x.to_string().cmp(&y.to_string()));
        }
    }
}
