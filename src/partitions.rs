//! Partitioned state: the pipeline's per-partition engines together with the offsets they cover,
//! and their checkpoints.
//!
//! A partition's engine holds exactly the messages before its `next` offset. On assignment the
//! engine is restored from the partition's newest good checkpoint and consumption resumes at the
//! checkpoint's offset; without a checkpoint the partition is read from its beginning, so the state
//! is rebuilt rather than started empty. On revocation (and periodically, and at shutdown) the
//! engine is checkpointed first; only the offsets a durable checkpoint covers are ever committed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::checkpoint::{self, Header, Loaded};
use crate::config::Config;
use crate::engine::Engine;
use crate::pipeline::{Pipeline, Shard};

/// Where consumption of an assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The offset the restored checkpoint covers up to.
    Offset(i64),
    /// The beginning of the partition: there was no usable checkpoint, so the state is rebuilt.
    Beginning,
}

#[derive(Debug, Clone, Copy)]
struct Offsets {
    /// The assignment generation at which this partition was (last) assigned.
    assigned_at: u64,
    /// The next offset to process: all messages before it are in the engine.
    next: Option<i64>,
    /// `next` at the last durable checkpoint.
    checkpointed: Option<i64>,
}

/// The pipeline and the offsets of the partitions this instance owns.
///
/// Every assignment and revocation bumps the generation. A message received at generation `g` may
/// only be applied if its partition is still owned and was assigned at or before `g`: a message
/// fetched before its partition was revoked (and perhaps assigned again and restored from a
/// checkpoint) belongs to state that no longer exists, and is fetched again from the right offset.
pub struct Partitions {
    pub pipeline: Pipeline,
    offsets: HashMap<Shard, Offsets>,
    generation: Arc<AtomicU64>,
    dir: PathBuf,
    cfg: Config,
}

impl Partitions {
    pub fn new(cfg: &Config, pipeline: Pipeline) -> Partitions {
        Partitions {
            pipeline,
            offsets: HashMap::new(),
            generation: Arc::new(AtomicU64::new(0)),
            dir: PathBuf::from(&cfg.state.dir),
            cfg: cfg.clone(),
        }
    }

    /// The assignment generation, readable without the lock (the consumer loop notes it for every
    /// message it receives).
    pub fn generation(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }

    /// Whether a message of `shard` received at generation `received_at` may be applied.
    pub fn accepts(&self, shard: &Shard, received_at: u64) -> bool {
        self.offsets
            .get(shard)
            .is_some_and(|o| o.assigned_at <= received_at)
    }

    /// Takes a partition on: restores its engine and says where to start consuming.
    pub fn assign(&mut self, shard: &Shard) -> StartAt {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let loaded = checkpoint::load(&self.dir, &shard.topic, shard.partition);
        let (engine, start) = match loaded {
            Ok(Loaded::Current(cp)) => self.restore(shard, cp),
            Ok(Loaded::Previous(cp, why)) => {
                if let Some(e) = why {
                    error!(error = %e, "newest checkpoint unusable; using the previous one");
                }
                self.restore(shard, cp)
            }
            Ok(Loaded::None) => {
                info!(topic = %shard.topic, partition = shard.partition, "no checkpoint: reading the partition from its beginning");
                (self.pipeline.new_engine(), StartAt::Beginning)
            }
            Err(e) => {
                error!(error = %e, topic = %shard.topic, partition = shard.partition,
                       "no usable checkpoint: rebuilding the state from the beginning of the partition");
                (self.pipeline.new_engine(), StartAt::Beginning)
            }
        };
        let at = match start {
            StartAt::Offset(o) => Some(o),
            StartAt::Beginning => None,
        };
        self.pipeline.insert_shard(shard.clone(), engine);
        self.offsets.insert(
            shard.clone(),
            Offsets {
                assigned_at: generation,
                next: at,
                checkpointed: at,
            },
        );
        start
    }

    fn restore(&self, shard: &Shard, cp: checkpoint::Checkpoint) -> (Engine, StartAt) {
        let fresh = self.pipeline.new_engine();
        if cp.header.shape != fresh.shape() {
            warn!(topic = %shard.topic, partition = shard.partition, was = %cp.header.shape, now = %fresh.shape(),
                  "checkpoint taken under other window settings: rebuilding from the beginning of the partition");
            return (fresh, StartAt::Beginning);
        }
        match Engine::with_state(&self.cfg, cp.state) {
            Ok(engine) => {
                info!(topic = %shard.topic, partition = shard.partition, offset = cp.header.next_offset, "state restored");
                (engine, StartAt::Offset(cp.header.next_offset))
            }
            Err(e) => {
                error!(error = %e, "cannot restore state: rebuilding from the beginning of the partition");
                (fresh, StartAt::Beginning)
            }
        }
    }

    /// Records that every message of `shard` before `next` is processed and acknowledged. A
    /// partition no longer owned is ignored: its next owner starts from its checkpoint.
    pub fn processed(&mut self, shard: &Shard, next: i64) {
        if let Some(o) = self.offsets.get_mut(shard) {
            o.next = Some(next);
        }
    }

    /// Checkpoints every partition that moved since its last checkpoint; returns the offsets now
    /// covered by durable checkpoints (to commit). A partition whose write failed is left out.
    pub fn checkpoint(&mut self, now_ms: i64) -> Vec<(Shard, i64)> {
        let shards: Vec<Shard> = self.offsets.keys().cloned().collect();
        shards
            .into_iter()
            .filter_map(|s| self.checkpoint_one(&s, now_ms).map(|o| (s, o)))
            .collect()
    }

    /// Checkpoints one partition if it moved; returns the offset a durable checkpoint now covers,
    /// or `None` if there is nothing new to commit or the write failed.
    fn checkpoint_one(&mut self, shard: &Shard, now_ms: i64) -> Option<i64> {
        let o = self.offsets.get_mut(shard)?;
        let next = o.next?;
        if o.checkpointed == Some(next) {
            return None;
        }
        let engine = self.pipeline.shard(shard)?;
        let header = Header {
            topic: shard.topic.to_string(),
            partition: shard.partition,
            next_offset: next,
            shape: engine.shape(),
            written_at_ms: now_ms,
        };
        match checkpoint::write(&self.dir, &header, engine.state()) {
            Ok(_) => {
                o.checkpointed = Some(next);
                Some(next)
            }
            Err(e) => {
                error!(error = %e, "checkpoint failed; offsets stay uncommitted");
                None
            }
        }
    }

    /// Gives a partition up: checkpoints it and drops its state. Returns the offset to commit: the
    /// one its newest durable checkpoint covers, if that covers everything processed.
    pub fn revoke(&mut self, shard: &Shard, now_ms: i64) -> Option<i64> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.checkpoint_one(shard, now_ms);
        self.pipeline.remove_shard(shard);
        let o = self.offsets.remove(shard)?;
        if o.checkpointed == o.next {
            o.checkpointed
        } else {
            None
        }
    }

    /// Every owned partition with its checkpointed offset.
    pub fn owned(&self) -> impl Iterator<Item = (&Shard, Option<i64>)> {
        self.offsets.iter().map(|(s, o)| (s, o.checkpointed))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::decode::{DecodeLimits, UsageSample};
    use crate::metrics::Metrics;

    fn partitions(dir: &std::path::Path) -> Partitions {
        let mut cfg = Config::default();
        cfg.state.dir = dir.to_string_lossy().into_owned();
        let pipeline = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
        Partitions::new(&cfg, pipeline)
    }

    fn feed(p: &mut Partitions, shard: &Shard, minutes: std::ops::Range<i64>) {
        let payloads: Vec<String> = minutes
            .map(|m| UsageSample::new(1_714_521_600_000 + m * 60_000, "t", 8.0, 60.0).to_json())
            .collect();
        let rejected = p.pipeline.process(
            shard,
            payloads.iter().map(|s| Some(s.as_bytes())),
            DecodeLimits::OPEN,
        );
        assert!(rejected.is_empty());
    }

    #[test]
    fn reassignment_restores_the_checkpoint_and_refuses_messages_fetched_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::new("gpu-usage", 0);
        let mut p = partitions(dir.path());
        assert_eq!(
            p.assign(&shard),
            StartAt::Beginning,
            "no checkpoint: read from the beginning"
        );
        let fetched_at = p.generation().load(Ordering::SeqCst);
        assert!(p.accepts(&shard, fetched_at));
        feed(&mut p, &shard, 0..10);
        p.processed(&shard, 10);
        assert_eq!(p.checkpoint(0), vec![(shard.clone(), 10)]);
        assert!(
            p.checkpoint(0).is_empty(),
            "nothing moved, nothing to write"
        );

        // Revoked and assigned again: the state comes back from the checkpoint, and a message
        // fetched under the old assignment is refused (it will be fetched again from offset 10).
        assert_eq!(p.revoke(&shard, 0), Some(10));
        assert!(!p.accepts(&shard, fetched_at), "not owned");
        assert_eq!(p.assign(&shard), StartAt::Offset(10));
        assert!(
            !p.accepts(&shard, fetched_at),
            "fetched before the re-assignment"
        );
        assert!(p.accepts(&shard, p.generation().load(Ordering::SeqCst)));
        let restored = p.pipeline.shard(&shard).unwrap();
        assert_eq!(
            restored.tenant_reports()[0].accelerator_seconds,
            10.0 * 8.0 * 60.0
        );

        // Processing reported for a partition no longer owned is ignored.
        p.revoke(&shard, 0);
        p.processed(&shard, 99);
        assert!(p.checkpoint(0).is_empty());
    }
}
