//! Topics the daemon owns (the changelog, the repartition topic): created when missing.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use tracing::info;

/// The partition count of `topic`. A missing topic is created with `configs` and as many
/// partitions as the largest of `inputs`, with the broker's default replication factor.
pub fn ensure(
    base: &ClientConfig,
    topic: &str,
    inputs: &[String],
    configs: &[(&str, &str)],
    timeout: Duration,
) -> Result<i32, String> {
    let deadline = Instant::now() + timeout;
    let client: BaseConsumer = base
        .create()
        .map_err(|e| format!("kafka client for {topic}: {e}"))?;
    let metadata = |t: &str| {
        client
            .fetch_metadata(Some(t), left(deadline))
            .map_err(|e| format!("metadata of {t}: {e}"))
    };
    if let Some(n) = partitions(&metadata(topic)?, topic) {
        return Ok(n);
    }
    let mut want = 1;
    for input in inputs {
        if let Ok(md) = metadata(input) {
            want = want.max(partitions(&md, input).unwrap_or(1));
        }
    }
    let admin: AdminClient<DefaultClientContext> = base
        .create()
        .map_err(|e| format!("kafka admin client: {e}"))?;
    let mut new = NewTopic::new(topic, want, TopicReplication::Fixed(-1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(left(deadline)));
    let results = futures::executor::block_on(admin.create_topics([&new], &opts))
        .map_err(|e| format!("cannot create topic {topic}: {e}"))?;
    for r in results {
        match r {
            Ok(_) => info!(topic, partitions = want, ?configs, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(format!("cannot create topic {topic}: {code}")),
        }
    }
    partitions(&metadata(topic)?, topic).ok_or_else(|| format!("topic {topic} has no partitions"))
}

fn partitions(md: &Metadata, topic: &str) -> Option<i32> {
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|&n| n > 0)
}

/// Time left until `deadline` (at least a millisecond, so a zero timeout never means "forever").
pub fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}
