//! The checkpoint writer: a thread that makes staged partition checkpoints durable (the local
//! file fsynced and put in place, then the changelog when one is configured), so that the consumer
//! task goes on consuming while a few hundred MiB go to disk and to Kafka. The consumer task
//! encodes each checkpoint into its temporary file ([`checkpoint::stage`]); the writer commits it
//! ([`checkpoint::Staged::commit`]) and sends the file to the changelog from there.
//!
//! Jobs run one at a time, in the order they are handed over. That order is what keeps the stores
//! right: a partition's checkpoints are written oldest first, so a newer one is never replaced by
//! an older one, and a read of the changelog handed over after a write (restoring a partition that
//! was just revoked) sees that write. Every finished save is reported as a [`Saved`], which the
//! owner collects with [`Persister::take_saved`]; [`Persister::signal`] wakes it when there is one.
//! [`Persister::wait`] returns once every job handed over before it has finished.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::Notify;
use tracing::error;

use crate::changelog::SnapshotStore;
use crate::checkpoint;
use crate::metrics::{Metrics, Store};
use crate::pipeline::Shard;

/// A staged checkpoint of a partition, to be made durable.
pub struct Save {
    pub shard: Shard,
    /// The checkpoint holds every message of the partition before this offset.
    pub next: i64,
    /// The assignment generation of the partition when it was encoded.
    pub assigned_at: u64,
    /// Identifies the save to its owner.
    pub seq: u64,
    /// The checkpoint, encoded into its temporary file.
    pub staged: checkpoint::Staged,
}

impl Save {
    /// Its outcome. The staged file is closed (and, not committed, removed) before the outcome is
    /// reported, so that the next checkpoint of the partition, staged once it is, has the
    /// temporary file to itself.
    fn outcome(self, durable: bool) -> Saved {
        Saved {
            shard: self.shard,
            next: self.next,
            assigned_at: self.assigned_at,
            seq: self.seq,
            durable,
        }
    }
}

/// The outcome of a [`Save`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub shard: Shard,
    pub next: i64,
    pub assigned_at: u64,
    pub seq: u64,
    /// Written to the local directory and, when configured, acknowledged by the changelog.
    pub durable: bool,
}

/// Whether a changelog snapshot was written to the file asked for.
type Loaded = Result<bool, String>;

enum Job {
    Save(Box<Save>),
    Load(Shard, PathBuf, mpsc::SyncSender<Loaded>),
    Barrier(mpsc::SyncSender<()>),
}

/// The handle of the writer thread. Dropping it lets the thread finish the jobs handed over and
/// waits for it.
pub struct Persister {
    jobs: Option<mpsc::Sender<Job>>,
    reports: Arc<Reports>,
    thread: Option<JoinHandle<()>>,
    has_changelog: bool,
}

impl Persister {
    /// Starts the thread: staged checkpoints are committed where they were staged, and sent to
    /// `changelog` when there is one.
    pub fn start(changelog: Option<Box<dyn SnapshotStore>>, metrics: Arc<Metrics>) -> Persister {
        let (jobs, queue) = mpsc::channel();
        let reports = Arc::new(Reports::default());
        let has_changelog = changelog.is_some();
        let writer = Writer {
            changelog,
            metrics,
            reports: reports.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || writer.run(queue))
            .expect("the checkpoint writer thread starts");
        Persister {
            jobs: Some(jobs),
            reports,
            thread: Some(thread),
            has_changelog,
        }
    }

    /// Hands a checkpoint over to be made durable; its outcome comes back as a [`Saved`].
    pub fn save(&self, save: Save) {
        if let Err(mpsc::SendError(Job::Save(s))) = self.send(Job::Save(Box::new(save))) {
            error!(topic = %s.shard.topic, partition = s.shard.partition,
                   "the checkpoint writer has stopped; checkpoint not written");
            self.reports.push(s.outcome(false));
        }
    }

    /// Writes the newest complete snapshot of `shard` in the changelog to the file `into`, read
    /// after every job handed over before; `Ok(false)` when there is none, `None` without a
    /// changelog.
    pub fn load_changelog(&self, shard: &Shard, into: &Path) -> Option<Loaded> {
        if !self.has_changelog {
            return None;
        }
        let (reply, answer) = mpsc::sync_channel(1);
        if self
            .send(Job::Load(shard.clone(), into.to_path_buf(), reply))
            .is_err()
        {
            return Some(Err("the checkpoint writer has stopped".into()));
        }
        Some(
            answer
                .recv()
                .unwrap_or_else(|_| Err("the checkpoint writer has stopped".into())),
        )
    }

    /// Returns once every job handed over before has finished (its [`Saved`] is collectable).
    pub fn wait(&self) {
        let (reply, done) = mpsc::sync_channel(1);
        if self.send(Job::Barrier(reply)).is_ok() {
            let _ = done.recv();
        }
    }

    /// The outcomes reported since the last call, in the order the saves were handed over.
    pub fn take_saved(&self) -> Vec<Saved> {
        std::mem::take(&mut *lock(&self.reports.saved))
    }

    /// Notified after each outcome is reported (a notification given while nobody waits is kept
    /// for the next waiter, so none is lost).
    pub fn signal(&self) -> Arc<Notify> {
        self.reports.signal.clone()
    }

    fn send(&self, job: Job) -> Result<(), mpsc::SendError<Job>> {
        match &self.jobs {
            Some(jobs) => jobs.send(job),
            None => Err(mpsc::SendError(job)),
        }
    }
}

/// Outcomes on their way from the thread to the owner.
#[derive(Default)]
struct Reports {
    saved: Mutex<Vec<Saved>>,
    signal: Arc<Notify>,
}

impl Reports {
    fn push(&self, saved: Saved) {
        lock(&self.saved).push(saved);
        self.signal.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the thread owns.
struct Writer {
    changelog: Option<Box<dyn SnapshotStore>>,
    metrics: Arc<Metrics>,
    reports: Arc<Reports>,
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        for job in queue {
            match job {
                Job::Save(mut s) => {
                    let durable = self.write(&mut s);
                    self.reports.push(s.outcome(durable));
                }
                Job::Load(shard, into, reply) => {
                    let loaded = match self.changelog.as_mut() {
                        Some(c) => c.load(&shard, &into),
                        None => Ok(false),
                    };
                    let _ = reply.send(loaded);
                }
                Job::Barrier(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Commits the local file, then sends it to the changelog; durable once both are.
    fn write(&mut self, s: &mut Save) -> bool {
        let shard = &s.shard;
        if let Err(e) = s.staged.commit() {
            error!(error = %e, "checkpoint failed; offsets stay uncommitted");
            self.metrics.checkpoint_failed(Store::Local);
            return false;
        }
        let len = s.staged.len() as usize;
        self.metrics.checkpoint_written(Store::Local, len);
        if let Some(changelog) = self.changelog.as_mut() {
            let sent = s
                .staged
                .bytes()
                .map_err(|e| e.to_string())
                .and_then(|mut bytes| changelog.save(shard, s.next, &mut bytes));
            if let Err(e) = sent {
                error!(error = %e, topic = %shard.topic, partition = shard.partition,
                       "changelog write failed; offsets stay uncommitted, retried at the next checkpoint");
                self.metrics.checkpoint_failed(Store::Changelog);
                return false;
            }
            self.metrics.checkpoint_written(Store::Changelog, len);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Header;
    use crate::config::Config;
    use crate::engine::Engine;

    /// A changelog that refuses every write.
    struct Down;

    impl SnapshotStore for Down {
        fn save(&mut self, _: &Shard, _: i64, _: &mut dyn std::io::Read) -> Result<(), String> {
            Err("broker down".into())
        }
        fn load(&mut self, _: &Shard, _: &Path) -> Result<bool, String> {
            Ok(false)
        }
    }

    /// Staged checkpoints handed over are committed in order and reported durable; with a
    /// changelog that refuses them, the local file is still put in place but the save is not
    /// durable (its offset must not be committed).
    #[test]
    fn staged_checkpoints_are_committed_in_order_and_durable_only_once_the_changelog_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(&Config::default()).unwrap();
        let shard = Shard::new("gpu-usage", 0);
        let save = |next: i64| {
            let header = Header {
                topic: "gpu-usage".into(),
                partition: 0,
                next_offset: next,
                shape: engine.shape(),
                written_at_ms: 0,
            };
            Save {
                shard: shard.clone(),
                next,
                assigned_at: 0,
                seq: next as u64,
                staged: checkpoint::stage(dir.path(), &header, engine.state()).unwrap(),
            }
        };
        let current = checkpoint::path(dir.path(), "gpu-usage", 0);
        let next_of = |p: &Path| checkpoint::read(p).unwrap().header.next_offset;

        let local = Persister::start(None, Arc::new(Metrics::new()));
        for next in [1, 2] {
            local.save(save(next));
            // One staged checkpoint of a partition at a time.
            local.wait();
        }
        let saved = local.take_saved();
        assert_eq!(
            saved.iter().map(|s| (s.seq, s.durable)).collect::<Vec<_>>(),
            [(1, true), (2, true)]
        );
        assert_eq!(next_of(&current), 2);
        assert_eq!(next_of(&checkpoint::prev_path(&current)), 1);

        let refused = Persister::start(Some(Box::new(Down)), Arc::new(Metrics::new()));
        refused.save(save(3));
        refused.wait();
        let saved = refused.take_saved();
        assert_eq!(saved.len(), 1);
        assert!(!saved[0].durable);
        assert_eq!(next_of(&current), 3, "the local file is in place");
        assert!(!current.with_extension("ckpt.tmp").exists());
    }
}
