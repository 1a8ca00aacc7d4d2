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
//! chunks are deleted (tombstones) only after the new manifest is acknowledged. The chunks are read
//! from the checkpoint file and sent a group at a time, each group acknowledged before the next is
//! read: [`IN_FLIGHT`] chunks, or as many as fill half of the producer's queue
//! (`queue.buffering.max.kbytes`) when that is smaller. A snapshot of any size thus takes that much
//! memory in the producer, and never overflows its queue. With
//! `cleanup.policy=compact` the topic therefore always holds, per partition, the newest manifest and
//! the chunks it names. Restoring reads the changelog partition from its start to its high watermark,
//! takes the last manifest of the partition and checks length and CRC-32 of the reassembled bytes;
//! chunks that no manifest names (left by a write interrupted between chunks and manifest) are
//! deleted then.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
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
    /// The newest complete snapshot of `shard`, if any.
    fn load(&mut self, shard: &Shard) -> Result<Option<Vec<u8>>, String>;
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

    fn load(&mut self, shard: &Shard) -> Result<Option<Vec<u8>>, String> {
        let deadline = Instant::now() + self.timeout;
        let n = self.partitions(deadline)?;
        let partition = shard.partition.rem_euclid(n);
        let (low, high) = self
            .reader
            .fetch_watermarks(&self.topic, partition, left(deadline))
            .map_err(|e| format!("changelog watermarks: {e}"))?;
        if high <= low {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(low))
            .map_err(|e| e.to_string())?;
        self.reader.assign(&tpl).map_err(|e| e.to_string())?;
        let manifest_key = manifest_key(shard);
        let chunk_prefix = format!("{manifest_key}/");
        let mut manifest: Option<Manifest> = None;
        let mut chunks: HashMap<String, BTreeMap<u32, Vec<u8>>> = HashMap::new();
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
                        chunks
                            .entry(snapshot.to_string())
                            .or_default()
                            .insert(index, p.to_vec());
                    }
                    None => {
                        if let Some(c) = chunks.get_mut(snapshot) {
                            c.remove(&index);
                        }
                    }
                }
            }
        };
        let _ = self.reader.unassign();
        result?;
        // Chunks no manifest names are left by interrupted writes: delete them.
        for (snapshot, c) in &chunks {
            if manifest.as_ref().is_none_or(|m| &m.snapshot != snapshot) {
                for &i in c.keys() {
                    let _ = self.send(partition, &chunk_key(shard, snapshot, i), None);
                }
            }
        }
        let Some(manifest) = manifest else {
            return Ok(None);
        };
        let parts = chunks.remove(&manifest.snapshot).unwrap_or_default();
        if parts.len() != manifest.chunks as usize || parts.keys().copied().ne(0..manifest.chunks) {
            return Err(format!(
                "changelog snapshot {} of {} is incomplete ({} of {} chunks)",
                manifest.snapshot,
                manifest_key,
                parts.len(),
                manifest.chunks
            ));
        }
        // One copy at a time: each chunk is let go as it is appended.
        let mut bytes = Vec::with_capacity(parts.values().map(Vec::len).sum());
        for part in parts.into_values() {
            bytes.extend_from_slice(&part);
        }
        if bytes.len() as u64 != manifest.bytes || crc32fast::hash(&bytes) != manifest.crc32 {
            return Err(format!(
                "changelog snapshot {} of {} fails its length or checksum",
                manifest.snapshot, manifest_key
            ));
        }
        self.previous.insert(shard.clone(), manifest);
        Ok(Some(bytes))
    }
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

    /// A snapshot larger than the producer's queue may hold is sent a group of chunks at a time
    /// and reads back whole (sent at once, its chunks overflowed the queue and the save failed).
    /// The mock broker keeps about 5 MiB of a partition, so the queue is made small here.
    #[test]
    fn a_snapshot_larger_than_the_producers_queue_is_saved_and_read_back() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("gpu-usage", 1, 1).unwrap();
        cluster.create_topic("changelog", 1, 1).unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", cluster.bootstrap_servers())
            .set("queue.buffering.max.kbytes", "2048")
            .set("log_level", "3");
        let instance = || {
            let inputs = ["gpu-usage".to_string()];
            Changelog::new(
                &base,
                "changelog",
                "trainspotter",
                &inputs,
                Duration::from_secs(60),
            )
            .unwrap()
        };
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
        assert_eq!(instance().load(&shard).unwrap(), Some(snapshot));
    }
}
