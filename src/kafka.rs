//! The daemon (`run`): a Kafka consumer group feeding the pipeline, a dead-letter producer, an alert
//! producer and the HTTP server.
//!
//! One task owns the pipeline. It reads a batch (up to `batch_max` messages or `batch_wait`), decodes
//! and applies it, writes every rejected message to the dead-letter topic and every alert record to
//! the alert topic, waits for the broker to acknowledge all of them, and only then stores the
//! batch's offsets for the next commit. So nothing is skipped: a crash before the acknowledgement
//! replays the batch (at-least-once delivery; the engine's de-duplication absorbs the replay).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::alert::AlertRecord;
use crate::config::{Config, ConfigError};
use crate::decode::DecodeLimits;
use crate::http::{self, HttpState, Query};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Rejected};

/// How long to wait before retrying a failed produce.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long the final flush of the producer may take on shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("http server: cannot listen on {addr}: {source}")]
    Http {
        addr: String,
        source: std::io::Error,
    },
    #[error("the pipeline task failed: {0}")]
    Task(String),
}

/// Consumer callbacks: readiness on assignment, lag from librdkafka statistics.
struct Context {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag(topic, *partition, p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = tpl.count(), "partitions assigned");
                self.ready.store(true, Ordering::Relaxed);
                self.metrics.set_ready(true);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _: &rdkafka::TopicPartitionList,
    ) {
        if let Err(e) = result {
            // Nothing to commit is reported as an error by librdkafka; it is not one.
            if !matches!(
                e,
                KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)
            ) {
                warn!(error = %e, "offset commit failed");
            }
        }
    }
}

fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    if let Some(p) = &cfg.kafka.sasl_password {
        c.set("sasl.password", &p.0);
    }
    c
}

fn consumer(cfg: &Config, ctx: Context) -> Result<StreamConsumer<Context>, KafkaError> {
    let mut c = client_config(cfg);
    c.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "true")
        // Offsets are stored by the pipeline only after a batch is fully handled.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            cfg.kafka.session_timeout.0.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "5000");
    for (k, v) in &cfg.kafka.consumer_properties {
        c.set(k, v);
    }
    let consumer: StreamConsumer<Context> = c.create_with_context(ctx)?;
    let topics: Vec<&str> = cfg.kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

fn producer(cfg: &Config) -> Result<FutureProducer, KafkaError> {
    let mut c = client_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in &cfg.kafka.producer_properties {
        c.set(k, v);
    }
    c.create()
}

/// A running daemon: its HTTP address and a way to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    queries: mpsc::Sender<Query>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
}

impl Running {
    /// The daemon's tenants, as `GET /api/v1/tenants` returns them.
    pub async fn tenants(&self) -> Option<http::TenantsView> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(Query::Tenants(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The daemon's jobs, as `GET /api/v1/jobs` returns them.
    pub async fn jobs(&self) -> Option<http::JobsView> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(Query::Jobs(None, tx)).await.ok()?;
        rx.await.ok()
    }

    /// Asks the daemon to drain and stop, and waits until it has.
    pub async fn stop(mut self) -> Result<(), DaemonError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task
            .await
            .map_err(|e| DaemonError::Task(e.to_string()))?
    }
}

/// Starts the daemon in the background.
pub async fn start(cfg: Config) -> Result<Running, DaemonError> {
    cfg.validate()?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let pipeline = Pipeline::new(&cfg, metrics.clone())?;
    let consumer = consumer(
        &cfg,
        Context {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
    )?;
    let producer = producer(&cfg)?;
    let (query_tx, query_rx) = mpsc::channel(16);
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        queries: query_tx.clone(),
    };
    let (http_addr, http_task) = http::serve(&cfg.http.listen, state, async {
        let _ = http_stop_rx.await;
    })
    .await
    .map_err(|source| DaemonError::Http {
        addr: cfg.http.listen.clone(),
        source,
    })?;
    info!(http = %http_addr, brokers = %cfg.kafka.brokers, topics = ?cfg.kafka.topics, "trainspotter started");
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let worker = Worker {
        cfg,
        pipeline,
        consumer,
        producer,
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(async move {
        let result = worker.run(query_rx, shutdown_rx).await;
        let _ = http_stop_tx.send(());
        let _ = http_task.await;
        result
    });
    Ok(Running {
        http_addr,
        metrics,
        ready,
        queries: query_tx,
        shutdown: Some(shutdown_tx),
        task,
    })
}

/// Runs the daemon until `shutdown` resolves, then drains and returns.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let running = start(cfg).await?;
    shutdown.await;
    info!("shutdown requested: draining");
    running.stop().await
}

/// The state-owning task.
struct Worker {
    cfg: Config,
    pipeline: Pipeline,
    consumer: StreamConsumer<Context>,
    producer: FutureProducer,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn run(
        mut self,
        mut queries: mpsc::Receiver<Query>,
        mut shutdown: oneshot::Receiver<()>,
    ) -> Result<(), DaemonError> {
        let batch_max = self.cfg.kafka.batch_max;
        let batch_wait = self.cfg.kafka.batch_wait.0;
        let mut last_error_log: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(q) = queries.recv() => {
                    http::answer(&self.pipeline, q);
                    continue;
                }
                m = self.consumer.recv() => m,
            };
            let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(batch_max.min(65_536));
            match first {
                Ok(m) => batch.push(m),
                Err(e) => {
                    // Consumption errors (unknown topic, broker down) are transient: log, keep going.
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        warn!(error = %e, "kafka consumption error");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let deadline = Instant::now() + batch_wait;
            while batch.len() < batch_max {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m),
                    Ok(Err(e)) => {
                        warn!(error = %e, "kafka consumption error");
                        break;
                    }
                    Err(_) => break,
                }
            }
            let limits = DecodeLimits {
                max_ts_ms: now_ms().saturating_add(self.cfg.input.max_future_skew.ms()),
            };
            let rejected = self
                .pipeline
                .process(batch.iter().map(|m| m.payload()), limits);
            let alerts = self.pipeline.drain_alerts();
            // Dead letters and alerts must be acknowledged before the offsets move on.
            let delivered = tokio::select! {
                biased;
                r = async {
                    join_all(rejected.iter().map(|r| self.dead_letter(&batch[r.index], r))).await;
                    self.publish_alerts(&alerts).await;
                } => { let () = r; true }
                _ = &mut shutdown => false,
            };
            if !delivered {
                warn!("shutdown while waiting for the broker: this batch will be consumed again");
                break;
            }
            self.metrics.dead_letter_produced(rejected.len() as u64);
            for m in &batch {
                if let Err(e) = self.consumer.store_offset_from_message(m) {
                    // Happens when the partition was revoked meanwhile; its new owner re-reads it.
                    warn!(error = %e, topic = m.topic(), partition = m.partition(), "cannot store offset");
                }
            }
        }
        self.metrics.set_ready(false);
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => info!("offsets committed"),
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => warn!(error = %e, "final offset commit failed"),
        }
        if let Err(e) =
            rdkafka::producer::Producer::flush(&self.producer, Timeout::After(FLUSH_TIMEOUT))
        {
            warn!(error = %e, "producer flush failed");
        }
        info!("trainspotter stopped");
        Ok(())
    }

    /// Produces one rejected message to the dead-letter topic, retrying until acknowledged.
    async fn dead_letter(&self, m: &BorrowedMessage<'_>, r: &Rejected) {
        let offset = m.offset().to_string();
        let partition = m.partition().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trainspotter.reason",
                value: Some(r.rejection.reason.code()),
            })
            .insert(Header {
                key: "trainspotter.detail",
                value: Some(r.rejection.detail.as_str()),
            })
            .insert(Header {
                key: "trainspotter.source.topic",
                value: Some(m.topic()),
            })
            .insert(Header {
                key: "trainspotter.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "trainspotter.source.offset",
                value: Some(offset.as_str()),
            });
        let payload: &[u8] = m.payload().unwrap_or_default();
        let mut backoff = RETRY_BACKOFF;
        loop {
            let mut record = FutureRecord::to(&self.cfg.kafka.dead_letter_topic)
                .payload(payload)
                .headers(headers.clone());
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            match self.producer.send(record, Timeout::Never).await {
                Ok(_) => return,
                Err((e, _)) => {
                    error!(error = %e, topic = %self.cfg.kafka.dead_letter_topic, "dead-letter produce failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }

    /// Produces alert records in order, each retried until acknowledged.
    async fn publish_alerts(&self, alerts: &[AlertRecord]) {
        let source = &self.cfg.alerts.source;
        let sends = alerts.iter().map(|a| async move {
            let body = a.to_cloudevent(source).to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "content-type", value: Some("application/cloudevents+json") });
            let mut backoff = RETRY_BACKOFF;
            loop {
                let record = FutureRecord::to(&self.cfg.kafka.alert_topic)
                    .key(a.dedup_key.as_str())
                    .payload(body.as_str())
                    .headers(headers.clone());
                match self.producer.send(record, Timeout::Never).await {
                    Ok(_) => {
                        info!(alertname = a.alertname.as_str(), status = a.status.as_str(), tenant = %a.tenant,
                              job = a.job.as_deref().unwrap_or(""), "alert delivered");
                        return;
                    }
                    Err((e, _)) => {
                        self.metrics.alert_produce_error();
                        error!(error = %e, topic = %self.cfg.kafka.alert_topic, "alert produce failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                    }
                }
            }
        });
        // The idempotent producer keeps per-partition order of records sent concurrently.
        join_all(sends).await;
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
