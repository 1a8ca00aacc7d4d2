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
//! A checkpoint is encoded on the consumer's thread (the engine is not shared) and written by the
//! checkpoint writer's thread ([`crate::persist`]). The consumer takes no batch while it encodes,
//! so a periodic round encodes each partition in a gap between evaluations at detection
//! boundaries, where the pause delays no alert. Periodic checkpoints do not wait for the writer:
//! the consumer goes on while the bytes go to disk and to Kafka, and commits when the writer
//! reports them durable. Revocation and shutdown wait, since the partition's next owner reads
//! what they write.
//!
//! Any snapshot at offset N is the state of the partition's first N messages, whichever instance
//! wrote it, so choosing the one with the highest offset is always right.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::changelog::SnapshotStore;
use crate::checkpoint::{self, Checkpoint, Header, Loaded};
use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::Store;
use crate::persist::{Persister, Save};
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
    /// The engine holds messages from `next` on: applied, their dead letters and alerts not yet
    /// acknowledged ([`Partitions::applied`] until [`Partitions::processed`]).
    ahead: bool,
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
    /// Writes checkpoints (and reads the changelog) on its own thread.
    persister: Persister,
    /// The periodic checkpoint round in progress.
    round: Round,
    /// Numbers the checkpoints handed to the writer.
    seq: u64,
    /// Offsets durable checkpoints cover that were not yet returned to commit.
    durable: HashMap<Shard, i64>,
    cfg: Config,
}

/// A periodic checkpoint round: the partitions still to encode, one being written at a time.
#[derive(Debug, Default)]
struct Round {
    active: bool,
    queue: Vec<Shard>,
    /// When the round started: once it completes, every partition is durable as of then.
    started_ms: i64,
    /// A checkpoint of the round could not be encoded or made durable.
    failed: bool,
    /// The checkpoint of the round the writer has (its `seq`).
    writing: Option<u64>,
}

impl Partitions {
    /// Partitions whose checkpoints go to `cfg.state.dir` and, when given, to `changelog` too
    /// (which is then also read on assignment, to restore from when it is newer).
    pub fn new(
        cfg: &Config,
        pipeline: Pipeline,
        changelog: Option<Box<dyn SnapshotStore>>,
    ) -> Partitions {
        let dir = PathBuf::from(&cfg.state.dir);
        let persister = Persister::start(changelog, pipeline.metrics().clone());
        Partitions {
            pipeline,
            offsets: HashMap::new(),
            generation: Arc::new(AtomicU64::new(0)),
            dir,
            persister,
            round: Round::default(),
            seq: 0,
            durable: HashMap::new(),
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
        // A checkpoint of this partition still being written (it was lost, not revoked) is
        // finished before the stores are read.
        self.persister.wait();
        self.collect();
        // Both stores hold states of a prefix of the partition: the longer prefix saves re-reading
        // (a local one at the same offset wins). The changelog's snapshot is fetched to a file and
        // its header read first, so that only the state restored is decoded: one in memory at a
        // time.
        let remote = self.fetch_changelog(shard);
        let current = checkpoint::path(&self.dir, &shard.topic, shard.partition);
        let local_next = [current.clone(), checkpoint::prev_path(&current)]
            .iter()
            .find_map(|file| checkpoint::peek(file).ok())
            .filter(|h| covers(h, shard))
            .map(|h| h.next_offset);
        let remote_first = remote
            .as_ref()
            .is_some_and(|(_, h)| local_next.is_none_or(|l| h.next_offset > l));
        let mut best = if remote_first {
            remote
                .as_ref()
                .and_then(|(file, _)| read_changelog(shard, file))
        } else {
            None
        };
        if best.is_none() {
            best = self.load_local(shard);
            // The local state fell back to an older checkpoint than the changelog's.
            let beaten = remote.as_ref().is_some_and(|(_, h)| {
                !remote_first
                    && best
                        .as_ref()
                        .is_none_or(|(cp, _)| h.next_offset > cp.header.next_offset)
            });
            if let (true, Some((file, _))) = (beaten, &remote) {
                drop(best);
                best = read_changelog(shard, file).or_else(|| self.load_local(shard));
            }
        }
        if let Some((file, _)) = &remote {
            let _ = std::fs::remove_file(file);
        }
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
                ahead: false,
                source,
            },
        );
        start
    }

    /// The partition's newest good local checkpoint, if it holds this partition.
    fn load_local(&self, shard: &Shard) -> Option<(Checkpoint, Source)> {
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
        local.filter(|(cp, _)| covers(&cp.header, shard))
    }

    /// The changelog's newest snapshot of the partition, written to a file in the state directory
    /// (removed by the caller), with its header; `None` without a changelog, or when it holds no
    /// snapshot of the partition or cannot be read.
    fn fetch_changelog(&self, shard: &Shard) -> Option<(PathBuf, Header)> {
        let file = self
            .dir
            .join(format!("{}-{}.changelog", shard.topic, shard.partition));
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            warn!(error = %e, dir = %self.dir.display(), "cannot create the state directory");
        }
        match self.persister.load_changelog(shard, &file)? {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                warn!(error = %e, topic = %shard.topic, partition = shard.partition,
                      "cannot read the changelog; restoring from local state only");
                return None;
            }
        }
        match checkpoint::peek(&file) {
            Ok(header) if covers(&header, shard) => Some((file, header)),
            Ok(_) => {
                let _ = std::fs::remove_file(&file);
                None
            }
            Err(e) => {
                error!(error = %e, topic = %shard.topic, partition = shard.partition, "changelog snapshot unusable");
                let _ = std::fs::remove_file(&file);
                None
            }
        }
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
            o.ahead = false;
        }
    }

    /// Records that messages of `shard` from its next offset on were applied and await the
    /// acknowledgement of their dead letters and alerts ([`Partitions::processed`] follows). A
    /// revocation meanwhile takes no checkpoint of the partition.
    pub fn applied(&mut self, shard: &Shard) {
        if let Some(o) = self.offsets.get_mut(shard) {
            o.ahead = true;
        }
    }

    /// Starts a checkpoint round: every partition that moved is encoded into its file in turn, on
    /// this thread, and handed to the writer thread; the next one is encoded when the writer
    /// reports the one before ([`Partitions::finished`]), so one staged checkpoint at most waits
    /// for the writer. A round still running when the next is due makes that one skip.
    ///
    /// The consumer takes no batch while it encodes, so an encoding waits for a gap between
    /// evaluations (see `Partitions::in_gap`); call [`Partitions::resume_checkpoint`] after
    /// every batch and now and then when none arrives.
    pub fn start_checkpoint(&mut self, now_ms: i64) {
        self.collect();
        if self.round.active {
            return;
        }
        self.round = Round {
            active: true,
            queue: self.offsets.keys().cloned().collect(),
            started_ms: now_ms,
            failed: false,
            writing: None,
        };
        self.advance(now_ms);
    }

    /// Goes on with a round waiting for a gap between evaluations.
    pub fn resume_checkpoint(&mut self, now_ms: i64) {
        self.advance(now_ms);
    }

    /// Takes in what the writer reported, goes on with the round, and returns the offsets that
    /// durable checkpoints now cover, to commit. Call it when [`Partitions::saved_signal`] fires.
    pub fn finished(&mut self, now_ms: i64) -> Vec<(Shard, i64)> {
        self.collect();
        self.advance(now_ms);
        self.take_durable()
    }

    /// Notified when the writer has reported a checkpoint.
    pub fn saved_signal(&self) -> Arc<Notify> {
        self.persister.signal()
    }

    /// Checkpoints every partition that moved since its last checkpoint and waits for the
    /// checkpoints to be durable (a running round is given up); returns the offsets durable
    /// checkpoints now cover and no commit was returned for yet. A partition whose write failed
    /// is left out.
    pub fn checkpoint(&mut self, now_ms: i64) -> Vec<(Shard, i64)> {
        self.round = Round::default();
        let shards: Vec<Shard> = self.offsets.keys().cloned().collect();
        for shard in &shards {
            if let Some(save) = self.encode(shard, now_ms) {
                self.persister.save(save);
            }
        }
        self.persister.wait();
        self.collect();
        if self.offsets.values().all(|o| o.checkpointed == o.next) {
            self.pipeline.metrics().checkpoint_complete(now_ms);
        }
        self.take_durable()
    }

    /// Encodes the checkpoint of one partition if it moved since its last durable checkpoint;
    /// `None` if it did not, is not owned, or cannot be encoded (the round then counts as failed).
    fn encode(&mut self, shard: &Shard, now_ms: i64) -> Option<Save> {
        let o = self.offsets.get(shard)?;
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
        // The writer finishes what it holds first: one checkpoint is staged at a time (each
        // partition has one temporary file).
        self.persister.wait();
        let started = std::time::Instant::now();
        let staged = checkpoint::stage(&self.dir, &header, engine.state());
        let took = started.elapsed();
        self.pipeline
            .metrics()
            .checkpoint_encoded(took.as_secs_f64());
        tracing::debug!(topic = %shard.topic, partition = shard.partition, seconds = took.as_secs_f64(),
                        round_started_ms_ago = self.round.active.then(|| now_ms - self.round.started_ms),
                        "checkpoint encoded");
        match staged {
            Ok(staged) => {
                self.seq += 1;
                Some(Save {
                    shard: shard.clone(),
                    next,
                    assigned_at: o.assigned_at,
                    seq: self.seq,
                    staged,
                })
            }
            Err(e) => {
                error!(error = %e, "checkpoint failed; offsets stay uncommitted");
                self.pipeline.metrics().checkpoint_failed(Store::Local);
                self.round.failed = true;
                None
            }
        }
    }

    /// Hands the round's next partition that moved to the writer, unless one is being written or
    /// there is no gap to encode it in; ends the round when none is left.
    fn advance(&mut self, now_ms: i64) {
        while self.round.active && self.round.writing.is_none() {
            if !self.round.queue.is_empty() && !self.in_gap(now_ms) {
                return;
            }
            let Some(shard) = self.round.queue.pop() else {
                if !self.round.failed {
                    // Every owned partition is durable as of the round's start (one assigned since
                    // came from a checkpoint).
                    self.pipeline
                        .metrics()
                        .checkpoint_complete(self.round.started_ms);
                }
                self.round = Round::default();
                return;
            };
            if let Some(save) = self.encode(&shard, now_ms) {
                self.round.writing = Some(save.seq);
                self.persister.save(save);
            }
        }
    }

    /// Whether the round may encode now without delaying an evaluation (and the alerts it raises):
    /// in the first half of a detection slide, just after the shards' evaluations, when the next
    /// is expected ([`Pipeline::next_evaluation_expected_ms`]) half a slide or more from now. That
    /// leaves the encoding, and the consumer catching up with what arrived meanwhile, half a slide
    /// at least, however long the encoding happens to take (in a live run the same partition's
    /// took from 0.3 to 5 s, with what else ran on the cores). A round waits for such a gap at
    /// most two slides and at most one checkpoint interval.
    fn in_gap(&self, now_ms: i64) -> bool {
        let Some(next) = self.pipeline.next_evaluation_expected_ms(now_ms) else {
            return true;
        };
        let slide = self.cfg.detection.slide.ms();
        let max_wait = (2 * slide).min(self.cfg.state.checkpoint_interval.ms());
        next - now_ms >= slide / 2 || now_ms - self.round.started_ms >= max_wait
    }

    /// Applies the writer's reports: a durable checkpoint moves its partition's checkpointed
    /// offset, if the partition is still owned under the assignment it was encoded in.
    fn collect(&mut self) {
        for saved in self.persister.take_saved() {
            if self.round.writing == Some(saved.seq) {
                self.round.writing = None;
                self.round.failed |= !saved.durable;
            }
            if !saved.durable {
                continue;
            }
            let Some(o) = self.offsets.get_mut(&saved.shard) else {
                continue;
            };
            if o.assigned_at == saved.assigned_at && o.checkpointed < Some(saved.next) {
                o.checkpointed = Some(saved.next);
                self.durable.insert(saved.shard, saved.next);
            }
        }
    }

    /// The offsets collected as durable since the last call, of partitions still owned.
    fn take_durable(&mut self) -> Vec<(Shard, i64)> {
        let mut durable: Vec<(Shard, i64)> = std::mem::take(&mut self.durable)
            .into_iter()
            .filter(|(s, _)| self.offsets.contains_key(s))
            .collect();
        durable.sort_by(|a, b| (&a.0.topic, a.0.partition).cmp(&(&b.0.topic, b.0.partition)));
        durable
    }

    /// Gives a partition up: checkpoints it, waits until that is durable, and drops its state.
    /// Returns the offset to commit: the one its newest durable checkpoint covers, if that covers
    /// everything processed. A partition with messages applied but not yet processed (see
    /// [`Partitions::applied`]) is dropped without a checkpoint, as a lost one is.
    pub fn revoke(&mut self, shard: &Shard, now_ms: i64) -> Option<i64> {
        if self.offsets.get(shard).is_some_and(|o| o.ahead) {
            // Its engine holds messages beyond the offset a checkpoint would carry: the next owner
            // restores the last durable checkpoint and reads them again.
            warn!(topic = %shard.topic, partition = shard.partition,
                  "partition revoked while a batch of it awaits acknowledgements: given up as of its last durable checkpoint");
            self.lose(shard);
            return None;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.round.queue.retain(|s| s != shard);
        if let Some(save) = self.encode(shard, now_ms) {
            self.persister.save(save);
        }
        self.persister.wait();
        self.collect();
        self.pipeline.remove_shard(shard);
        self.pipeline
            .metrics()
            .partition_released(&shard.topic, shard.partition);
        let o = self.offsets.remove(shard)?;
        self.durable.remove(shard);
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
        self.round.queue.retain(|s| s != shard);
        self.durable.remove(shard);
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

/// Whether a checkpoint's header is of this partition.
fn covers(header: &Header, shard: &Shard) -> bool {
    header.topic == *shard.topic && header.partition == shard.partition
}

/// The checkpoint in a snapshot fetched from the changelog, decoded.
fn read_changelog(shard: &Shard, file: &std::path::Path) -> Option<(Checkpoint, Source)> {
    match checkpoint::read(file) {
        Ok(cp) => Some((cp, Source::Changelog)),
        Err(e) => {
            error!(error = %e, topic = %shard.topic, partition = shard.partition, "changelog snapshot unusable");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;

    use super::*;
    use crate::decode::{DecodeLimits, UsageSample};
    use crate::metrics::Metrics;

    fn partitions(dir: &std::path::Path, changelog: Option<Box<dyn SnapshotStore>>) -> Partitions {
        let mut cfg = Config::default();
        cfg.state.dir = dir.to_string_lossy().into_owned();
        let pipeline = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
        Partitions::new(&cfg, pipeline, changelog)
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
        let mut p = partitions(dir.path(), None);
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

    /// A partition revoked between applying messages and their acknowledgement (possible while a
    /// batch takes in more messages, which polls the consumer) is given up without a checkpoint:
    /// its engine holds messages beyond the offset the checkpoint would carry, and the next owner
    /// restores the last durable checkpoint and reads them again. Once processed, a revocation
    /// checkpoints as before.
    #[test]
    fn a_partition_revoked_with_messages_applied_but_unacknowledged_is_not_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::new("gpu-usage", 0);
        let mut p = partitions(dir.path(), None);
        p.assign(&shard);
        feed(&mut p, &shard, 0..10);
        p.processed(&shard, 10);
        assert_eq!(p.checkpoint(0), vec![(shard.clone(), 10)]);
        // Ten more applied, not yet acknowledged.
        feed(&mut p, &shard, 10..20);
        p.applied(&shard);
        assert_eq!(p.revoke(&shard, 0), None, "nothing to commit");
        assert!(!p.accepts(&shard, p.generation().load(Ordering::SeqCst)));
        assert_eq!(
            p.assign(&shard),
            StartAt::Offset(10),
            "the last durable checkpoint"
        );
        assert_eq!(
            seconds(&p, &shard),
            10.0 * 8.0 * 60.0,
            "none of the ten counted"
        );
        // Applied and processed: revoked with a checkpoint of everything.
        feed(&mut p, &shard, 10..20);
        p.applied(&shard);
        p.processed(&shard, 20);
        assert_eq!(p.revoke(&shard, 0), Some(20));
        assert_eq!(p.assign(&shard), StartAt::Offset(20));
        assert_eq!(seconds(&p, &shard), 20.0 * 8.0 * 60.0);
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

    /// A changelog shared by instances, in memory; `fail` makes writes fail, and a write waits
    /// while `hold` is locked.
    #[derive(Clone, Default)]
    struct SharedStore {
        snapshots: Arc<std::sync::Mutex<HashMap<Shard, Vec<u8>>>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
        hold: Arc<std::sync::Mutex<()>>,
    }

    impl SnapshotStore for SharedStore {
        fn save(&mut self, shard: &Shard, _: i64, bytes: &mut dyn Read) -> Result<(), String> {
            drop(self.hold.lock().unwrap());
            if self.fail.load(Ordering::SeqCst) {
                return Err("broker down".into());
            }
            let mut read = Vec::new();
            bytes.read_to_end(&mut read).map_err(|e| e.to_string())?;
            self.snapshots.lock().unwrap().insert(shard.clone(), read);
            Ok(())
        }
        fn load(&mut self, shard: &Shard, into: &std::path::Path) -> Result<bool, String> {
            match self.snapshots.lock().unwrap().get(shard) {
                Some(bytes) => std::fs::write(into, bytes).map_err(|e| e.to_string())?,
                None => return Ok(false),
            }
            Ok(true)
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
        let mut a = partitions(dir_a.path(), Some(Box::new(store.clone())));
        let mut b = partitions(dir_b.path(), Some(Box::new(store.clone())));

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

    /// A local checkpoint covering more than the changelog's snapshot is restored without the
    /// snapshot being decoded; a newer snapshot that fails its checksum gives way to the local
    /// one. The snapshot's file is removed either way.
    #[test]
    fn the_local_checkpoint_wins_over_an_older_or_broken_changelog_snapshot() {
        let (dir, store, mut p) = with_changelog();
        let shard = Shard::new("gpu-usage", 1);
        owning(&mut p, &shard, 10);
        assert_eq!(p.checkpoint(0), vec![(shard.clone(), 10)]);
        // The changelog refuses the next one: the local file covers 20, the changelog 10.
        store.fail.store(true, Ordering::SeqCst);
        feed(&mut p, &shard, 10..20);
        p.processed(&shard, 20);
        assert!(p.checkpoint(0).is_empty());
        store.fail.store(false, Ordering::SeqCst);
        p.lose(&shard);
        assert_eq!(p.assign(&shard), StartAt::Offset(20));
        assert_eq!(p.status()[0].restored_from, Source::Checkpoint);
        assert_eq!(seconds(&p, &shard), 20.0 * 8.0 * 60.0);
        let leftovers = |dir: &std::path::Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.contains("changelog"))
                .count()
        };
        assert_eq!(leftovers(dir.path()), 0);

        // A newer snapshot (30) whose bytes are damaged after its header.
        let other_dir = tempfile::tempdir().unwrap();
        let mut o = partitions(other_dir.path(), Some(Box::new(store.clone())));
        p.lose(&shard);
        assert_eq!(o.assign(&shard), StartAt::Offset(10));
        feed(&mut o, &shard, 10..30);
        o.processed(&shard, 30);
        assert_eq!(o.checkpoint(0), vec![(shard.clone(), 30)]);
        {
            let mut snapshots = store.snapshots.lock().unwrap();
            let bytes = snapshots.get_mut(&shard).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x20;
        }
        assert_eq!(p.assign(&shard), StartAt::Offset(20));
        assert_eq!(p.status()[0].restored_from, Source::Checkpoint);
        assert_eq!(leftovers(dir.path()), 0);
    }

    fn with_changelog() -> (tempfile::TempDir, SharedStore, Partitions) {
        let dir = tempfile::tempdir().unwrap();
        let store = SharedStore::default();
        let p = partitions(dir.path(), Some(Box::new(store.clone())));
        (dir, store, p)
    }

    /// Assigns `shard` and processes its first `n` messages.
    fn owning(p: &mut Partitions, shard: &Shard, n: i64) {
        p.assign(shard);
        feed(p, shard, 0..n);
        p.processed(shard, n);
    }

    /// Calls `finished` until it returns offsets to commit (the writer works on its own thread).
    fn finished(p: &mut Partitions) -> Vec<(Shard, i64)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let durable = p.finished(0);
            if !durable.is_empty() || std::time::Instant::now() > deadline {
                return durable;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn last_complete(p: &Partitions) -> String {
        p.pipeline
            .metrics()
            .render()
            .lines()
            .find(|l| l.starts_with("trainspotter_checkpoint_last_success_timestamp_seconds "))
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_checkpoint_round_writes_off_the_consumer_thread_and_commits_what_each_checkpoint_covers() {
        let (_dir, store, mut p) = with_changelog();
        let shards = [Shard::new("gpu-usage", 0), Shard::new("gpu-usage", 1)];
        for s in &shards {
            owning(&mut p, s, 10);
        }

        // The changelog holds the first write back; processing goes on meanwhile.
        let held = store.hold.lock().unwrap();
        p.start_checkpoint(7_000);
        for s in &shards {
            feed(&mut p, s, 10..20);
            p.processed(s, 20);
        }
        assert!(p.finished(0).is_empty(), "nothing durable yet");
        p.start_checkpoint(9_000); // a round is running: skipped
        assert_eq!(p.status()[0].checkpointed_offset, None);
        assert_eq!(p.status()[1].checkpointed_offset, None);
        drop(held);

        // The first partition's checkpoint holds what was processed when the round started, the
        // second one's what was processed when the first was durable.
        let first = finished(&mut p);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1, 10);
        let second = finished(&mut p);
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].0, first[0].0);
        assert_eq!(second[0].1, 20);
        // Every partition is durable as of the round's start, not of the skipped one's.
        assert_eq!(
            last_complete(&p),
            "trainspotter_checkpoint_last_success_timestamp_seconds 7"
        );
        // Each encoding was timed.
        assert_eq!(p.pipeline.metrics().checkpoint_encode_totals().0, 2);

        // The changelog's snapshots are the checkpoints the round wrote.
        for (shard, next) in [&first[0], &second[0]] {
            let bytes = store.snapshots.lock().unwrap()[shard].clone();
            let cp = checkpoint::decode(std::path::Path::new("changelog"), &bytes).unwrap();
            assert_eq!(cp.header.next_offset, *next);
        }
    }

    #[test]
    fn a_round_whose_write_fails_commits_nothing_and_is_not_complete_until_written_again() {
        let (_dir, store, mut p) = with_changelog();
        let shard = Shard::new("gpu-usage", 0);
        owning(&mut p, &shard, 10);
        store.fail.store(true, Ordering::SeqCst);
        p.start_checkpoint(7_000);
        p.persister.wait();
        assert!(p.finished(0).is_empty());
        assert_eq!(p.status()[0].checkpointed_offset, None);
        assert_eq!(
            last_complete(&p),
            "trainspotter_checkpoint_last_success_timestamp_seconds 0"
        );

        // The next round writes it again.
        store.fail.store(false, Ordering::SeqCst);
        p.start_checkpoint(8_000);
        assert_eq!(finished(&mut p), vec![(shard.clone(), 10)]);
        assert_eq!(
            last_complete(&p),
            "trainspotter_checkpoint_last_success_timestamp_seconds 8"
        );
    }

    #[test]
    fn a_checkpoint_round_encodes_in_the_first_half_of_a_slide_or_once_it_waited_an_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.state.dir = dir.path().to_string_lossy().into_owned();
        let slide = cfg.detection.slide.ms();
        // Shorter than two slides: the round waits at most this long.
        cfg.state.checkpoint_interval =
            crate::config::HumanDuration(std::time::Duration::from_secs(15));
        let pipeline = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
        let mut p = Partitions::new(&cfg, pipeline, None);
        let shard = Shard::new("gpu-usage", 0);
        owning(&mut p, &shard, 10);
        let evaluated = p.pipeline.shard(&shard).unwrap().evaluated_at_ms();
        let evaluated = evaluated.expect("ten minutes of input pass detection boundaries");
        assert_eq!(
            p.pipeline.next_evaluation_expected_ms(evaluated),
            Some(evaluated + slide)
        );
        // A shard that has not evaluated for two slides is not expected to.
        assert_eq!(
            p.pipeline
                .next_evaluation_expected_ms(evaluated + 2 * slide),
            None
        );
        let metrics = p.pipeline.metrics().clone();
        let encodings = || metrics.checkpoint_encode_totals().0;

        // With 40 % of the slide left until the next evaluation, the round waits.
        let start = evaluated + slide * 6 / 10;
        p.start_checkpoint(start);
        p.resume_checkpoint(start + 14_999);
        assert_eq!(encodings(), 0, "waits for a gap");
        assert_eq!(p.round.queue, std::slice::from_ref(&shard));
        // Once it has waited a checkpoint interval it encodes anyway.
        p.resume_checkpoint(start + 15_000);
        assert_eq!(encodings(), 1);
        assert_eq!(finished(&mut p), [(shard.clone(), 10)]);

        // Just after an evaluation there is room for it.
        feed(&mut p, &shard, 10..20);
        p.processed(&shard, 20);
        let evaluated = p.pipeline.shard(&shard).unwrap().evaluated_at_ms().unwrap();
        p.start_checkpoint(evaluated + 1_000);
        assert_eq!(encodings(), 2);
        assert_eq!(finished(&mut p), [(shard.clone(), 20)]);
    }

    #[test]
    fn revoking_a_partition_being_written_waits_for_that_write_then_writes_the_newer_state() {
        let (_dir, store, mut p) = with_changelog();
        let shard = Shard::new("gpu-usage", 0);
        owning(&mut p, &shard, 10);
        // Another thread holds the changelog's writes back for a while.
        let (hold, (locked, is_locked)) = (store.hold.clone(), std::sync::mpsc::channel());
        let release = std::thread::spawn(move || {
            let held = hold.lock().unwrap();
            locked.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(held);
        });
        is_locked.recv().unwrap();
        p.start_checkpoint(7_000);
        feed(&mut p, &shard, 10..15);
        p.processed(&shard, 15);
        // The revocation's checkpoint (15) is written after the round's (10), never before it.
        assert_eq!(p.revoke(&shard, 0), Some(15));
        release.join().unwrap();
        assert!(
            p.finished(0).is_empty(),
            "nothing to commit for a revoked partition"
        );
        assert_eq!(p.assign(&shard), StartAt::Offset(15));
        assert_eq!(seconds(&p, &shard), 15.0 * 8.0 * 60.0);
        let bytes = store.snapshots.lock().unwrap()[&shard].clone();
        let cp = checkpoint::decode(std::path::Path::new("changelog"), &bytes).unwrap();
        assert_eq!(cp.header.next_offset, 15);
    }
}
