//! The changelog: every partition checkpoint also goes to a compacted Kafka topic, so that whichever
//! instance of the group is assigned the partition next can restore it, as Kafka Streams does with
//! its changelog topics.
//!
//! A snapshot is the checkpoint file's bytes (magic, version, CRC-32, state), split into chunks of
//! at most [`CHUNK`] bytes so that it fits the broker's message size limit. Records of partition
//! `P` of input topic `T` go to changelog partition `P mod N` (N = the changelog's partition count):
//!
//! | key                  | value                                                   |
//! |----------------------|---------------------------------------------------------|
//! | `T/P/SNAPSHOT/I`     | chunk `I` of snapshot `SNAPSHOT`                        |
//! | `T/P`                | manifest (JSON): the complete snapshot, its chunk count, length, CRC-32 and offset |
//!
//! A snapshot's chunks are written and acknowledged before its manifest, and the previous snapshot's
//! chunks are deleted (tombstones) only after the new manifest is acknowledged. With
//! `cleanup.policy=compact` the topic therefore always holds, per partition, the newest manifest and
//! the chunks it names. Restoring reads the changelog partition from its start to its high watermark,
//! takes the last manifest of the partition and checks length and CRC-32 of the reassembled bytes;
//! chunks that no manifest names (left by a write interrupted between chunks and manifest) are
//! deleted then.
//!
//! Neither direction holds a snapshot in memory. Saving reads the checkpoint file and sends its
//! chunks a group at a time, each group acknowledged before the next is read: [`IN_FLIGHT`] chunks,
//! or as many as fill half of the producer's queue (`queue.buffering.max.kbytes`) when that is
//! smaller, so a snapshot of any size never overflows that queue. Restoring writes each snapshot's
//! chunks to a file of its own beside the file it restores into, as they arrive, and checks and
//! renames the manifest's one into place.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::pipeline::Shard;
use crate::topics::{self, left};

/// Largest chunk of a snapshot in one record: half of Kafka's default `message.max.bytes`.
pub const CHUNK: usize = 512 * 1024;
/// Chunks sent before their acknowledgement is awaited (16 MiB), at most.
pub const IN_FLIGHT: usize = 32;

/// Where partition snapshots are kept besides the local directory (so another instance can read
/// them). A snapshot is a complete checkpoint file's bytes.
pub trait SnapshotStore: Send {
    /// Stores the snapshot of `shard` covering offsets before `next_offset`, read from `bytes`;
    /// `Ok` once durable.
    fn save(&mut self, shard: &Shard, next_offset: i64, bytes: &mut dyn Read)
        -> Result<(), String>;
    /// Writes the newest complete snapshot of `shard` to the file `into` (replacing it); false
    /// when there is none.
    fn load(&mut self, shard: &Shard, into: &Path) -> Result<bool, String>;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    snapshot: String,
    chunks: u32,
    bytes: u64,
    crc32: u32,
    next_offset: i64,
}

/// The changelog topic of a Kafka cluster.
pub struct Changelog {
    topic: String,
    producer: FutureProducer,
    reader: BaseConsumer,
    base: ClientConfig,
    /// Input topics: a missing changelog is created with as many partitions as the largest.
    inputs: Vec<String>,
    partitions: Option<i32>,
    timeout: Duration,
    /// Chunks sent before their acknowledgement is awaited.
    in_flight: usize,
    /// Per partition, the snapshot this instance last wrote or restored: deleted once a newer one is
    /// complete.
    previous: HashMap<Shard, Manifest>,
}

impl Changelog {
    /// A changelog on `topic`, with clients made from `base` (bootstrap servers, security).
    /// `timeout` bounds each save and each load.
    pub fn new(
        base: &ClientConfig,
        topic: &str,
        group_id: &str,
        inputs: &[String],
        timeout: Duration,
    ) -> Result<Changelog, KafkaError> {
        let mut p = base.clone();
        p.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.max.bytes", (2 * CHUNK).to_string());
        let mut r = base.clone();
        // The reader never joins the group and never commits: it is assigned one changelog
        // partition at a time, by hand.
        r.set("group.id", format!("{group_id}-changelog-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.max.bytes", (64 * CHUNK).to_string())
            .set("max.partition.fetch.bytes", (8 * CHUNK).to_string());
        // librdkafka's default queue holds 1 GiB.
        let queue_kib = p
            .get("queue.buffering.max.kbytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1 << 20);
        Ok(Changelog {
            topic: topic.to_string(),
            in_flight: (queue_kib * 1024 / 2 / CHUNK).clamp(1, IN_FLIGHT),
            producer: p.create()?,
            reader: r.create()?,
            base: base.clone(),
            inputs: inputs.to_vec(),
            partitions: None,
            timeout,
            previous: HashMap::new(),
        })
    }

    /// The changelog's partition count; creates the topic (compacted) when it does not exist.
    fn partitions(&mut self, deadline: Instant) -> Result<i32, String> {
        if let Some(n) = self.partitions {
            return Ok(n);
        }
        let n = topics::ensure(
            &self.base,
            &self.topic,
            &self.inputs,
            &[("cleanup.policy", "compact")],
            left(deadline),
        )?;
        self.partitions = Some(n);
        Ok(n)
    }

    fn send(
        &self,
        partition: i32,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<DeliveryFuture, String> {
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
            .partition(partition)
            .key(key);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        self.producer
            .send_result(record)
            .map_err(|(e, _)| format!("changelog produce: {e}"))
    }

    /// Waits until every record in `sent` is acknowledged, or the deadline passes.
    fn acknowledged(&self, sent: Vec<DeliveryFuture>, deadline: Instant) -> Result<(), String> {
        let _ = self.producer.flush(left(deadline));
        for f in sent {
            match f.now_or_never() {
                Some(Ok(Ok(_))) => {}
                Some(Ok(Err((e, _)))) => return Err(format!("changelog write failed: {e}")),
                Some(Err(_)) => return Err("changelog write cancelled".into()),
                None => return Err("changelog write not acknowledged in time".into()),
            }
        }
        Ok(())
    }

    fn tombstone(&self, partition: i32, shard: &Shard, m: &Manifest) {
        for i in 0..m.chunks {
            // Deletes ride along with the next flush; a lost one leaves garbage that the next
            // restore of the partition deletes.
            let _ = self.send(partition, &chunk_key(shard, &m.snapshot, i), None);
        }
    }
}

impl SnapshotStore for Changelog {
    fn save(
        &mut self,
        shard: &Shard,
        next_offset: i64,
        bytes: &mut dyn Read,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let n = self.partitions(deadline)?;
        let partition = shard.partition.rem_euclid(n);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut manifest = Manifest {
            snapshot: format!("{next_offset}-{nanos}"),
            chunks: 0,
            bytes: 0,
            crc32: 0,
            next_offset,
        };
        let mut crc = crc32fast::Hasher::new();
        let mut chunk = vec![0; CHUNK];
        let mut sent = Vec::with_capacity(self.in_flight);
        loop {
            let len = read_chunk(bytes, &mut chunk)
                .map_err(|e| format!("changelog: reading the checkpoint: {e}"))?;
            if len == 0 {
                break;
            }
            crc.update(&chunk[..len]);
            let key = chunk_key(shard, &manifest.snapshot, manifest.chunks);
            sent.push(self.send(partition, &key, Some(&chunk[..len]))?);
            manifest.chunks += 1;
            manifest.bytes += len as u64;
            if sent.len() == self.in_flight {
                self.acknowledged(std::mem::take(&mut sent), deadline)?;
            }
        }
        self.acknowledged(sent, deadline)?;
        manifest.crc32 = crc.finalize();
        let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        let sent = self.send(partition, &manifest_key(shard), Some(&body))?;
        self.acknowledged(vec![sent], deadline)?;
        if let Some(old) = self.previous.insert(shard.clone(), manifest) {
            self.tombstone(partition, shard, &old);
        }
        Ok(())
    }

    fn load(&mut self, shard: &Shard, into: &Path) -> Result<bool, String> {
        let deadline = Instant::now() + self.timeout;
        let n = self.partitions(deadline)?;
        let partition = shard.partition.rem_euclid(n);
        let (low, high) = self
            .reader
            .fetch_watermarks(&self.topic, partition, left(deadline))
            .map_err(|e| format!("changelog watermarks: {e}"))?;
        if high <= low {
            return Ok(false);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(low))
            .map_err(|e| e.to_string())?;
        self.reader.assign(&tpl).map_err(|e| e.to_string())?;
        let manifest_key = manifest_key(shard);
        let chunk_prefix = format!("{manifest_key}/");
        let mut manifest: Option<Manifest> = None;
        let mut parts: HashMap<String, Part> = HashMap::new();
        let mut next = low;
        let result = loop {
            if next >= high {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(format!(
                    "changelog read of {}/{partition} not finished in time ({next} of {high})",
                    self.topic
                ));
            }
            let m = match self.reader.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(e)) => break Err(format!("changelog read: {e}")),
                Some(Ok(m)) => m,
            };
            next = m.offset() + 1;
            let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            if key == manifest_key {
                manifest = m.payload().and_then(|p| serde_json::from_slice(p).ok());
            } else if let Some(rest) = key.strip_prefix(&chunk_prefix) {
                let Some((snapshot, index)) = rest.rsplit_once('/') else {
                    continue;
                };
                let Ok(index) = index.parse::<u32>() else {
                    continue;
                };
                match m.payload() {
                    Some(p) => {
                        if !parts.contains_key(snapshot) {
                            let path = part_path(into, parts.len());
                            match Part::create(path) {
                                Ok(part) => parts.insert(snapshot.to_string(), part),
                                Err(e) => break Err(e),
                            };
                        }
                        if let Some(Err(e)) = parts.get_mut(snapshot).map(|c| c.add(index, p)) {
                            break Err(e);
                        }
                    }
                    None => {
                        if let Some(part) = parts.get_mut(snapshot) {
                            part.present.remove(&index);
                        }
                    }
                }
            }
        };
        let _ = self.reader.unassign();
        // Chunks no manifest names are left by interrupted writes: delete them.
        for (snapshot, part) in &parts {
            if manifest.as_ref().is_none_or(|m| &m.snapshot != snapshot) {
                for &i in &part.present {
                    let _ = self.send(partition, &chunk_key(shard, snapshot, i), None);
                }
            }
        }
        let loaded = result.and_then(|()| {
            let Some(manifest) = manifest else {
                return Ok(false);
            };
            let part = parts.get_mut(&manifest.snapshot);
            let complete = part.as_ref().is_some_and(|p| {
                p.in_order && p.next == manifest.chunks && p.present.len() == p.next as usize
            });
            let Some(part) = part.filter(|_| complete) else {
                return Err(format!(
                    "changelog snapshot {} of {} is incomplete ({} of {} chunks)",
                    manifest.snapshot,
                    manifest_key,
                    parts.get(&manifest.snapshot).map_or(0, |p| p.present.len()),
                    manifest.chunks
                ));
            };
            if part.checksum()? != (manifest.bytes, manifest.crc32) {
                return Err(format!(
                    "changelog snapshot {} of {} fails its length or checksum",
                    manifest.snapshot, manifest_key
                ));
            }
            std::fs::rename(&part.path, into)
                .map_err(|e| format!("changelog: {}: {e}", into.display()))?;
            self.previous.insert(shard.clone(), manifest);
            Ok(true)
        });
        for part in parts.values() {
            let _ = std::fs::remove_file(&part.path);
        }
        loaded
    }
}

/// The chunks of one snapshot read from the changelog, written one after another to a file of
/// their own as they arrive: a snapshot of any size takes a chunk of memory to restore.
struct Part {
    path: PathBuf,
    file: File,
    /// The index the next chunk must have to be written.
    next: u32,
    /// Every chunk arrived in index order, each once (as a snapshot's chunks are written); the
    /// file holds chunks `0..next`.
    in_order: bool,
    /// Chunks seen and not deleted since.
    present: BTreeSet<u32>,
}

impl Part {
    fn create(path: PathBuf) -> Result<Part, String> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| format!("changelog: {}: {e}", path.display()))?;
        Ok(Part {
            path,
            file,
            next: 0,
            in_order: true,
            present: BTreeSet::new(),
        })
    }

    fn add(&mut self, index: u32, chunk: &[u8]) -> Result<(), String> {
        self.present.insert(index);
        if self.in_order && index == self.next {
            self.file
                .write_all(chunk)
                .map_err(|e| format!("changelog: {}: {e}", self.path.display()))?;
            self.next += 1;
        } else {
            self.in_order = false;
        }
        Ok(())
    }

    /// The length and CRC-32 of what the file holds.
    fn checksum(&mut self) -> Result<(u64, u32), String> {
        let err = |e: std::io::Error| format!("changelog: {}: {e}", self.path.display());
        self.file.seek(SeekFrom::Start(0)).map_err(err)?;
        let (mut crc, mut len, mut buf) = (crc32fast::Hasher::new(), 0u64, vec![0; CHUNK]);
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return Ok((len, crc.finalize())),
                Ok(n) => {
                    crc.update(&buf[..n]);
                    len += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
}

/// The file the chunks of the `k`-th snapshot met while restoring into `into` are written to.
fn part_path(into: &Path, k: usize) -> PathBuf {
    let mut name = into.as_os_str().to_owned();
    name.push(format!(".part{k}"));
    PathBuf::from(name)
}

impl Drop for Changelog {
    fn drop(&mut self) {
        if let Err(e) = self.producer.flush(Timeout::After(self.timeout)) {
            warn!(error = %e, "changelog deletes not flushed");
        }
    }
}

/// Fills `chunk` from `bytes` as far as they reach; the length read (below the chunk's only at
/// their end).
fn read_chunk(bytes: &mut dyn Read, chunk: &mut [u8]) -> std::io::Result<usize> {
    let mut len = 0;
    while len < chunk.len() {
        match bytes.read(&mut chunk[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

fn manifest_key(shard: &Shard) -> String {
    format!("{}/{}", shard.topic, shard.partition)
}

fn chunk_key(shard: &Shard, snapshot: &str, index: u32) -> String {
    format!("{}/{}/{snapshot}/{index}", shard.topic, shard.partition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_partition_are_told_apart_from_those_of_a_longer_numbered_one() {
        let s = Shard::new("gpu-usage", 1);
        let other = Shard::new("gpu-usage", 12);
        assert_eq!(manifest_key(&s), "gpu-usage/1");
        assert_eq!(chunk_key(&s, "10-5", 3), "gpu-usage/1/10-5/3");
        // A chunk of partition 12 does not carry partition 1's chunk prefix.
        assert!(!chunk_key(&other, "10-5", 0).starts_with(&format!("{}/", manifest_key(&s))));
    }

    /// A mock broker with the input topic and the changelog, one partition each, and the base
    /// client configuration that reaches it.
    fn mock_cluster() -> (
        rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        ClientConfig,
    ) {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("gpu-usage", 1, 1).unwrap();
        cluster.create_topic("changelog", 1, 1).unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", cluster.bootstrap_servers())
            .set("log_level", "3");
        (cluster, base)
    }

    /// An instance's changelog on the mock broker.
    fn instance(base: &ClientConfig) -> Changelog {
        let inputs = ["gpu-usage".to_string()];
        Changelog::new(
            base,
            "changelog",
            "trainspotter",
            &inputs,
            Duration::from_secs(60),
        )
        .unwrap()
    }

    /// A snapshot larger than the producer's queue may hold is sent a group of chunks at a time
    /// and reads back whole (sent at once, its chunks overflowed the queue and the save failed).
    /// The mock broker keeps about 5 MiB of a partition, so the queue is made small here.
    #[test]
    fn a_snapshot_larger_than_the_producers_queue_is_saved_and_read_back() {
        let (_cluster, mut base) = mock_cluster();
        base.set("queue.buffering.max.kbytes", "2048");
        let instance = || instance(&base);
        let mut changelog = instance();
        let shard = Shard::new("gpu-usage", 0);
        assert_eq!(changelog.in_flight, 2, "half of a 2-MiB queue");
        let snapshot: Vec<u8> = (0..8 * CHUNK + 1234).map(|i| (i % 251) as u8).collect();
        changelog
            .save(&shard, 42, &mut snapshot.as_slice())
            .unwrap();
        let manifest = changelog.previous[&shard].clone();
        assert_eq!(manifest.chunks, 9);
        assert_eq!(manifest.bytes, snapshot.len() as u64);
        assert_eq!(manifest.next_offset, 42);
        // Another instance reads it back.
        let dir = tempfile::tempdir().unwrap();
        let into = dir.path().join("gpu-usage-0.changelog");
        assert!(instance().load(&shard, &into).unwrap());
        assert_eq!(std::fs::read(&into).unwrap(), snapshot);
    }

    /// Restoring takes the snapshot the last manifest names, written chunk by chunk to a file,
    /// past a superseded snapshot and the chunks of an interrupted write (which it deletes), and
    /// leaves no other file behind.
    #[test]
    fn a_restore_writes_the_manifests_snapshot_to_its_file_past_older_and_orphaned_chunks() {
        let (_cluster, base) = mock_cluster();
        let instance = || instance(&base);
        let shard = Shard::new("gpu-usage", 0);
        let bytes = |n: usize, seed: usize| -> Vec<u8> {
            (0..n).map(|i| ((i * 7 + seed) % 253) as u8).collect()
        };
        let (older, newer) = (bytes(3 * CHUNK + 10, 1), bytes(2 * CHUNK + 99, 2));
        let mut writer = instance();
        writer.save(&shard, 10, &mut older.as_slice()).unwrap();
        // A write interrupted before its manifest.
        let orphan = chunk_key(&shard, "15-1", 0);
        let sent = writer.send(0, &orphan, Some(&bytes(100, 3))).unwrap();
        writer
            .acknowledged(vec![sent], Instant::now() + Duration::from_secs(10))
            .unwrap();
        writer.save(&shard, 20, &mut newer.as_slice()).unwrap();
        drop(writer);

        let dir = tempfile::tempdir().unwrap();
        let into = dir.path().join("gpu-usage-0.changelog");
        let mut reader = instance();
        assert!(reader.load(&shard, &into).unwrap());
        assert_eq!(std::fs::read(&into).unwrap(), newer);
        assert_eq!(reader.previous[&shard].next_offset, 20);
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "only the snapshot's file is left");
        // The orphaned chunk was deleted (dropping the reader flushes its deletes): the topic's
        // last record of its key is a tombstone.
        drop(reader);
        let consumer: BaseConsumer = base.clone().set("group.id", "check").create().unwrap();
        let (_, high) = consumer
            .fetch_watermarks("changelog", 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("changelog", 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let (mut next, mut orphan_has_payload) = (0, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while next < high && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                next = m.offset() + 1;
                if m.key() == Some(orphan.as_bytes()) {
                    orphan_has_payload = Some(m.payload().is_some());
                }
            }
        }
        assert_eq!(orphan_has_payload, Some(false));
    }
}
