//! `trainspotter demo`: the whole system with no setup.
//!
//! Starts an in-process Kafka-protocol broker (librdkafka's mock cluster), the daemon consuming from
//! it through the same code as `run`, a tap on the alert topic that prints alerts as they arrive, and
//! the fleet simulator producing telemetry into the usage topic with simulated time running
//! `speed` times faster than the wall clock. Ends with a summary of what the daemon holds.

use std::future::Future;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::Message;
use tokio::time::Instant;

use crate::config::Config;
use crate::kafka::{self, DaemonError};
use crate::sim::Fleet;

const MINUTE_MS: i64 = 60_000;
const PARTITIONS: i32 = 4;

pub struct DemoOptions {
    /// Simulated hours.
    pub hours: u32,
    /// Simulated seconds per wall-clock second.
    pub speed: u32,
}

/// Malformed events the demo slips in, to show the dead-letter path.
const BAD_EVENTS: [&str; 3] = [
    r#"{"ts":"not a time","tenant":"chatco","interval_s":60}"#,
    r#"{"ts":1714564830000,"tenant":"chatco","interval_s":60,"tensor_active":1.7}"#,
    "this is not json",
];

/// Most messages the simulator may run ahead of the daemon. The mock broker keeps a bounded log
/// per partition, so an unbounded lead would let it drop messages the daemon has not read yet.
const MAX_LEAD: u64 = 5_000;

/// Counts acknowledged and failed deliveries of the simulator's producer.
#[derive(Default, Clone)]
struct Deliveries {
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!(error = %e, "simulator delivery failed");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

async fn produce(
    p: &ThreadedProducer<Deliveries>,
    topic: &str,
    key: &str,
    payload: &str,
) -> Result<(), KafkaError> {
    loop {
        match p.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

pub async fn run(
    mut cfg: Config,
    opts: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    let usage_topic = cfg.kafka.topics[0].clone();
    cluster.create_topic(&usage_topic, PARTITIONS, 1)?;
    cluster.create_topic(&cfg.kafka.alert_topic, 1, 1)?;
    cluster.create_topic(&cfg.kafka.dead_letter_topic, 1, 1)?;
    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.group_id = "trainspotter-demo".into();
    // A fresh broker has no history, so the demo keeps its checkpoints in a fresh directory.
    let state_dir = std::env::temp_dir().join(format!("trainspotter-demo-{}", std::process::id()));
    cfg.state.dir = state_dir.to_string_lossy().into_owned();
    // The mock broker answers a fetch only when fetch.wait.max.ms expires: keep it short.
    cfg.kafka
        .consumer_properties
        .insert("fetch.wait.max.ms".into(), "5".into());

    let running = kafka::start(cfg.clone()).await?;
    println!("trainspotter demo");
    println!("  embedded Kafka broker   {brokers} (librdkafka mock cluster)");
    println!(
        "  metrics                 http://{}/metrics",
        running.http_addr
    );
    println!(
        "  state API               http://{}/api/v1/tenants , /api/v1/jobs",
        running.http_addr
    );
    println!(
        "  simulating {} h of a fleet at {}x: 512-GPU H100 pretraining, 96-GPU inference, 8-GPU fine-tune, 32 idle GPUs",
        opts.hours, opts.speed
    );
    println!();

    let tap: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "trainspotter-demo-tap")
        .set("auto.offset.reset", "earliest")
        .create()?;
    tap.subscribe(&[cfg.kafka.alert_topic.as_str()])?;
    let (tap_stop, mut tap_stopped) = tokio::sync::oneshot::channel::<()>();
    let tap_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut tap_stopped => break,
                m = tap.recv() => {
                    let Ok(m) = m else { continue };
                    if let Some(Ok(body)) = m.payload_view::<str>() {
                        print_alert(body);
                    }
                }
            }
        }
        // Closing a consumer talks to the broker: do it here, while the broker is still up.
        drop(tap);
    });

    // Produce only once the daemon has joined its group and owns the partitions.
    let ready_by = Instant::now() + Duration::from_secs(30);
    while !running.health.is_assigned() {
        if Instant::now() > ready_by {
            eprintln!("demo: the daemon did not get its partitions within 30 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(deliveries.clone())?;
    // Simulated time ends now, so the daemon's future-timestamp guard never interferes.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let start_ms = (now_ms - opts.hours as i64 * 3_600_000).div_euclid(MINUTE_MS) * MINUTE_MS;
    let end_ms = start_ms + opts.hours as i64 * 3_600_000;
    let mut fleet = Fleet::demo(start_ms, opts.hours, 42);
    let wall_start = Instant::now();
    let mut produced: u64 = 0;
    let mut samples = Vec::new();
    tokio::pin!(shutdown);
    let mut interrupted = false;
    let mut t = start_ms;
    while t <= end_ms {
        samples.clear();
        fleet.samples_at(t, &mut samples);
        for s in &samples {
            produce(&producer, &usage_topic, &s.tenant, &s.to_json()).await?;
        }
        produced += samples.len() as u64;
        if t == start_ms + 90 * MINUTE_MS {
            for bad in BAD_EVENTS {
                produce(&producer, &usage_topic, "chatco", bad).await?;
            }
            produced += BAD_EVENTS.len() as u64;
        }
        t += MINUTE_MS;
        while produced > running.metrics.events_consumed_total() + MAX_LEAD {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Pace simulated time against the wall clock.
        let due = wall_start
            + Duration::from_secs_f64((t - start_ms) as f64 / 1000.0 / opts.speed as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = &mut shutdown => { interrupted = true; break; }
        }
    }
    producer.flush(rdkafka::util::Timeout::After(Duration::from_secs(30)))?;
    let acked = deliveries.acked.load(Ordering::Relaxed);
    let failed = deliveries.failed.load(Ordering::Relaxed);
    // Let the daemon consume everything the broker acknowledged before reading its state.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !interrupted && running.metrics.events_consumed_total() < acked {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut shutdown => interrupted = true,
        }
        if Instant::now() > deadline {
            eprintln!(
                "demo: the daemon consumed {} of {acked} messages within 60 s",
                running.metrics.events_consumed_total()
            );
            break;
        }
    }
    // One more batch cycle so the last alerts reach the alert topic.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tenants = running.tenants().await;
    let jobs = running.jobs().await;
    let running_consumed = running.metrics.events_consumed_total();
    running.stop().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = tap_stop.send(());
    let _ = tap_task.await;
    // Clients first, then the broker they talk to.
    drop(producer);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&state_dir);

    println!();
    println!(
        "summary after {:.1} s: {acked} of {produced} messages acknowledged by the broker ({failed} failed), \
         {} consumed; 3 were malformed and went to the dead-letter topic",
        wall_start.elapsed().as_secs_f64(),
        running_consumed
    );
    if let Some(v) = tenants {
        println!(
            "{:<16} {:>14} {:>12} {:>12}",
            "tenant", "GPU-hours", "24h GPU-h", "FLOP (est.)"
        );
        for t in &v.tenants {
            let day = t
                .windows
                .0
                .iter()
                .find(|(n, _)| n == "24h")
                .map_or(0.0, |(_, v)| *v);
            println!(
                "{:<16} {:>14.1} {:>12.1} {:>12.3e}",
                t.tenant,
                t.accelerator_seconds / 3600.0,
                day / 3600.0,
                t.estimated_flop.central
            );
        }
    }
    if let Some(v) = jobs {
        println!();
        println!(
            "{:<16} {:<16} {:>8} {:>7} {:>10}",
            "tenant", "job", "max GPUs", "score", "suspected"
        );
        for j in &v.jobs {
            println!(
                "{:<16} {:<16} {:>8.0} {:>7.2} {:>10}",
                j.tenant, j.job, j.max_concurrent_accelerators, j.training_score, j.suspected
            );
        }
    }
    Ok(())
}

/// Prints an alert transition; periodic re-sends of an active alert are not news and are skipped.
fn print_alert(body: &str) {
    let Ok(ce) = serde_json::from_str::<serde_json::Value>(body) else {
        return;
    };
    let d = &ce["data"];
    if d["status"] == "firing" && d["startsAt"] != ce["time"] {
        return;
    }
    let status = d["status"].as_str().unwrap_or("?").to_uppercase();
    let time = ce["time"].as_str().unwrap_or("");
    println!(
        "[{time}] {status:<8} {:<26} {}",
        d["alertname"].as_str().unwrap_or("?"),
        d["summary"].as_str().unwrap_or("")
    );
}
