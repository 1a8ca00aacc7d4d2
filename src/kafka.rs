//! The daemon (`run`): a Kafka consumer group feeding the pipeline, a dead-letter producer, an alert
//! producer and the HTTP server.
//!
//! One task owns the state ([`Partitions`]: one engine per assigned partition). It reads a batch (up
//! to `batch_max` messages or 16 MiB of payloads, or what arrives within `batch_wait`), decodes and
//! applies it partition by partition, writes every rejected message to the dead-letter topic and
//! every alert record to the alert topic, and waits for the broker to acknowledge all of them
//! before it records the batch's offsets as processed. A batch whose alerts were raised at a
//! detection boundary that another partition has not reached yet first takes in more messages (up
//! to twice `batch_max` in all), so that the other partition's crossing, usually next in the
//! queue, is evaluated and its records go out with these. Every `state.checkpoint_interval`, on
//! revocation and at shutdown, the state of each partition is checkpointed together with the offset
//! it covers, and only then is that offset committed to the group. On assignment a partition's
//! state is restored from its checkpoint and consumption starts at the checkpoint's offset, whatever
//! the group had committed: every message is in the state exactly once. With
//! `state.changelog_topic` set, checkpoints also go to a compacted topic ([`crate::changelog`]) so
//! that another instance can restore a partition it takes over.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::alert::AlertRecord;
use crate::changelog::{Changelog, SnapshotStore};
use crate::config::{Config, ConfigError};
use crate::decode::{now_ms, DecodeLimits, UsageSample};
use crate::health::Health;
use crate::http::{self, HttpState, Query};
use crate::metrics::Metrics;
use crate::partitions::{self, Partitions, StartAt};
use crate::pipeline::{Pipeline, Rejected, Shard};

/// How long to wait before retrying a failed produce.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("tenant registry topic {topic}: {source}")]
    RegistryTopic { topic: String, source: KafkaError },
    #[error("http server: cannot listen on {addr}: {source}")]
    Http {
        addr: String,
        source: std::io::Error,
    },
    #[error("the pipeline task failed: {0}")]
    Task(String),
}

/// Consumer callbacks: partition state moves with the assignment, readiness, lag statistics.
///
/// With a `StreamConsumer`, rebalance callbacks run inside `recv()`, that is in the worker task and
/// between batches, so the partitions' state is never mid-batch when it is checkpointed or restored.
/// The mutex is therefore never contended; it only makes the sharing explicit.
struct Context {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    partitions: Arc<Mutex<Partitions>>,
    drain_timeout: Duration,
}

impl Context {
    fn set_ready(&self, ready: bool) {
        self.health.set_assigned(ready);
        self.metrics.set_ready(self.health.check().is_ok());
    }

    fn partitions(&self) -> std::sync::MutexGuard<'_, Partitions> {
        // A panic while holding the lock would already have failed the worker; the state is then
        // discarded with the process, never checkpointed.
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        self.set_ready(false);
        let shards: Vec<Shard> = tpl
            .elements()
            .iter()
            .map(|e| Shard::new(e.topic(), e.partition()))
            .collect();
        {
            let mut parts = self.partitions();
            for shard in &shards {
                let offset = match parts.assign(shard) {
                    StartAt::Offset(o) => Offset::Offset(o),
                    StartAt::Beginning => Offset::Beginning,
                };
                if let Err(e) = tpl.set_partition_offset(&shard.topic, shard.partition, offset) {
                    error!(error = %e, "cannot set the start offset of an assigned partition");
                }
            }
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        match result {
            Ok(()) => info!(
                partitions = shards.len(),
                "partitions assigned and restored"
            ),
            Err(e) => error!(error = %e, "assign failed"),
        }
        self.set_ready(true);
    }

    /// Gives partitions up. Messages received but not yet applied are skipped by the generation
    /// check (the next owner reads them again), so what is left is to checkpoint and commit, within
    /// `kafka.drain_timeout`. A partition the deadline leaves unsaved is dropped: its next owner
    /// restores an older snapshot and reads a little more. A lost assignment (this member was
    /// thrown out of the group) is dropped without writing anything.
    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let started = Instant::now();
        let deadline = started + self.drain_timeout;
        let lost = consumer.assignment_lost();
        if lost {
            error!(
                partitions = tpl.count(),
                "partitions lost: this consumer was out of its group (session timeout or max.poll.interval.ms exceeded); dropping their state unsaved"
            );
            self.health
                .set_left_group("its partitions were reassigned while it was away");
        }
        let mut commit = TopicPartitionList::new();
        let mut unsaved = 0usize;
        {
            let mut parts = self.partitions();
            for e in tpl.elements() {
                let shard = Shard::new(e.topic(), e.partition());
                if lost || Instant::now() >= deadline {
                    unsaved += usize::from(!lost);
                    parts.lose(&shard);
                } else if let Some(next) = parts.revoke(&shard, now_ms()) {
                    let _ =
                        commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(next));
                }
            }
        }
        if unsaved > 0 {
            warn!(unsaved, drain_timeout = ?self.drain_timeout,
                  "drain timeout reached: partitions given up without a new checkpoint");
        }
        if commit.count() > 0 && Instant::now() < deadline {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                warn!(error = %e, "commit of revoked partitions failed; their checkpoints are kept");
            }
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = result {
            error!(error = %e, "unassign failed");
        }
        info!(
            partitions = tpl.count(),
            millis = started.elapsed().as_millis() as u64,
            "partitions revoked"
        );
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.health.set_broker_reachable(up);
        self.metrics.set_ready(self.health.check().is_ok());
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag(topic, *partition, p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_broker_reachable(false);
            self.metrics.set_ready(false);
        }
        warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                error!(error = %code, "rebalance error");
                self.set_ready(false);
            }
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
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

/// Settings every client of the daemon shares: brokers, `kafka.properties` and the SASL password.
pub fn client_config(cfg: &Config) -> ClientConfig {
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

/// Fetch settings of the input consumer, before `kafka.consumer_properties` (which override them).
/// Larger fetches carry a catch-up at several times the rate of librdkafka's 1 MiB per partition
/// (BENCHMARKS.md); a fetch waits at most 100 ms for 1 MiB to gather, which bounds the latency it
/// adds when input is slow; the pre-fetch queue is bounded to 16 MiB per partition (librdkafka's
/// default is 64 MiB), so memory stays bounded with many partitions.
pub const FETCH_PROPERTIES: [(&str, &str); 5] = [
    ("max.partition.fetch.bytes", "8388608"),
    ("fetch.max.bytes", "67108864"),
    ("fetch.min.bytes", "1048576"),
    ("fetch.wait.max.ms", "100"),
    ("queued.max.messages.kbytes", "16384"),
];

/// Most payload bytes in one batch (besides `kafka.batch_max` messages): the messages of a batch
/// are held in librdkafka's fetch buffers until it is processed, so this bounds that memory
/// whatever the messages' size, at the pre-fetch queue's bound.
const BATCH_MAX_BYTES: usize = 16 << 20;

/// A batch that raised alerts at a detection boundary some partition has not reached yet takes in
/// up to this many times `kafka.batch_max` messages (within [`BATCH_MAX_BYTES`]) before its
/// records are handed over, so that the other partition's crossing, usually next in the queue, is
/// evaluated first.
const EXTENDED_BATCHES: usize = 2;

/// How many messages a batch of `messages` may hold after taking in more for another partition's
/// boundary: one more `batch_max` at a time, and at most [`EXTENDED_BATCHES`] times it in all.
fn extended_limit(messages: usize, batch_max: usize) -> usize {
    (messages + batch_max).min(EXTENDED_BATCHES * batch_max)
}

fn payload_len(m: &BorrowedMessage<'_>) -> usize {
    m.payload().map_or(0, <[u8]>::len)
}

/// Whether a batch of `messages` holding `bytes` of payloads may take another message.
fn batch_has_room(messages: usize, bytes: usize, batch_max: usize) -> bool {
    messages < batch_max && bytes < BATCH_MAX_BYTES
}

fn consumer(cfg: &Config, ctx: Context) -> Result<StreamConsumer<Context>, KafkaError> {
    let mut c = client_config(cfg);
    c.set("group.id", &cfg.kafka.group_id)
        // Offsets are committed only for what a durable checkpoint covers.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "partition.assignment.strategy",
            cfg.kafka.assignment_strategy.as_str(),
        )
        .set(
            "session.timeout.ms",
            cfg.kafka.session_timeout.0.as_millis().to_string(),
        )
        // A tenth of the session timeout (at most librdkafka's 3 s default), so that members
        // learn of a rebalance, and partitions of a leaving member move, quickly.
        .set(
            "heartbeat.interval.ms",
            (cfg.kafka.session_timeout.0.as_millis() / 10)
                .clamp(100, 3000)
                .to_string(),
        )
        .set("statistics.interval.ms", "2000");
    if let Some(id) = &cfg.kafka.group_instance_id {
        c.set("group.instance.id", id);
    }
    for (k, v) in FETCH_PROPERTIES {
        c.set(k, v);
    }
    for (k, v) in &cfg.kafka.consumer_properties {
        c.set(k, v);
    }
    let consumer: StreamConsumer<Context> = c.create_with_context(ctx)?;
    let mut topics: Vec<&str> = cfg.kafka.topics.iter().map(String::as_str).collect();
    if !cfg.input.repartition_topic.is_empty() {
        topics.push(&cfg.input.repartition_topic);
    }
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
    pub health: Arc<Health>,
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

    /// The partitions this instance owns, as `GET /api/v1/partitions` returns them.
    pub async fn partitions(&self) -> Option<http::PartitionsView> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(Query::Partitions(tx)).await.ok()?;
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
    let health = Arc::new(Health::new(cfg.kafka.session_timeout.ms()));
    let pipeline = Pipeline::new(&cfg, metrics.clone())?;
    let changelog: Option<Box<dyn SnapshotStore>> = if cfg.state.changelog_topic.is_empty() {
        None
    } else {
        Some(Box::new(Changelog::new(
            &client_config(&cfg),
            &cfg.state.changelog_topic,
            &cfg.kafka.group_id,
            &cfg.kafka.topics,
            cfg.state.changelog_timeout.0,
        )?))
    };
    let partitions = Arc::new(Mutex::new(Partitions::new(&cfg, pipeline, changelog)));
    if !cfg.input.repartition_topic.is_empty() {
        let (base, topic, inputs) = (
            client_config(&cfg),
            cfg.input.repartition_topic.clone(),
            cfg.kafka.topics.clone(),
        );
        let ensured = tokio::task::spawn_blocking(move || {
            crate::topics::ensure(&base, &topic, &inputs, &[], Duration::from_secs(10))
        })
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))?;
        if let Err(e) = ensured {
            // Forwarding retries until the topic exists; say why it will not progress.
            error!(error = %e, topic = %cfg.input.repartition_topic, "repartition topic not available yet");
        }
    }
    let ctx = Context {
        metrics: metrics.clone(),
        health: health.clone(),
        partitions: partitions.clone(),
        drain_timeout: cfg.kafka.drain_timeout().0,
    };
    let registry_updates = if cfg.registry.topic.is_empty() {
        None
    } else {
        let (base, topic, timeout) = (
            client_config(&cfg),
            cfg.registry.topic.clone(),
            cfg.registry.topic_timeout.0,
        );
        let started = tokio::task::spawn_blocking(move || {
            crate::registry_topic::start(&base, &topic, timeout)
        })
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))?
        .map_err(|source| DaemonError::RegistryTopic {
            topic: cfg.registry.topic.clone(),
            source,
        })?;
        let errors = partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pipeline
            .apply_registry_updates(&started.initial);
        for e in errors {
            warn!(error = %e, "tenant registry update ignored");
        }
        Some(started.later)
    };
    let consumer = consumer(&cfg, ctx)?;
    let producer = producer(&cfg)?;
    let (query_tx, query_rx) = mpsc::channel(16);
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let state = HttpState {
        metrics: metrics.clone(),
        health: health.clone(),
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
    info!(http = %http_addr, brokers = %cfg.kafka.brokers, topics = ?cfg.kafka.topics,
          state = %cfg.state.dir, "trainspotter started");
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let worker = Worker {
        registry_updates,
        alertmanager: crate::alertmanager::start(&cfg.alertmanager),
        cfg,
        partitions,
        consumer,
        producer,
        metrics: metrics.clone(),
        health: health.clone(),
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
        health,
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

/// The next batch of registry topic updates, or never without a registry topic.
async fn next_updates(
    rx: &mut Option<mpsc::Receiver<Vec<crate::registry_topic::Update>>>,
) -> Option<Vec<crate::registry_topic::Update>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The state-owning task.
struct Worker {
    cfg: Config,
    /// Later records of `registry.topic`.
    registry_updates: Option<mpsc::Receiver<Vec<crate::registry_topic::Update>>>,
    alertmanager: Option<crate::alertmanager::Pusher>,
    partitions: Arc<Mutex<Partitions>>,
    consumer: StreamConsumer<Context>,
    producer: FutureProducer,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// What applying a batch leaves to deliver before its offsets count as processed.
#[derive(Default)]
struct Applied {
    /// Rejected messages (positions in the batch), for the dead-letter topic.
    rejected: Vec<Rejected>,
    /// Samples for the repartition topic, with the position of the message they came from.
    forward: Vec<(usize, UsageSample)>,
    alerts: Vec<AlertRecord>,
    /// Each partition's next offset once all of the above is acknowledged.
    next_offsets: Vec<(Shard, i64)>,
}

impl Applied {
    /// Adds what the messages after the first `start` of the batch gave.
    fn append(&mut self, more: Applied, start: usize) {
        self.rejected.extend(more.rejected.into_iter().map(|mut r| {
            r.index += start;
            r
        }));
        self.forward
            .extend(more.forward.into_iter().map(|(i, s)| (i + start, s)));
        self.alerts.extend(more.alerts);
        self.next_offsets.extend(more.next_offsets);
    }
}

/// How a run of the worker loop ended.
enum Ended {
    /// Every processed message is acknowledged: the state may be checkpointed.
    Clean,
    /// Shutdown came while a batch's dead letters or alerts were unacknowledged: the state holds
    /// messages whose effects are not delivered, so it must not be checkpointed.
    Interrupted,
}

impl Worker {
    fn partitions(&self) -> std::sync::MutexGuard<'_, Partitions> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(
        mut self,
        mut queries: mpsc::Receiver<Query>,
        mut shutdown: oneshot::Receiver<()>,
    ) -> Result<(), DaemonError> {
        let ended = self.consume(&mut queries, &mut shutdown).await;
        self.metrics.set_ready(false);
        let grace = self.cfg.shutdown.grace.0;
        let deadline = Instant::now() + grace;
        match ended {
            Ended::Clean => {
                let durable = self.partitions().checkpoint(now_ms());
                let owned: Vec<(Shard, Option<i64>)> = self
                    .partitions()
                    .owned()
                    .map(|(s, o)| (s.clone(), o))
                    .collect();
                info!(checkpoints = durable.len(), "final checkpoint written");
                self.commit(
                    owned.into_iter().filter_map(|(s, o)| o.map(|o| (s, o))),
                    CommitMode::Sync,
                );
            }
            Ended::Interrupted => {
                // The engines hold a batch whose offsets are not processed: drop them now, so that
                // closing the consumer (which revokes the partitions) cannot checkpoint them.
                self.partitions().abandon();
                warn!("stopping without a final checkpoint: the last batch is consumed again on restart")
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = rdkafka::producer::Producer::flush(
            &self.producer,
            Timeout::After(left.max(Duration::from_millis(1))),
        ) {
            warn!(error = %e, "producer flush did not finish within the grace period");
        }
        info!("trainspotter stopped");
        Ok(())
    }

    /// Commits offsets that durable checkpoints cover.
    fn commit(&self, offsets: impl Iterator<Item = (Shard, i64)>, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        for (shard, next) in offsets {
            let _ = tpl.add_partition_offset(&shard.topic, shard.partition, Offset::Offset(next));
        }
        if tpl.count() == 0 {
            return;
        }
        match self.consumer.commit(&tpl, mode) {
            Ok(()) if matches!(mode, CommitMode::Sync) => {
                info!(partitions = tpl.count(), "offsets committed")
            }
            Ok(()) => {}
            Err(e) => {
                warn!(error = %e, "offset commit failed; the checkpoints still cover the state")
            }
        }
    }

    async fn consume(
        &mut self,
        queries: &mut mpsc::Receiver<Query>,
        shutdown: &mut oneshot::Receiver<()>,
    ) -> Ended {
        let batch_max = self.cfg.kafka.batch_max;
        let batch_wait = self.cfg.kafka.batch_wait.0;
        let mut last_error_log: Option<Instant> = None;
        let mut checkpoints = tokio::time::interval(self.cfg.state.checkpoint_interval.0);
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        let mut last_push = Instant::now();
        let generation = self.partitions().generation();
        let saved = self.partitions().saved_signal();
        loop {
            self.health.beat();
            let first = tokio::select! {
                biased;
                _ = &mut *shutdown => return Ended::Clean,
                Some(q) = queries.recv() => {
                    http::answer(&self.partitions(), q);
                    continue;
                }
                Some(updates) = next_updates(&mut self.registry_updates) => {
                    for e in self.partitions().pipeline.apply_registry_updates(&updates) {
                        warn!(error = %e, "tenant registry update ignored");
                    }
                    continue;
                }
                _ = checkpoints.tick() => {
                    self.partitions().start_checkpoint(now_ms());
                    continue;
                }
                _ = saved.notified() => {
                    let durable = self.partitions().finished(now_ms());
                    self.commit(durable.into_iter(), CommitMode::Async);
                    continue;
                }
                _ = heartbeat.tick() => {
                    self.metrics.set_ready(self.health.check().is_ok());
                    // Gauges follow the state also when no batch arrives (the watermark lag grows).
                    self.partitions().pipeline.refresh_gauges(false);
                    self.partitions().resume_checkpoint(now_ms());
                    match self.partitions().pipeline.poll_registry() {
                        Ok(true) => info!(file = %self.cfg.registry.file, "tenant registry reloaded"),
                        Ok(false) => {}
                        Err(e) => warn!(error = %e, "tenant registry not reloaded; the previous one stays in force"),
                    }
                    if last_push.elapsed() >= self.cfg.alertmanager.resend_interval.0 {
                        self.push_to_alertmanager(Vec::new()).await;
                        last_push = Instant::now();
                    }
                    continue;
                }
                m = self.consumer.recv() => m,
            };
            // Each message with the assignment generation current when it was received.
            let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(batch_max.min(65_536));
            let mut received_at: Vec<u64> = Vec::with_capacity(batch_max.min(65_536));
            match first {
                Ok(m) => {
                    batch.push(m);
                    received_at.push(generation.load(Ordering::SeqCst));
                }
                Err(e) => {
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::PollExceeded)
                    {
                        // librdkafka has left the group; the next poll rejoins it, and the lost
                        // partitions come back through a rebalance.
                        error!(error = %e, "max.poll.interval.ms exceeded: the consumer left its group");
                        self.health.set_left_group("max.poll.interval.ms exceeded");
                        self.metrics.set_ready(false);
                    }
                    // Consumption errors (unknown topic, broker down) are transient: log, keep going.
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        warn!(error = %e, "kafka consumption error");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            // Alert records raised by this batch are timed from here to their acknowledgement.
            let received = Instant::now();
            let deadline = received + batch_wait;
            let mut bytes = batch.iter().map(payload_len).sum::<usize>();
            self.fill(
                &mut batch,
                &mut received_at,
                &mut bytes,
                batch_max,
                deadline,
            )
            .await;
            let collected = Instant::now();
            let mut applied_batch = self.apply(&batch, &received_at);
            // A detection boundary that a partition has just crossed, raising alerts, and another
            // has not reached yet: the other's crossing is most likely next in the queue
            // (librdkafka hands each partition's fetched messages over in runs of thousands). Its
            // evaluation then runs before these records are handed over, and its records go out
            // with them, instead of after they are acknowledged (a second delay of their size).
            let mut extended = 0;
            while !applied_batch.alerts.is_empty()
                && batch_has_room(batch.len(), bytes, EXTENDED_BATCHES * batch_max)
                && self.partitions().pipeline.boundary_pending(now_ms())
            {
                let start = batch.len();
                let limit = extended_limit(batch.len(), batch_max);
                let deadline = Instant::now() + batch_wait;
                self.fill(&mut batch, &mut received_at, &mut bytes, limit, deadline)
                    .await;
                if batch.len() == start {
                    break;
                }
                let more = self.apply(&batch[start..], &received_at[start..]);
                applied_batch.append(more, start);
                extended += 1;
            }
            let Applied {
                rejected,
                forward,
                alerts,
                next_offsets,
            } = applied_batch;
            let applied = Instant::now();
            debug!(
                messages = batch.len(),
                partitions = ?next_offsets.iter().map(|(s, _)| s.partition).collect::<Vec<_>>(),
                alerts = alerts.len(),
                extended,
                collect_ms = (collected - received).as_millis(),
                apply_ms = (applied - collected).as_millis(),
                "batch applied"
            );
            // Dead letters and alerts must be acknowledged before the offsets move on.
            // A shutdown request waits for them, within the grace period, so the batch can be
            // checkpointed.
            let deliveries = async {
                join_all(
                    rejected
                        .iter()
                        .map(|r| self.dead_letter(&batch[r.index], r)),
                )
                .await;
                join_all(forward.iter().map(|(i, s)| self.forward(&batch[*i], s))).await;
                self.publish_alerts(&alerts, received).await;
            };
            tokio::pin!(deliveries);
            // While waiting, queries are still answered (from the state including this batch); a
            // shutdown request gives the deliveries until the end of the grace period.
            let mut stop_by: Option<Instant> = None;
            loop {
                tokio::select! {
                    biased;
                    () = &mut deliveries => break,
                    _ = &mut *shutdown, if stop_by.is_none() => {
                        stop_by = Some(Instant::now() + self.cfg.shutdown.grace.0);
                    }
                    () = tokio::time::sleep_until(stop_by.unwrap_or_else(Instant::now)), if stop_by.is_some() => {
                        warn!(grace = ?self.cfg.shutdown.grace.0,
                              "shutdown: dead letters or alerts still unacknowledged after the grace period");
                        return Ended::Interrupted;
                    }
                    Some(q) = queries.recv() => http::answer(&self.partitions(), q),
                }
            }
            let stopping = stop_by.is_some();
            debug!(
                alerts = alerts.len(),
                dead_letters = rejected.len(),
                deliver_ms = applied.elapsed().as_millis(),
                "batch delivered"
            );
            self.metrics.dead_letter_produced(rejected.len() as u64);
            self.metrics.events_forwarded(forward.len() as u64);
            if !alerts.is_empty() {
                let resolved = alerts
                    .iter()
                    .filter(|a| a.status == crate::alert::Status::Resolved)
                    .cloned()
                    .collect();
                self.push_to_alertmanager(resolved).await;
                last_push = Instant::now();
            }
            let mut parts = self.partitions();
            for (shard, next) in next_offsets {
                parts.processed(&shard, next);
            }
            if stopping {
                return Ended::Clean;
            }
            parts.resume_checkpoint(now_ms());
        }
    }

    /// Adds the messages that arrive by `deadline` to `batch`, while it has room for `limit`
    /// messages (and [`BATCH_MAX_BYTES`] of payloads), each with the assignment generation current
    /// when it was received.
    async fn fill<'c>(
        &'c self,
        batch: &mut Vec<BorrowedMessage<'c>>,
        received_at: &mut Vec<u64>,
        bytes: &mut usize,
        limit: usize,
        deadline: Instant,
    ) {
        let generation = self.partitions().generation();
        while batch_has_room(batch.len(), *bytes, limit) {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    *bytes += payload_len(&m);
                    batch.push(m);
                    received_at.push(generation.load(Ordering::SeqCst));
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "kafka consumption error");
                    break;
                }
                Err(_) => break,
            }
        }
    }

    /// Decodes and applies a batch, partition by partition in offset order. Messages whose
    /// partition was revoked or re-assigned after they were received are skipped: the partition's
    /// owner fetches them again from its checkpoint's offset. With the repartition step, messages
    /// of the input topics are decoded into samples to forward instead of being applied.
    fn apply(&self, batch: &[BorrowedMessage<'_>], received_at: &[u64]) -> Applied {
        let limits = DecodeLimits {
            max_ts_ms: now_ms().saturating_add(self.cfg.input.max_future_skew.ms()),
        };
        let mut parts = self.partitions();
        let mut by_shard: Vec<(Shard, Vec<usize>)> = Vec::new();
        let mut skipped = 0usize;
        for (i, m) in batch.iter().enumerate() {
            match by_shard
                .iter_mut()
                .find(|(s, _)| &*s.topic == m.topic() && s.partition == m.partition())
            {
                Some((_, idx)) => idx.push(i),
                None => by_shard.push((Shard::new(m.topic(), m.partition()), vec![i])),
            }
        }
        for (shard, idx) in by_shard.iter_mut() {
            let before = idx.len();
            idx.retain(|&i| parts.accepts(shard, received_at[i]));
            skipped += before - idx.len();
            let repeats =
                partitions::drop_repeats(parts.next_offset(shard), idx, |i| batch[i].offset());
            if !repeats.is_empty() {
                warn!(topic = %shard.topic, partition = shard.partition, offsets = ?repeats,
                      "messages delivered again at offsets the state already holds: not applied again");
                self.metrics.messages_repeated(repeats.len() as u64);
            }
        }
        by_shard.retain(|(_, idx)| !idx.is_empty());
        if skipped > 0 {
            info!(skipped, "messages fetched before a rebalance skipped; the partition's owner reads them again");
        }
        let mut out = Applied::default();
        let repartition = &self.cfg.input.repartition_topic;
        for (shard, idx) in by_shard {
            let payloads = idx.iter().map(|&i| batch[i].payload());
            let r = if !repartition.is_empty() && *shard.topic != **repartition {
                let (r, samples) = parts.pipeline.route(&shard, payloads, limits);
                out.forward
                    .extend(samples.into_iter().map(|(i, s)| (idx[i], s)));
                r
            } else {
                parts.pipeline.process(&shard, payloads, limits)
            };
            out.rejected.extend(r.into_iter().map(|mut r| {
                r.index = idx[r.index];
                r
            }));
            let last = idx.last().expect("a group has at least one message");
            // Until its records are acknowledged, a revocation takes no checkpoint of it.
            parts.applied(&shard);
            out.next_offsets.push((shard, batch[*last].offset() + 1));
        }
        out.alerts = parts.pipeline.drain_alerts();
        out
    }

    /// Tells Alertmanager (when configured) the active alerts and the ones just resolved.
    async fn push_to_alertmanager(&self, resolved: Vec<AlertRecord>) {
        let Some(pusher) = &self.alertmanager else {
            return;
        };
        let active = self.partitions().pipeline.active_alert_records();
        pusher
            .send(crate::alertmanager::Update { active, resolved })
            .await;
    }

    /// Produces one record, retrying with backoff until the broker acknowledges it; `on_failure`
    /// runs for every failed attempt.
    async fn produce_until_acked(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &OwnedHeaders,
        on_failure: impl Fn(),
    ) {
        let mut backoff = RETRY_BACKOFF;
        loop {
            let mut record = FutureRecord::to(topic)
                .payload(payload)
                .headers(headers.clone());
            if let Some(k) = key {
                record = record.key(k);
            }
            match self.producer.send(record, Timeout::Never).await {
                Ok(_) => return,
                Err((e, _)) => {
                    on_failure();
                    error!(error = %e, topic, "produce failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }

    /// Forwards one sample to the repartition topic keyed by its tenant, retrying until
    /// acknowledged. The headers say where it came from.
    async fn forward(&self, m: &BorrowedMessage<'_>, sample: &UsageSample) {
        let headers = source_headers(OwnedHeaders::new(), m);
        self.produce_until_acked(
            &self.cfg.input.repartition_topic,
            Some(sample.tenant.as_bytes()),
            sample.to_json().as_bytes(),
            &headers,
            || {},
        )
        .await;
    }

    /// Produces one rejected message to the dead-letter topic, retrying until acknowledged.
    async fn dead_letter(&self, m: &BorrowedMessage<'_>, r: &Rejected) {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trainspotter.reason",
                value: Some(r.rejection.reason.code()),
            })
            .insert(Header {
                key: "trainspotter.detail",
                value: Some(r.rejection.detail.as_str()),
            });
        let headers = source_headers(headers, m);
        self.produce_until_acked(
            &self.cfg.kafka.dead_letter_topic,
            m.key(),
            m.payload().unwrap_or_default(),
            &headers,
            || {},
        )
        .await;
    }

    /// Produces alert records in order, each retried until acknowledged; each acknowledgement is
    /// timed from `received`, when the batch that raised the record arrived.
    async fn publish_alerts(&self, alerts: &[AlertRecord], received: Instant) {
        let source = &self.cfg.alerts.source;
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/cloudevents+json"),
        });
        let sends = alerts.iter().map(|a| {
            let headers = &headers;
            async move {
                let body = a.to_cloudevent(source);
                let handed = Instant::now();
                self.produce_until_acked(
                    &self.cfg.kafka.alert_topic,
                    Some(a.dedup_key.as_bytes()),
                    body.as_bytes(),
                    headers,
                    || self.metrics.alert_produce_error(),
                )
                .await;
                self.metrics.alert_delivered(
                    received.elapsed().as_secs_f64(),
                    handed.elapsed().as_secs_f64(),
                );
                debug!(alertname = a.alertname.as_str(), status = a.status.as_str(), tenant = %a.tenant,
                       job = a.job.as_deref().unwrap_or(""), "alert delivered");
            }
        });
        // The idempotent producer keeps per-partition order of records sent concurrently.
        join_all(sends).await;
    }
}

/// Adds where a message came from: `trainspotter.source.{topic,partition,offset}`.
fn source_headers(headers: OwnedHeaders, m: &BorrowedMessage<'_>) -> OwnedHeaders {
    headers
        .insert(Header {
            key: "trainspotter.source.topic",
            value: Some(m.topic()),
        })
        .insert(Header {
            key: "trainspotter.source.partition",
            value: Some(&m.partition().to_string()),
        })
        .insert(Header {
            key: "trainspotter.source.offset",
            value: Some(&m.offset().to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch takes messages until it holds `kafka.batch_max` of them or 16 MiB of payloads,
    /// whichever comes first; a message larger than that makes a batch of its own.
    #[test]
    fn a_batch_stops_at_batch_max_messages_or_16_mib_of_payloads() {
        const MIB: usize = 1 << 20;
        assert!(batch_has_room(0, 0, 16_384));
        assert!(batch_has_room(16_383, 16_383 * 300, 16_384));
        assert!(!batch_has_room(16_384, 16_384 * 300, 16_384));
        assert!(batch_has_room(15, 15 * MIB, 16_384));
        assert!(!batch_has_room(16, 16 * MIB, 16_384));
        assert!(!batch_has_room(1, 20 * MIB, 16_384));
        assert!(!batch_has_room(1, 300, 1));
    }

    /// A batch that takes in more messages for another partition's boundary grows by at most
    /// `batch_max` at a time and never beyond twice `batch_max` in all, however small its first
    /// part was.
    #[test]
    fn a_batch_taking_in_more_holds_at_most_twice_batch_max() {
        assert_eq!(extended_limit(6_605, 16_384), 22_989);
        assert_eq!(extended_limit(22_989, 16_384), 32_768);
        assert_eq!(extended_limit(16_384, 16_384), 32_768);
        assert_eq!(extended_limit(32_768, 16_384), 32_768);
        assert!(!batch_has_room(32_768, 0, extended_limit(32_768, 16_384)));
    }
}
