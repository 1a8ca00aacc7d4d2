//! Readiness: what `/readyz` and the `trainspotter_ready` gauge report.
//!
//! Ready means the daemon is doing its job right now: its partitions are assigned and restored, a
//! broker is reachable, the consumer is a member of its group, and the consumer loop keeps coming
//! round (it beats at least once a second when healthy, also when idle). Each condition is set by
//! the part of the daemon that observes it; `check` names the first one that fails. Stalls (a loop
//! stuck retrying deliveries, a consumer that fell out of its group after exceeding
//! `max.poll.interval.ms`) are the most common failure of Kafka consumers, so they are explicit.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

use crate::decode::now_ms;

#[derive(Debug)]
pub struct Health {
    assigned: AtomicBool,
    broker_reachable: AtomicBool,
    /// Why the consumer is out of its group, until it is assigned partitions again.
    left_group: Mutex<Option<String>>,
    heartbeat_ms: AtomicI64,
    stall_after_ms: i64,
}

impl Health {
    pub fn new(stall_after_ms: i64) -> Health {
        Health {
            assigned: AtomicBool::new(false),
            broker_reachable: AtomicBool::new(true),
            left_group: Mutex::new(None),
            heartbeat_ms: AtomicI64::new(now_ms()),
            stall_after_ms,
        }
    }

    /// Partitions are assigned and restored (false while a rebalance restores state).
    pub fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Relaxed);
        if assigned {
            *self.left_group.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    pub fn is_assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }

    /// Whether any broker connection is up (from the client's statistics and error callbacks).
    pub fn set_broker_reachable(&self, up: bool) {
        self.broker_reachable.store(up, Ordering::Relaxed);
    }

    /// The consumer lost its group membership (session timeout, `max.poll.interval.ms` exceeded);
    /// cleared by the next assignment.
    pub fn set_left_group(&self, why: impl Into<String>) {
        *self.left_group.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.into());
    }

    /// The consumer loop is alive.
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), String> {
        if let Some(why) = &*self.left_group.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(format!("the consumer left its group: {why}"));
        }
        if !self.broker_reachable.load(Ordering::Relaxed) {
            return Err("no broker is reachable".into());
        }
        if !self.is_assigned() {
            return Err("partitions not assigned yet, or being restored".into());
        }
        let silent = now_ms() - self.heartbeat_ms.load(Ordering::Relaxed);
        if silent > self.stall_after_ms {
            return Err(format!("consumption stalled for {} s", silent / 1000));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_condition_makes_the_daemon_not_ready_and_names_itself() {
        let h = Health::new(60_000);
        assert!(h.check().unwrap_err().contains("not assigned"));
        h.set_assigned(true);
        assert_eq!(h.check(), Ok(()));
        h.set_broker_reachable(false);
        assert!(h.check().unwrap_err().contains("no broker"));
        h.set_broker_reachable(true);
        h.set_left_group("max.poll.interval.ms exceeded");
        assert!(h.check().unwrap_err().contains("max.poll.interval.ms"));
        h.set_assigned(true);
        assert_eq!(
            h.check(),
            Ok(()),
            "a new assignment means the consumer is back"
        );
        let stalled = Health::new(-1);
        stalled.set_assigned(true);
        assert!(stalled.check().unwrap_err().contains("stalled"));
    }
}
