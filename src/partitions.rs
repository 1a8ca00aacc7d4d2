//! Partitioned state: the pipeline's per-partition engines together with the offsets they cover,
//! and their checkpoints.
//!
//! A partition's engine holds exactly the messages before its `next` offset. On assignment the
//! engine is restored from the newest good snapshot of the partition, the local checkpoint file or
//! the changelog topic (when configured), whichever covers more of the partition, and consumption
//! resumes at that snapshot's offset. Without any snapshot the partition is read from its
//! beginning, so the state is rebuilt rather than started empty. On revocation (and periodically,
//! and at shutdown) the engine is checkpointed first, to the local directory and to the changelog;
//! only the offsets that durable checkpoints cover are ever committed.
//!
//! Any snapshot at offset N is the state of the partition's first N messages, whichever instance
//! wrote it, so choosing the one with the highest offset is always right.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tracing::{error, info, warn};

use crate::changelog::SnapshotStore;
use crate::checkpoint::{self, Checkpoint, Header, Loaded};
use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::Store;
use crate::pipeline::{Pipeline, Shard};

/// Where consumption of an assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The offset the restored checkpoint covers up to.
    Offset(i64),
    /// The beginning of the partition: there was no usable checkpoint, so the state is rebuilt.
    Beginning,
}

/// Where an assigned partition's state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Checkpoint,
    PreviousCheckpoint,
    Changelog,
    Beginning,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Checkpoint => "checkpoint",
            Source::PreviousCheckpoint => "previous_checkpoint",
            Source::Changelog => "changelog",
            Source::Beginning => "beginning",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Offsets {
    /// The assignment generation at which this partition was (last) assigned.
    assigned_at: u64,
    /// The next offset to process: all messages before it are in the engine.
    next: Option<i64>,
    /// `next` at the last durable checkpoint.
    checkpointed: Option<i64>,
    source: Source,
}

/// One owned partition, as `GET /api/v1/partitions` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// Every message before this offset is in the state (`null`: nothing yet, read from the start).
    pub next_offset: Option<i64>,
    /// The offset the newest durable checkpoint covers (what the group may commit).
    pub checkpointed_offset: Option<i64>,
    pub restored_from: Source,
    /// Tenants and jobs in this partition's state.
    pub tenants: usize,
    pub jobs: usize,
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
    changelog: Option<Box<dyn SnapshotStore>>,
    cfg: Config,
}

impl Partitions {
    pub fn new(cfg: &Config, pipeline: Pipeline) -> Partitions {
        Partitions {
            pipeline,
            offsets: HashMap::new(),
            generation: Arc::new(AtomicU64::new(0)),
            dir: PathBuf::from(&cfg.state.dir),
            changelog: None,
            cfg: cfg.clone(),
        }
    }

    /// Also keeps every checkpoint in `store`, and restores from it when it is newer.
    pub fn with_changelog(mut self, store: Box<dyn SnapshotStore>) -> Partitions {
        self.changelog = Some(store);
        self
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
        let local = match checkpoint::load(&self.dir, &shard.topic, shard.partition) {
            Ok(Loaded::Current(cp)) => Some((cp, Source::Checkpoint)),
            Ok(Loaded::Previous(cp, why)) => {
                if let Some(e) = why {
                    error!(error = %e, "newest checkpoint unusable; using the previous one");
                }
                Some((cp, Source::PreviousCheckpoint))
            }
            Ok(Loaded::None) => None,
            Err(e) => {
                error!(error = %e, topic = %shard.topic, partition = shard.partition,
                       "no usable local checkpoint");
                None
            }
        };
        let remote = self.changelog.as_mut().and_then(|c| match c.load(shard) {
            Ok(Some(bytes)) => {
                match checkpoint::decode(std::path::Path::new("changelog"), &bytes) {
                    Ok(cp) => Some((cp, Source::Changelog)),
                    Err(e) => {
                        error!(error = %e, topic = %shard.topic, partition = shard.partition, "changelog snapshot unusable");
                        None
                    }
                }
            }
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, topic = %shard.topic, partition = shard.partition,
                      "cannot read the changelog; restoring from local state only");
                None
            }
        });
        // Both are states of a prefix of the partition: the longer prefix saves re-reading.
        let candidates = [local, remote].into_iter().flatten().filter(|(cp, _)| {
            cp.header.topic == *shard.topic && cp.header.partition == shard.partition
        });
        let best = candidates
            .max_by_key(|(cp, source)| (cp.header.next_offset, *source != Source::Changelog));
        let (engine, start, source) = match best
            .map(|(cp, source)| (self.restore(shard, cp), source))
        {
            Some(((engine, StartAt::Offset(o)), source)) => (engine, StartAt::Offset(o), source),
            Some(((engine, StartAt::Beginning), _)) => {
                (engine, StartAt::Beginning, Source::Beginning)
            }
            None => {
                info!(topic = %shard.topic, partition = shard.partition, "no checkpoint: reading the partition from its beginning");
                (
                    self.pipeline.new_engine(),
                    StartAt::Beginning,
                    Source::Beginning,
                )
            }
        };
        self.pipeline.metrics().restored(source.as_str());
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
                source,
            },
        );
        start
    }

    fn restore(&self, shard: &Shard, cp: Checkpoint) -> (Engine, StartAt) {
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

    /// The next offset to process of an owned partition (`None`: not owned, or nothing processed
    /// since it was assigned to be read from its beginning).
    pub fn next_offset(&self, shard: &Shard) -> Option<i64> {
        self.offsets.get(shard).and_then(|o| o.next)
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
        let durable: Vec<(Shard, i64)> = shards
            .into_iter()
            .filter_map(|s| self.checkpoint_one(&s, now_ms).map(|o| (s, o)))
            .collect();
        if self.offsets.values().all(|o| o.checkpointed == o.next) {
            self.pipeline.metrics().checkpoint_complete(now_ms);
        }
        durable
    }

    /// Checkpoints one partition if it moved; returns the offset a durable checkpoint now covers,
    /// or `None` if there is nothing new to commit or a write failed. Durable means written to the
    /// local directory and, when configured, acknowledged by the changelog.
    fn checkpoint_one(&mut self, shard: &Shard, now_ms: i64) -> Option<i64> {
        let o = self.offsets.get_mut(shard)?;
        let next = o.next?;
        if o.checkpointed == Some(next) {
            return None;
        }
        let engine = self.pipeline.shard(shard)?;
        let metrics = self.pipeline.metrics();
        let header = Header {
            topic: shard.topic.to_string(),
            partition: shard.partition,
            next_offset: next,
            shape: engine.shape(),
            written_at_ms: now_ms,
        };
        let bytes = match checkpoint::encode(&header, engine.state()) {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "checkpoint failed; offsets stay uncommitted");
                metrics.checkpoint_failed(Store::Local);
                return None;
            }
        };
        if let Err(e) = checkpoint::write_bytes(&self.dir, &shard.topic, shard.partition, &bytes) {
            error!(error = %e, "checkpoint failed; offsets stay uncommitted");
            metrics.checkpoint_failed(Store::Local);
            return None;
        }
        metrics.checkpoint_written(Store::Local, bytes.len());
        if let Some(changelog) = self.changelog.as_mut() {
            if let Err(e) = changelog.save(shard, next, &bytes) {
                error!(error = %e, topic = %shard.topic, partition = shard.partition,
                       "changelog write failed; offsets stay uncommitted, retried at the next checkpoint");
                metrics.checkpoint_failed(Store::Changelog);
                return None;
            }
            metrics.checkpoint_written(Store::Changelog, bytes.len());
        }
        o.checkpointed = Some(next);
        Some(next)
    }

    /// Gives a partition up: checkpoints it and drops its state. Returns the offset to commit: the
    /// one its newest durable checkpoint covers, if that covers everything processed.
    pub fn revoke(&mut self, shard: &Shard, now_ms: i64) -> Option<i64> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.checkpoint_one(shard, now_ms);
        self.pipeline.remove_shard(shard);
        self.pipeline
            .metrics()
            .partition_released(&shard.topic, shard.partition);
        let o = self.offsets.remove(shard)?;
        if o.checkpointed == o.next {
            o.checkpointed
        } else {
            None
        }
    }

    /// Drops a partition whose assignment was lost (the group gave it to another member while this
    /// one was out): no checkpoint, no commit, because the new owner may already be ahead of it.
    pub fn lose(&mut self, shard: &Shard) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.pipeline.remove_shard(shard);
        self.pipeline
            .metrics()
            .partition_released(&shard.topic, shard.partition);
        self.offsets.remove(shard);
    }

    /// Drops every partition unsaved: their engines may hold messages beyond their offsets (a batch
    /// whose deliveries were never acknowledged), so no checkpoint may be taken of them.
    pub fn abandon(&mut self) {
        let shards: Vec<Shard> = self.offsets.keys().cloned().collect();
        for s in &shards {
            self.lose(s);
        }
    }

    /// Every owned partition with its checkpointed offset.
    pub fn owned(&self) -> impl Iterator<Item = (&Shard, Option<i64>)> {
        self.offsets.iter().map(|(s, o)| (s, o.checkpointed))
    }

    /// Every owned partition, sorted.
    pub fn status(&self) -> Vec<PartitionStatus> {
        let mut all: Vec<PartitionStatus> = self
            .offsets
            .iter()
            .map(|(s, o)| PartitionStatus {
                topic: s.topic.to_string(),
                partition: s.partition,
                next_offset: o.next,
                checkpointed_offset: o.checkpointed,
                restored_from: o.source,
                tenants: self.pipeline.shard(s).map_or(0, Engine::tenant_count),
                jobs: self.pipeline.shard(s).map_or(0, Engine::job_count),
            })
            .collect();
        all.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        all
    }
}

/// Keeps, of a partition's messages in delivery order (`idx`, with `offset` giving each one's
/// offset), those that extend a state holding every message before `next`. Offsets only move
/// forward, so a message below `next`, or not above one kept before it, was delivered again: it
/// is dropped, and its offset returned. A broker never does this; one with a fault that does
/// would otherwise have the same sample counted twice.
pub fn drop_repeats(
    next: Option<i64>,
    idx: &mut Vec<usize>,
    offset: impl Fn(usize) -> i64,
) -> Vec<i64> {
    let mut next = next.unwrap_or(i64::MIN);
    let mut repeats = Vec::new();
    idx.retain(|&i| {
        let o = offset(i);
        if o < next {
            repeats.push(o);
            false
        } else {
            next = o + 1;
            true
        }
    });
    repeats
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

    #[test]
    fn messages_delivered_again_below_the_next_offset_are_dropped_once_each() {
        let offsets = [8, 10, 11, 11, 13, 12, 14];
        let mut idx: Vec<usize> = (0..offsets.len()).collect();
        let repeats = drop_repeats(Some(10), &mut idx, |i| offsets[i]);
        let kept: Vec<i64> = idx.iter().map(|&i| offsets[i]).collect();
        assert_eq!(kept, [10, 11, 13, 14]);
        assert_eq!(repeats, [8, 11, 12]);

        // A partition read from its beginning takes whatever offset comes first; gaps are kept
        // (compaction and transaction markers leave them).
        let offsets = [5, 9, 9];
        let mut idx: Vec<usize> = (0..offsets.len()).collect();
        assert_eq!(drop_repeats(None, &mut idx, |i| offsets[i]), [9]);
        assert_eq!(idx, [0, 1]);
    }

    /// A changelog shared by instances, in memory; `fail` makes writes fail.
    #[derive(Clone, Default)]
    struct SharedStore {
        snapshots: Arc<std::sync::Mutex<HashMap<Shard, Vec<u8>>>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl SnapshotStore for SharedStore {
        fn save(&mut self, shard: &Shard, _: i64, bytes: &[u8]) -> Result<(), String> {
            if self.fail.load(Ordering::SeqCst) {
                return Err("broker down".into());
            }
            self.snapshots
                .lock()
                .unwrap()
                .insert(shard.clone(), bytes.to_vec());
            Ok(())
        }
        fn load(&mut self, shard: &Shard) -> Result<Option<Vec<u8>>, String> {
            Ok(self.snapshots.lock().unwrap().get(shard).cloned())
        }
    }

    fn seconds(p: &Partitions, shard: &Shard) -> f64 {
        p.pipeline.shard(shard).unwrap().tenant_reports()[0].accelerator_seconds
    }

    #[test]
    fn a_partition_moves_between_instances_through_the_changelog_and_the_newest_snapshot_wins() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = SharedStore::default();
        let shard = Shard::new("gpu-usage", 2);
        let mut a = partitions(dir_a.path()).with_changelog(Box::new(store.clone()));
        let mut b = partitions(dir_b.path()).with_changelog(Box::new(store.clone()));

        assert_eq!(a.assign(&shard), StartAt::Beginning);
        feed(&mut a, &shard, 0..10);
        a.processed(&shard, 10);
        assert_eq!(a.revoke(&shard, 0), Some(10));

        // B has no local file: the changelog gives it A's state.
        assert_eq!(b.assign(&shard), StartAt::Offset(10));
        assert_eq!(b.status()[0].restored_from, Source::Changelog);
        assert_eq!(seconds(&b, &shard), 10.0 * 8.0 * 60.0);
        feed(&mut b, &shard, 10..25);
        b.processed(&shard, 25);
        assert_eq!(b.revoke(&shard, 0), Some(25));

        // Back to A: its own file covers 10 messages, the changelog 25; the changelog wins.
        assert_eq!(a.assign(&shard), StartAt::Offset(25));
        assert_eq!(a.status()[0].restored_from, Source::Changelog);
        assert_eq!(seconds(&a, &shard), 25.0 * 8.0 * 60.0);

        // With the changelog failing, a checkpoint is not durable: nothing to commit, retried later.
        store.fail.store(true, Ordering::SeqCst);
        feed(&mut a, &shard, 25..30);
        a.processed(&shard, 30);
        assert!(a.checkpoint(0).is_empty());
        assert_eq!(a.status()[0].checkpointed_offset, Some(25));
        store.fail.store(false, Ordering::SeqCst);
        assert_eq!(a.checkpoint(0), vec![(shard.clone(), 30)]);

        // A lost assignment drops the state without writing anything.
        feed(&mut a, &shard, 30..31);
        a.processed(&shard, 31);
        a.lose(&shard);
        assert!(a.status().is_empty());
        assert_eq!(b.assign(&shard), StartAt::Offset(30));
    }
}
