//! An exact set of event timestamps, stored as arithmetic runs.
//!
//! De-duplication must remember every timestamp a series counted within the horizon. Telemetry is
//! sampled at a fixed interval, so those timestamps are mostly `first, first + step, ...`: a regular
//! series, however long, is one run of 16 bytes held inline. Irregular timestamps arriving in order
//! pair up into runs of two (8 bytes a timestamp, as a plain sorted list would need); a timestamp
//! never costs more than one run. The set is exact: membership never guesses.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// `count` timestamps `first, first + step, ..., first + (count - 1) * step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Run {
    first: i64,
    /// Milliseconds between members; meaningless while `count == 1`.
    step: u32,
    count: u32,
}

impl Run {
    fn single(ts: i64) -> Run {
        Run {
            first: ts,
            step: 0,
            count: 1,
        }
    }

    fn last(&self) -> i64 {
        self.first + (self.count as i64 - 1) * self.step as i64
    }

    fn contains(&self, ts: i64) -> bool {
        if ts < self.first || ts > self.last() {
            return false;
        }
        self.count == 1 || (ts - self.first) % self.step as i64 == 0
    }

    /// This run without its first `k` members.
    fn skip(&self, k: u32) -> Run {
        Run {
            first: self.first + k as i64 * self.step as i64,
            step: self.step,
            count: self.count - k,
        }
    }
}

/// Sorted, disjoint runs (each run's members all lie before the next run's first member).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampSet {
    runs: SmallVec<[Run; 1]>,
}

impl StampSet {
    pub fn contains(&self, ts: i64) -> bool {
        let p = self.runs.partition_point(|r| r.first <= ts);
        p > 0 && self.runs[p - 1].contains(ts)
    }

    /// Adds `ts`; false if it was already a member.
    #[inline]
    pub fn insert(&mut self, ts: i64) -> bool {
        // A regular series' next stamp extends the newest run, which the general path below finds
        // too, after a search and a division.
        if let Some(r) = self.runs.last_mut() {
            if r.count > 1 && r.count < u32::MAX && ts == r.last() + r.step as i64 {
                r.count += 1;
                return true;
            }
        }
        self.insert_anywhere(ts)
    }

    fn insert_anywhere(&mut self, ts: i64) -> bool {
        let p = self.runs.partition_point(|r| r.first <= ts);
        if p == 0 {
            self.runs.insert(0, Run::single(ts));
            return true;
        }
        let r = self.runs[p - 1];
        if r.contains(ts) {
            return false;
        }
        let last = r.last();
        if ts > last {
            // After the run and before the next one: extend the run when `ts` is its next member.
            let gap = ts - r.first;
            if r.count == 1 && gap <= u32::MAX as i64 {
                self.runs[p - 1] = Run {
                    first: r.first,
                    step: gap as u32,
                    count: 2,
                };
            } else if r.count > 1 && ts - last == r.step as i64 && r.count < u32::MAX {
                self.runs[p - 1].count += 1;
            } else {
                self.runs.insert(p, Run::single(ts));
            }
            return true;
        }
        // Inside the run's span but not a member: split it around `ts`.
        let before = ((ts - r.first) / r.step as i64) as u32 + 1;
        let head = Run { count: before, ..r };
        let tail = r.skip(before);
        self.runs[p - 1] = head;
        self.runs.insert(p, tail);
        self.runs.insert(p, Run::single(ts));
        true
    }

    /// Forgets every timestamp below `floor`.
    #[inline]
    pub fn forget_before(&mut self, floor: i64) {
        // Nothing to forget (and so nothing to shrink: only forgetting shortens the runs).
        if self.runs.first().is_none_or(|r| r.first >= floor) {
            return;
        }
        self.forget_some_before(floor);
    }

    fn forget_some_before(&mut self, floor: i64) {
        let gone = self.runs.partition_point(|r| r.last() < floor);
        if gone > 0 {
            self.runs.drain(..gone);
        }
        if let Some(r) = self.runs.first_mut() {
            if r.first < floor {
                // `r.count > 1` here: a single member below `floor` would have been dropped.
                let step = r.step as i64;
                let k = ((floor - r.first + step - 1) / step) as u32;
                *r = r.skip(k);
            }
        }
        if self.runs.spilled() && self.runs.len() * 4 < self.runs.capacity() {
            self.runs.shrink_to_fit();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Heap bytes (zero while one run is held inline).
    pub fn heap_bytes(&self) -> usize {
        crate::footprint::small_vec_bytes(&self.runs)
    }

    #[cfg(test)]
    fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_regular_series_is_one_inline_run() {
        let mut s = StampSet::default();
        for k in 0..600 {
            assert!(s.insert(1_000 + k * 1_000));
        }
        assert_eq!(s.runs(), 1);
        assert_eq!(s.heap_bytes(), 0);
        assert!(!s.insert(5_000), "a repeated timestamp is a duplicate");
        assert!(s.contains(600_000) && !s.contains(600_001) && !s.contains(601_000));
        s.forget_before(300_500);
        assert!(!s.contains(300_000) && s.contains(301_000));
        assert_eq!(s.runs(), 1);
    }

    #[test]
    fn a_timestamp_between_members_splits_the_run() {
        let mut s = StampSet::default();
        for t in [0, 10, 20, 30, 40] {
            s.insert(t);
        }
        assert!(s.insert(25));
        assert_eq!(s.runs(), 3);
        for t in [0, 10, 20, 25, 30, 40] {
            assert!(s.contains(t), "{t}");
        }
        assert!(!s.contains(35) && !s.contains(5));
    }

    fn stamps() -> impl Strategy<Value = Vec<(i64, bool)>> {
        // Mostly a regular grid with jitter, reordering and repeats, and stretches of it in order
        // (a run extended stamp by stamp); `true` moves the horizon.
        prop::collection::vec(
            prop_oneof![
                4 => (0i64..200).prop_map(|k| vec![(k * 1_000, false)]),
                2 => (0i64..200_000).prop_map(|t| vec![(t, false)]),
                2 => (0i64..200, 1i64..30)
                    .prop_map(|(k, n)| (k..k + n).map(|k| (k * 1_000, false)).collect()),
                1 => (0i64..200_000).prop_map(|t| vec![(t, true)]),
            ],
            1..120,
        )
        .prop_map(|ops| ops.concat())
    }

    proptest! {
        /// Inserts, membership and forgetting agree with a plain ordered set in every order.
        #[test]
        fn agrees_with_an_ordered_set(ops in stamps()) {
            let mut set = StampSet::default();
            let mut model = BTreeSet::new();
            let mut floor = i64::MIN;
            for (t, forget) in ops {
                if forget {
                    floor = floor.max(t);
                    set.forget_before(floor);
                    for x in model.range(..floor) {
                        prop_assert!(!set.contains(*x), "{} forgotten below {}", x, floor);
                    }
                    model.retain(|&x| x >= floor);
                } else if t >= floor {
                    prop_assert_eq!(set.contains(t), model.contains(&t));
                    prop_assert_eq!(set.insert(t), model.insert(t));
                }
                prop_assert_eq!(set.is_empty(), model.is_empty());
                for probe in [t - 1_000, t - 1, t, t + 1, t + 1_000] {
                    if probe >= floor {
                        prop_assert_eq!(set.contains(probe), model.contains(&probe));
                    }
                }
                // Never more runs than members: at worst one run per member.
                prop_assert!(set.runs() <= model.len());
            }
        }
    }
}
