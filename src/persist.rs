//! The checkpoint writer: a thread that makes encoded partition checkpoints durable (the local
//! file, then the changelog when one is configured), so that the consumer task goes on consuming
//! while a few hundred MiB go to disk and to Kafka.
//!
//! Jobs run one at a time, in the order they are handed over. That order is what keeps the stores
//! right: a partition's checkpoints are written oldest first, so a newer one is never replaced by
//! an older one, and a read of the changelog handed over after a write (restoring a partition that
//! was just revoked) sees that write. Every finished save is reported as a [`Saved`], which the
//! owner collects with [`Persister::take_saved`]; [`Persister::signal`] wakes it when there is one.
//! [`Persister::wait`] returns once every job handed over before it has finished.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::Notify;
use tracing::error;

use crate::changelog::SnapshotStore;
use crate::checkpoint;
use crate::metrics::{Metrics, Store};
use crate::pipeline::Shard;

/// An encoded checkpoint of a partition, to be made durable.
pub struct Save {
    pub shard: Shard,
    /// The checkpoint holds every message of the partition before this offset.
    pub next: i64,
    /// The assignment generation of the partition when it was encoded.
    pub assigned_at: u64,
    /// Identifies the save to its owner.
    pub seq: u64,
    /// The checkpoint file's bytes ([`checkpoint::encode`]).
    pub bytes: Vec<u8>,
}

impl Save {
    /// Its outcome, and the buffer that held the encoded bytes.
    fn outcome(self, durable: bool) -> (Saved, Vec<u8>) {
        let saved = Saved {
            shard: self.shard,
            next: self.next,
            assigned_at: self.assigned_at,
            seq: self.seq,
            durable,
        };
        (saved, self.bytes)
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

type Loaded = Result<Option<Vec<u8>>, String>;

enum Job {
    Save(Save),
    Load(Shard, mpsc::SyncSender<Loaded>),
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
    /// Starts the thread: checkpoint files go to `dir`, and to `changelog` when there is one.
    pub fn start(
        dir: PathBuf,
        changelog: Option<Box<dyn SnapshotStore>>,
        metrics: Arc<Metrics>,
    ) -> Persister {
        let (jobs, queue) = mpsc::channel();
        let reports = Arc::new(Reports::default());
        let has_changelog = changelog.is_some();
        let writer = Writer {
            dir,
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
        if let Err(mpsc::SendError(Job::Save(s))) = self.send(Job::Save(save)) {
            error!(topic = %s.shard.topic, partition = s.shard.partition,
                   "the checkpoint writer has stopped; checkpoint not written");
            self.reports.push(s.outcome(false).0);
        }
    }

    /// A buffer to encode the next checkpoint into ([`checkpoint::encode_into`]): the one the
    /// largest save written since the last call was in, or a new one. The writer keeps one such
    /// buffer (its pages stay with the process, so the next encoding does not wait for the kernel
    /// to provide and zero them); the memory it holds is that of the largest checkpoint, which
    /// the process needs at every checkpoint anyway.
    pub fn buffer(&self) -> Vec<u8> {
        lock(&self.reports.spare).take().unwrap_or_default()
    }

    /// The newest complete snapshot of `shard` in the changelog, read after every job handed over
    /// before; `None` without a changelog.
    pub fn load_changelog(&self, shard: &Shard) -> Option<Loaded> {
        if !self.has_changelog {
            return None;
        }
        let (reply, answer) = mpsc::sync_channel(1);
        if self.send(Job::Load(shard.clone(), reply)).is_err() {
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
    /// The buffer of a written save, for the next encoding ([`Persister::buffer`]).
    spare: Mutex<Option<Vec<u8>>>,
}

impl Reports {
    fn push(&self, saved: Saved) {
        lock(&self.saved).push(saved);
        self.signal.notify_one();
    }

    /// Keeps the larger of `bytes` and the spare buffer. A buffer more than twice as large as
    /// what it held is first cut down to twice that, so it follows a state that shrank (ended
    /// jobs let go, partitions given up).
    fn recycle(&self, mut bytes: Vec<u8>) {
        bytes.shrink_to(bytes.len().saturating_mul(2));
        let mut spare = lock(&self.spare);
        if spare
            .as_ref()
            .is_none_or(|s| s.capacity() < bytes.capacity())
        {
            *spare = Some(bytes);
        }
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
    dir: PathBuf,
    changelog: Option<Box<dyn SnapshotStore>>,
    metrics: Arc<Metrics>,
    reports: Arc<Reports>,
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        for job in queue {
            match job {
                Job::Save(s) => {
                    let durable = self.write(&s);
                    let (saved, bytes) = s.outcome(durable);
                    // Before the report, so the encoding it lets start finds the buffer.
                    self.reports.recycle(bytes);
                    self.reports.push(saved);
                }
                Job::Load(shard, reply) => {
                    let loaded = match self.changelog.as_mut() {
                        Some(c) => c.load(&shard),
                        None => Ok(None),
                    };
                    let _ = reply.send(loaded);
                }
                Job::Barrier(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Writes the local file, then the changelog; durable once both are.
    fn write(&mut self, s: &Save) -> bool {
        let shard = &s.shard;
        if let Err(e) = checkpoint::write_bytes(&self.dir, &shard.topic, shard.partition, &s.bytes)
        {
            error!(error = %e, "checkpoint failed; offsets stay uncommitted");
            self.metrics.checkpoint_failed(Store::Local);
            return false;
        }
        self.metrics.checkpoint_written(Store::Local, s.bytes.len());
        if let Some(changelog) = self.changelog.as_mut() {
            if let Err(e) = changelog.save(shard, s.next, &s.bytes) {
                error!(error = %e, topic = %shard.topic, partition = shard.partition,
                       "changelog write failed; offsets stay uncommitted, retried at the next checkpoint");
                self.metrics.checkpoint_failed(Store::Changelog);
                return false;
            }
            self.metrics
                .checkpoint_written(Store::Changelog, s.bytes.len());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(seq: u64, bytes: Vec<u8>) -> Save {
        Save {
            shard: Shard::new("gpu-usage", 0),
            next: seq as i64,
            assigned_at: 0,
            seq,
            bytes,
        }
    }

    #[test]
    fn the_buffer_of_the_largest_written_save_is_handed_back_for_the_next_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let p = Persister::start(dir.path().into(), None, Arc::new(Metrics::new()));
        assert_eq!(p.buffer().capacity(), 0, "a new buffer before any save");
        let mut large = Vec::with_capacity(4096);
        large.resize(3000, 1);
        p.save(save(1, large));
        p.save(save(2, vec![2; 64]));
        p.wait();
        assert_eq!(p.take_saved().len(), 2);
        let kept = p.buffer();
        assert!(kept.capacity() >= 4096, "the larger buffer is kept");
        assert_eq!(p.buffer().capacity(), 0, "a buffer is handed out once");
        // A buffer much larger than what it held is cut down.
        let mut oversized = Vec::with_capacity(1 << 20);
        oversized.resize(100, 3);
        p.save(save(3, oversized));
        p.wait();
        let kept = p.buffer();
        assert!(kept.capacity() < 1 << 20 && kept.capacity() >= 100);
    }
}
