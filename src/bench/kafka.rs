//! The Kafka catch-up measurement of `trainspotter bench --brokers`: a topic is preloaded with the
//! fleet's events, read once by a bare rdkafka consumer that only counts messages, then consumed by
//! the daemon itself (`kafka::start`, as `run` starts it) until it has consumed them all. Both
//! readers use the same librdkafka properties; the ratio of their rates is the daemon's cost over
//! reading. The bare consumer gets the daemon's fetch settings (`kafka::FETCH_PROPERTIES`) and
//! `kafka.consumer_properties`, so that both read alike.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, TopicPartitionList};
use serde::Serialize;

use super::{Round, Shape, T0_MS};
use crate::config::Config;
use crate::kafka::client_config;

#[derive(Debug, Clone, Serialize)]
pub struct KafkaOutcome {
    pub topic: String,
    pub partitions: i32,
    pub events: u64,
    pub produce_events_per_s: f64,
    /// The bare consumer, from its first message to its last.
    pub bare_events_per_s: f64,
    /// The daemon, from its first message consumed to its last.
    pub daemon_events_per_s: f64,
    /// The daemon from start (group join, assignment) to caught up.
    pub daemon_total_s: f64,
}

impl KafkaOutcome {
    pub fn ratio(&self) -> f64 {
        self.daemon_events_per_s / self.bare_events_per_s
    }
}

/// Partitions of `topic`, waiting up to 10 s for it to exist; it must be empty.
fn partitions(cfg: &Config, topic: &str) -> anyhow::Result<i32> {
    let probe: BaseConsumer = client_config(cfg).create()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let md = probe.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        if n > 0 {
            for p in 0..n {
                let (_, high) = probe.fetch_watermarks(topic, p, Duration::from_secs(5))?;
                anyhow::ensure!(
                    high == 0,
                    "topic {topic} is not empty (partition {p} ends at {high}): use a new topic"
                );
            }
            return Ok(n);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "topic {topic} does not exist on {} (create it with 2 or more partitions)",
            cfg.kafka.brokers
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes `events` events of the fleet (whole rounds, then part of one) keyed by tenant.
fn produce(
    cfg: &Config,
    topic: &str,
    shape: &Shape,
    round: &mut Round,
    events: u64,
) -> anyhow::Result<f64> {
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(cfg)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut r = 0i64;
    while sent < events {
        round.set_ts(T0_MS + r * shape.interval_ms);
        for (payload, key) in round.payloads().zip(round.keys()) {
            if sent == events {
                break;
            }
            send(&producer, topic, payload, key)?;
            sent += 1;
        }
        r += 1;
    }
    producer.flush(Duration::from_secs(600))?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// Queues one record, waiting while the producer's queue is full.
pub(super) fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    payload: &[u8],
    key: &[u8],
) -> anyhow::Result<()> {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic)
        .payload(payload)
        .key(key);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, back)) => {
                anyhow::ensure!(
                    matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ),
                    "producing to {topic}: {e}"
                );
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Reads every partition from the beginning until `events` messages arrived; events per second
/// from the first message to the last.
fn bare(cfg: &Config, topic: &str, n: i32, events: u64) -> anyhow::Result<f64> {
    let mut c = client_config(cfg);
    c.set("group.id", format!("{}-bare", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (k, v) in crate::kafka::FETCH_PROPERTIES {
        c.set(k, v);
    }
    for (k, v) in &cfg.kafka.consumer_properties {
        c.set(k, v);
    }
    let consumer: BaseConsumer = c.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut seen = 0u64;
    let mut bytes = 0usize;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(3600);
    while seen < events {
        anyhow::ensure!(
            Instant::now() < deadline,
            "bare consumer: {seen} of {events} in an hour"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    std::hint::black_box(bytes);
    Ok(events as f64 / first.expect("events > 0").elapsed().as_secs_f64())
}

/// Starts the daemon on `topic` and waits until it has consumed `events` messages.
async fn daemon(
    cfg: &Config,
    topic: &str,
    events: u64,
    state_dir: &std::path::Path,
) -> anyhow::Result<(f64, f64)> {
    let mut cfg = cfg.clone();
    cfg.kafka.topics = vec![topic.to_string()];
    cfg.kafka.group_id = format!("{}-daemon", cfg.kafka.group_id);
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.state.dir = state_dir.display().to_string();
    let started = Instant::now();
    let running = crate::kafka::start(cfg).await?;
    let mut first = None;
    let deadline = started + Duration::from_secs(3600);
    loop {
        let consumed = running.metrics.events_consumed_total();
        if consumed > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if consumed >= events {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "daemon: {consumed} of {events} in an hour"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = events as f64 / first.expect("events > 0").elapsed().as_secs_f64();
    let total = started.elapsed().as_secs_f64();
    running.stop().await?;
    Ok((rate, total))
}

/// Preloads `topic` with `events` events and measures both readers on it.
pub fn run(
    cfg: &Config,
    shape: &Shape,
    topic: &str,
    events: u64,
    state_dir: &std::path::Path,
) -> anyhow::Result<KafkaOutcome> {
    anyhow::ensure!(events > 0, "no events to measure");
    let n = partitions(cfg, topic)?;
    let mut round = shape.round();
    let produce_rate = produce(cfg, topic, shape, &mut round, events)?;
    drop(round);
    let bare_rate = bare(cfg, topic, n, events)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (daemon_rate, total) = runtime.block_on(daemon(cfg, topic, events, state_dir))?;
    Ok(KafkaOutcome {
        topic: topic.to_string(),
        partitions: n,
        events,
        produce_events_per_s: produce_rate,
        bare_events_per_s: bare_rate,
        daemon_events_per_s: daemon_rate,
        daemon_total_s: total,
    })
}

/// The outcome as a markdown table.
pub fn table(o: &KafkaOutcome) -> String {
    format!(
        "| figure | value |\n|---|---|\n\
         | preloaded | {} events on {} partitions of {} ({:.2}M events/s produced) |\n\
         | bare rdkafka consumer | {:.2}M events/s |\n\
         | daemon catch-up | {:.2}M events/s ({:.2}x the bare consumer); {:.1} s from start to caught up |\n",
        o.events,
        o.partitions,
        o.topic,
        o.produce_events_per_s / 1e6,
        o.bare_events_per_s / 1e6,
        o.daemon_events_per_s / 1e6,
        o.ratio(),
        o.daemon_total_s,
    )
}
