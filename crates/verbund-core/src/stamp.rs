//! The stamps an owner gives out to one partner: the positions of its stream (its cursor)
//! and the order of the record states it receives (`RecordState.owner_seq`).
//!
//! They are not our change sequence numbers: a partner would read off them how often we
//! change anything, also records and fields it cannot see. A stamp is the wall clock in
//! microseconds, or one more than the last stamp if that is higher: it moves with time, not
//! with our changes, and is taken while the state it orders is read (under the partner's
//! lock), so a later stamp always goes with a state at least as new.
//!
//! Stamps stay strictly increasing across restarts and a clock set back: a stamp above the
//! stored reservation is given out only after a new reservation (a little ahead) is stored,
//! and a restarted clock begins above the reservation.

/// How far ahead a reservation reaches: at most one reservation write per this much time
/// per partner.
pub const RESERVE_AHEAD_US: i64 = 10_000_000;

/// One partner's stamp clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampClock {
    last: i64,
    reserved: i64,
}

impl StampClock {
    /// A clock after a (re)start: every stamp given out before is at or below `reserved`.
    pub fn resume(reserved: i64) -> Self {
        let reserved = reserved.max(0);
        StampClock {
            last: reserved,
            reserved,
        }
    }

    /// The next stamp at wall time `now_us`, and the reservation that must be stored before
    /// it is given out (None: the stored one covers it). Nothing changes until `take`.
    pub fn next(&self, now_us: i64) -> (i64, Option<i64>) {
        let stamp = self.last.saturating_add(1).max(now_us);
        let reserve = (stamp > self.reserved).then(|| stamp.saturating_add(RESERVE_AHEAD_US));
        (stamp, reserve)
    }

    /// Gives out `stamp` (from `next`), with its reservation stored.
    pub fn take(&mut self, stamp: i64, reserved: Option<i64>) {
        self.last = self.last.max(stamp);
        if let Some(r) = reserved {
            self.reserved = self.reserved.max(r);
        }
    }

    /// Every stamp given out so far, and every one a partner may hold from before a restart,
    /// is at or below this.
    pub fn reserved(&self) -> i64 {
        self.reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_stamp_follows_the_wall_clock_and_reserves_ahead() {
        let mut c = StampClock::resume(0);
        let (s, r) = c.next(1_000);
        assert_eq!((s, r), (1_000, Some(1_000 + RESERVE_AHEAD_US)));
        c.take(s, r);
        // Within the reservation: nothing to store.
        assert_eq!(c.next(2_000), (2_000, None));
        // The clock stands still: one more than the last.
        c.take(2_000, None);
        assert_eq!(c.next(2_000), (2_001, None));
    }

    proptest! {
        /// Whatever the wall clock does (jumps back, stands still) and wherever a restart
        /// falls, stamps strictly increase, and each is covered by a reservation that was
        /// stored before it was given out.
        #[test]
        fn stamps_strictly_increase_across_restarts_and_clock_steps(
            steps in proptest::collection::vec((0i64..5_000_000_000, any::<bool>()), 1..200)
        ) {
            let mut stored = 0i64;
            let mut clock = StampClock::resume(stored);
            let mut last = 0i64;
            for (now_us, restart) in steps {
                if restart {
                    clock = StampClock::resume(stored);
                }
                let (stamp, reserve) = clock.next(now_us);
                if let Some(r) = reserve {
                    stored = stored.max(r);
                }
                prop_assert!(stamp > last, "{stamp} after {last}");
                prop_assert!(stamp <= stored, "{stamp} beyond the stored {stored}");
                clock.take(stamp, reserve);
                last = stamp;
            }
        }
    }
}
