//! The tenant registry's compacted topic (`registry.topic`): per-tenant updates over the file.
//!
//! Each record is keyed by tenant id; its value is a JSON object with the fields of a registry
//! entry (`organisation`, `jurisdiction`, `verification`, `foreign_person`, `labels`), and a
//! tombstone (no value) removes the tenant. The topic is read from its beginning by every instance
//! (no consumer group, no commits: it is configuration, not input). [`start`] reads it to its
//! current end before returning, so the daemon begins with the whole registry, then keeps reading
//! on a thread of its own and hands later updates to the state-owning task over a channel.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// One record of the registry topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub tenant: String,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Updates read at start, and the channel of later ones.
pub struct Started {
    pub initial: Vec<Update>,
    pub later: mpsc::Receiver<Vec<Update>>,
}

const POLL: Duration = Duration::from_millis(100);

/// Reads `topic` from the beginning to its current end (within `timeout`; a registry that could
/// not be read in full is logged, and the rest arrives later), then follows it on a thread.
pub fn start(base: &ClientConfig, topic: &str, timeout: Duration) -> Result<Started, KafkaError> {
    let mut c = base.clone();
    // librdkafka wants a group id even for assigned partitions; nothing is ever committed.
    c.set(
        "group.id",
        format!("trainspotter-registry-{}", std::process::id()),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false");
    let consumer: BaseConsumer = c.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            ends.push((p, high));
        }
    }
    consumer.assign(&tpl)?;

    let deadline = Instant::now() + timeout;
    let mut initial = Vec::new();
    // Next offset read per partition that still has records before its end.
    let mut pending = ends.clone();
    while !pending.is_empty() && Instant::now() < deadline {
        let Some(m) = consumer.poll(POLL) else {
            continue;
        };
        let m = m?;
        initial.extend(update(&m));
        let (p, next) = (m.partition(), m.offset() + 1);
        pending.retain(|&(q, end)| !(q == p && next >= end));
    }
    if pending.is_empty() {
        info!(topic, records = initial.len(), "tenant registry topic read");
    } else {
        warn!(
            topic,
            records = initial.len(),
            "tenant registry topic not read to its end in time; the rest follows"
        );
    }

    let (tx, later) = mpsc::channel(64);
    let topic = topic.to_string();
    std::thread::Builder::new()
        .name("registry-topic".into())
        .spawn(move || follow(consumer, &topic, tx))
        .map_err(|e| KafkaError::Subscription(e.to_string()))?;
    Ok(Started { initial, later })
}

fn update(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Update> {
    let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
        warn!(
            partition = m.partition(),
            offset = m.offset(),
            "registry record without a UTF-8 tenant key ignored"
        );
        return None;
    };
    Some(Update {
        tenant: key.to_string(),
        value: m.payload().map(<[u8]>::to_vec),
    })
}

/// Hands each poll's records to the state task until it goes away.
fn follow(consumer: BaseConsumer, topic: &str, tx: mpsc::Sender<Vec<Update>>) {
    loop {
        let mut batch = Vec::new();
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            match m {
                Ok(m) => batch.extend(update(&m)),
                Err(e) => warn!(topic, error = %e, "registry topic read failed; retrying"),
            }
            // Whatever else is already here goes in the same batch.
            while batch.len() < 1024 {
                match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => batch.extend(update(&m)),
                    Some(Err(e)) => {
                        warn!(topic, error = %e, "registry topic read failed; retrying")
                    }
                    None => break,
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        if !batch.is_empty() && tx.blocking_send(batch).is_err() {
            return;
        }
    }
}
