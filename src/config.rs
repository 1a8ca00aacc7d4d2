//! Configuration: typed, documented, layered, validated once.
//!
//! Layering, lowest to highest: the built-in defaults (the `Default` impls below, which are also the
//! embedded configuration `demo` runs with), then the TOML file, then environment variables
//! `TRAINSPOTTER__SECTION__KEY` (e.g. `TRAINSPOTTER__KAFKA__BROKERS=host:9092`).
//! Unknown keys are errors. [`Config::validate`] turns the raw form into [`Settings`], the checked
//! form the rest of the daemon uses; every error names the offending key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::catalog::AcceleratorSpec;
use crate::estimate::{RelativeBand, UtilizationBand};
use crate::window::WindowSpec;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(String),
    #[error("invalid configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// A duration written as a humantime string ("30s", "5m", "7d").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn ms(self) -> i64 {
        self.0.as_millis() as i64
    }
    fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"30s\" or \"7d\": {e}"
            ))
        })?;
        // Event-time arithmetic is done in i64 milliseconds; no setting needs more than a century.
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is longer than 100 years"
            )));
        }
        Ok(HumanDuration(d))
    }
}

const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A secret value: never printed by Debug or by `check-config`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// The whole configuration as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub input: InputConfig,
    pub windows: WindowsConfig,
    pub estimate: EstimateConfig,
    pub catalog: CatalogConfig,
    pub detection: DetectionConfig,
    pub alerts: AlertsConfig,
    pub alertmanager: AlertmanagerConfig,
    pub registry: RegistryConfig,
    pub state: StateConfig,
    pub shutdown: ShutdownConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

/// The tenant registry: organisation, jurisdiction, verification and foreign-person status of
/// tenants, and the alert policy that depends on them (format: the `registry` module).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registry file (TOML). Empty: no registry (every tenant unknown, no organisations).
    pub file: String,
    /// The file is checked for changes this often and reloaded without a restart; a file that no
    /// longer parses is reported and the previous registry stays in force.
    pub reload_interval: HumanDuration,
    /// Compacted topic of per-tenant updates (key: tenant id, value: a JSON registry entry,
    /// tombstone: remove), applied over the file (`run` only). Empty: none.
    pub topic: String,
    /// At start the topic is read to its end before consumption begins, for at most this long.
    pub topic_timeout: HumanDuration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            file: String::new(),
            reload_interval: HumanDuration::secs(30),
            topic: String::new(),
            topic_timeout: HumanDuration::secs(30),
        }
    }
}

/// Optional push of active alerts to Alertmanager (`run`), besides the alert topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertmanagerConfig {
    /// Alertmanager base URLs (e.g. `http://alertmanager:9093`); every one gets every alert, as
    /// Prometheus does. Empty: no push.
    pub urls: Vec<String>,
    /// Active alerts are pushed again this often (wall clock), and at once when one fires or
    /// resolves. Each push says the alert is valid for four intervals.
    pub resend_interval: HumanDuration,
    /// Longest wait for one push.
    pub timeout: HumanDuration,
    /// `generatorURL` of every alert (e.g. the daemon's `/api/v1/jobs` behind your ingress).
    pub generator_url: String,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        AlertmanagerConfig {
            urls: Vec::new(),
            resend_interval: HumanDuration::secs(60),
            timeout: HumanDuration::secs(10),
            generator_url: String::new(),
        }
    }
}

/// Checkpointed state (`run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory of the per-partition checkpoint files.
    pub dir: String,
    /// How often the state of every partition that moved is checkpointed; offsets are committed to
    /// the group only after the checkpoint covering them is durable.
    pub checkpoint_interval: HumanDuration,
    /// Compacted Kafka topic every checkpoint also goes to, so that any instance of the group can
    /// restore a partition it is assigned (created, compacted, when missing). Empty: local
    /// checkpoints only, for a single instance or instances that keep their partitions.
    pub changelog_topic: String,
    /// Longest wait for the changelog when writing one partition's snapshot or reading it back.
    /// A write that times out is retried at the next checkpoint (its offsets stay uncommitted); a
    /// read that fails falls back to the local checkpoint, else to the beginning of the partition.
    pub changelog_timeout: HumanDuration,
    /// A job never suspected of training is dropped from state once both its partition and its
    /// tenant have moved on this far without it: the partition's event time since the job's
    /// latest sample arrived, and the tenant's newest sample time past the job's. Its usage stays
    /// in its tenant's and organisation's accounts. A job whose exporter lags or pauses while
    /// others fill the partition is therefore not dropped, nor are the last jobs of a tenant that
    /// went quiet (those leave with the longest window). Jobs suspected at some time are kept
    /// until the longest window has passed. A value below
    /// `detection.job_end_after` or `windows.dedup_horizon` is raised to the larger of them.
    pub ended_job_retention: HumanDuration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: "trainspotter-state".into(),
            checkpoint_interval: HumanDuration::secs(30),
            changelog_topic: String::new(),
            changelog_timeout: HumanDuration::secs(10),
            ended_job_retention: HumanDuration::secs(3600),
        }
    }
}

/// Graceful shutdown (`run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT: stop fetching, finish the batch in hand, checkpoint, commit and flush the
    /// producers within this time.
    pub grace: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: HumanDuration::secs(30),
        }
    }
}

/// Kafka connection, topics and batching.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// Usage topics to consume (native events, schema v1).
    pub topics: Vec<String>,
    /// Topic alerts are produced to (CloudEvents, structured JSON).
    pub alert_topic: String,
    /// Topic rejected events are produced to, with the reason in headers.
    pub dead_letter_topic: String,
    /// Most messages handled as one batch (which also holds at most 16 MiB of payloads). A batch
    /// that raised alerts at a detection boundary another partition has not reached yet takes in
    /// up to twice as many, so that the other partition's crossing is evaluated first.
    pub batch_max: usize,
    /// Longest wait to fill a batch once its first message arrived.
    pub batch_wait: HumanDuration,
    /// Consumer group session timeout.
    pub session_timeout: HumanDuration,
    /// Longest time a revocation may take (checkpoint, changelog, synchronous commit of the revoked
    /// partitions); must be below the session timeout, and is a third of it when unset. Past it
    /// the remaining partitions are given up unsaved and the commit is skipped: the checkpoints
    /// already say where the next owner starts.
    pub drain_timeout: Option<HumanDuration>,
    /// Partition assignment: `cooperative-sticky` (incremental rebalances: members keep consuming
    /// the partitions they keep), or the eager `range` / `roundrobin` (every rebalance revokes every
    /// partition), for brokers whose group coordinator mishandles cooperative rebalances.
    pub assignment_strategy: AssignmentStrategy,
    /// Static group membership (`group.instance.id`): a restarted instance with the same id gets
    /// its partitions back without a rebalance, as long as it returns within the session timeout.
    pub group_instance_id: Option<String>,
    /// Extra librdkafka properties for consumer and producer (e.g. security.protocol).
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the consumer only (e.g. fetch.wait.max.ms).
    pub consumer_properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producers only (e.g. linger.ms).
    pub producer_properties: BTreeMap<String, String>,
    /// SASL password, kept out of logs and `check-config` output.
    pub sasl_password: Option<Secret>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "trainspotter".into(),
            topics: vec!["gpu-usage".into()],
            alert_topic: "trainspotter-alerts".into(),
            dead_letter_topic: "trainspotter-dead-letter".into(),
            batch_max: 16_384,
            batch_wait: HumanDuration(Duration::from_millis(50)),
            session_timeout: HumanDuration::secs(45),
            drain_timeout: None,
            assignment_strategy: AssignmentStrategy::CooperativeSticky,
            group_instance_id: None,
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            sasl_password: None,
        }
    }
}

impl KafkaConfig {
    /// `drain_timeout`, or a third of the session timeout.
    pub fn drain_timeout(&self) -> HumanDuration {
        self.drain_timeout
            .unwrap_or(HumanDuration(self.session_timeout.0 / 3))
    }
}

/// How the group assigns partitions (librdkafka's `partition.assignment.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentStrategy {
    CooperativeSticky,
    Range,
    Roundrobin,
}

impl AssignmentStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::Roundrobin => "roundrobin",
        }
    }
}

/// Input decoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Events further than this ahead of the wall clock are rejected (`bad_timestamp`) by `run`,
    /// so a bogus future timestamp cannot advance the watermark. `replay` does not apply it.
    pub max_future_skew: HumanDuration,
    /// Repartition step for producers that do not key by tenant: events of `kafka.topics` are
    /// decoded and forwarded to this topic keyed by tenant (created when missing), and the windows
    /// are fed from it, so each tenant's events meet in one partition. Empty: the input topics are
    /// keyed by tenant already and are consumed directly.
    pub repartition_topic: String,
    /// Format of each input topic, by topic name: `native` (the default for topics not listed)
    /// `prometheus_adapter` (prometheus-kafka-adapter JSON, one metric per message), `vector`
    /// (Vector's kafka sink with the json or native_json codec, one metric per message),
    /// `otlp_proto` or `otlp_json` (the OpenTelemetry Collector's kafka exporter: one
    /// ExportMetricsServiceRequest per message).
    pub formats: BTreeMap<String, InputFormat>,
    /// Metric-per-message formats: the exporter's scrape interval, the time one joined sample
    /// covers (dcgm-exporter collects every 30 s by default).
    pub scrape_interval: HumanDuration,
    /// Metric-per-message formats: a scrape's readings are joined into one sample once event time
    /// is this far past it.
    pub join_timeout: HumanDuration,
    /// Metric-per-message formats: most scrapes waiting to be joined, per partition; past it the
    /// oldest are joined early.
    pub join_max_pending: usize,
    /// Metric-per-message formats: which labels name tenant, job, node, GPU and model.
    pub labels: LabelsConfig,
}

/// The format of an input topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    Native,
    PrometheusAdapter,
    Vector,
    OtlpJson,
    OtlpProto,
}

/// Label mapping of metric-per-message formats: for each role, label names tried in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelsConfig {
    pub tenant: Vec<String>,
    pub job: Vec<String>,
    pub node: Vec<String>,
    pub gpu: Vec<String>,
    pub accelerator: Vec<String>,
    /// Regular expression whose `job` group names the job of a pod (or Slurm job) label value,
    /// so that the pods of one job count as one job. Empty: the label value as it is.
    pub job_pattern: String,
}

impl Default for LabelsConfig {
    fn default() -> Self {
        let v = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        LabelsConfig {
            tenant: v(&["namespace"]),
            job: v(&["hpc_job", "pod"]),
            node: v(&["Hostname", "hostname"]),
            gpu: v(&["UUID", "gpu"]),
            accelerator: v(&["modelName"]),
            // `trainer-0` and `pretrain-workers-0-7` (StatefulSet and JobSet ordinals) are jobs
            // `trainer` and `pretrain-workers`.
            job_pattern: r"^(?P<job>.+?)(?:-\d+)+$".into(),
        }
    }
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            max_future_skew: HumanDuration::secs(3600),
            repartition_topic: String::new(),
            formats: BTreeMap::new(),
            scrape_interval: HumanDuration::secs(30),
            join_timeout: HumanDuration::secs(60),
            join_max_pending: 1_000_000,
            labels: LabelsConfig::default(),
        }
    }
}

/// One sliding window as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlidingWindow {
    /// Name used in reports, the API and metrics (e.g. "24h").
    pub name: String,
    pub width: HumanDuration,
    /// Must divide `width`.
    pub slide: HumanDuration,
}

/// Windows, lateness and de-duplication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// The watermark trails the latest event time by this much; older samples are counted as late.
    /// Window rings keep the panes it reaches back to in plain form, their older ones encoded
    /// ([`WindowSpec::with_lateness`]).
    pub allowed_lateness: HumanDuration,
    /// How far behind the watermark a duplicate is still recognised (at most the longest window).
    /// Older samples are counted without the check (`unverified` in metrics and reports).
    pub dedup_horizon: HumanDuration,
    pub sliding: Vec<SlidingWindow>,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        let w = |name: &str, width: u64, slide: u64| SlidingWindow {
            name: name.into(),
            width: HumanDuration::secs(width),
            slide: HumanDuration::secs(slide),
        };
        WindowsConfig {
            allowed_lateness: HumanDuration::secs(300),
            dedup_horizon: HumanDuration::secs(600),
            sliding: vec![
                w("1h", 3600, 60),
                w("24h", 86_400, 300),
                w("7d", 7 * 86_400, 3600),
                w("30d", 30 * 86_400, 86_400),
            ],
        }
    }
}

/// Compute estimation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EstimateConfig {
    /// Model-FLOP utilization assumed for samples without tensor activity, while busy: spans the
    /// published large runs (GPT-3 21 %, MT-NLG 30 %, Gopher 33 %, Llama 3 38-43 %, PaLM 46 %).
    pub utilization: UtilizationBand,
    /// Model FLOP per unit of tensor-pipe work (peak x tensor_active): recomputation and partly
    /// fed pipes keep the pipes busier than the model's arithmetic (PaLM 0.80, full
    /// recomputation 0.75, none 1.0).
    pub tensor_band: RelativeBand,
}

impl Default for EstimateConfig {
    fn default() -> Self {
        EstimateConfig {
            utilization: UtilizationBand {
                low: 0.20,
                central: 0.38,
                high: 0.50,
            },
            tensor_band: RelativeBand {
                low: 0.72,
                central: 0.85,
                high: 1.05,
            },
        }
    }
}

/// Accelerator catalog additions and the fallback for unknown models.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Peak dense TFLOP/s assumed for unknown or unreported models (counted in metrics).
    pub fallback_tflops: f64,
    /// Entries checked before the built-in table.
    pub accelerators: Vec<AcceleratorSpec>,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            fallback_tflops: 989.0,
            accelerators: Vec::new(),
        }
    }
}

/// A ramp: a feature scores 0 at `low` and 1 at `high` (either order).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ramp {
    pub low: f64,
    pub high: f64,
}

/// Weights of the features in the training score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureWeights {
    pub accelerators: f64,
    pub duration: f64,
    pub activity: f64,
    pub temporal_variation: f64,
    pub rank_spread: f64,
    pub gang_synchrony: f64,
    pub memory_gib: f64,
}

impl Default for FeatureWeights {
    fn default() -> Self {
        FeatureWeights {
            accelerators: 0.5,
            duration: 0.5,
            activity: 1.0,
            temporal_variation: 1.0,
            rank_spread: 1.0,
            gang_synchrony: 2.0,
            memory_gib: 2.0,
        }
    }
}

/// Training-likeness scoring.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Features are computed over this much recent event time.
    pub window: HumanDuration,
    /// Granularity of the feature panes and of evaluation ticks; divides `window`.
    pub slide: HumanDuration,
    /// Concurrent accelerators: score ramp; reaching `high` is required to alert.
    pub accelerators: Ramp,
    /// Used instead of `accelerators` for a job whose best signal is GPU_UTIL, which is near 100 %
    /// for almost any busy work (HPC, mining): such a job must be a larger gang.
    pub accelerators_gpu_util: Ramp,
    /// Observed duration: score ramp; reaching `high` is required to alert.
    pub duration: Ramp,
    /// Mean activity ramps, per signal (the best available signal is used).
    pub tensor_active: Ramp,
    pub sm_active: Ramp,
    pub gpu_util: Ramp,
    /// Robust variation over time (MAD / median of per-pane activity): low is training-like.
    pub temporal_variation: Ramp,
    /// Robust spread across accelerators (MAD / median of per-device activity): low is training-like.
    pub rank_spread: Ramp,
    /// Share of the devices' variation over time that the gang has in common: high is
    /// training-like (ranks stall and dip together; independent replicas do not).
    pub gang_synchrony: Ramp,
    /// Mean device memory in use per accelerator, GiB: high is training-like (weights, optimizer
    /// state and activations fill the device).
    pub memory_gib: Ramp,
    /// Gang synchrony is only computed when the devices' relative standard deviation over time
    /// reaches this; steadier gangs leave the feature out.
    pub synchrony_min_variation: f64,
    /// Weight of each feature's score in the training score (a weighted mean).
    pub weights: FeatureWeights,
    /// Jobs of one tenant (or of one organisation's tenants) that each pass the duration and
    /// activity gates and started within this of each other are also scored as one gang, so a
    /// run split into parts below the accelerator gate is still seen.
    pub group_start_tolerance: HumanDuration,
    /// Score at or above which a job is suspected of training.
    pub score_threshold: f64,
    /// A suspected job stays suspected, whatever its other gates say, while its gang is past the
    /// size gate and its score has not fallen below this.
    pub resolve_below: f64,
    /// A job without samples for this long has ended; its job alerts resolve.
    pub job_end_after: HumanDuration,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            window: HumanDuration::secs(3600),
            slide: HumanDuration::secs(60),
            accelerators: Ramp {
                low: 8.0,
                high: 64.0,
            },
            accelerators_gpu_util: Ramp {
                low: 64.0,
                high: 256.0,
            },
            duration: Ramp {
                low: 300.0,
                high: 1200.0,
            },
            tensor_active: Ramp {
                low: 0.04,
                high: 0.10,
            },
            sm_active: Ramp {
                low: 0.30,
                high: 0.50,
            },
            gpu_util: Ramp {
                low: 0.60,
                high: 0.90,
            },
            temporal_variation: Ramp {
                low: 0.30,
                high: 0.10,
            },
            rank_spread: Ramp {
                low: 0.30,
                high: 0.10,
            },
            gang_synchrony: Ramp {
                low: 0.15,
                high: 0.50,
            },
            memory_gib: Ramp {
                low: 4.0,
                high: 16.0,
            },
            synchrony_min_variation: 0.05,
            weights: FeatureWeights::default(),
            group_start_tolerance: HumanDuration::secs(900),
            score_threshold: 0.75,
            resolve_below: 0.5,
            job_end_after: HumanDuration::secs(900),
        }
    }
}

/// Compute thresholds, projection and the alert lifecycle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// FLOP thresholds for `ComputeThresholdProjected` / `ComputeThresholdCrossed`.
    pub thresholds_flop: Vec<f64>,
    /// Project a crossing when it is due within this horizon at the current rate.
    pub projection_horizon: HumanDuration,
    /// Name of the sliding window whose rate drives the projection.
    pub projection_window: String,
    /// Do not project from less observed time than this.
    pub projection_min_duration: HumanDuration,
    /// Active alerts are re-sent after this much event time.
    pub resend_interval: HumanDuration,
    /// CloudEvents `source` attribute.
    pub source: String,
    /// Which entities compute alerts (`ComputeThresholdProjected`, `ComputeThresholdCrossed`) are
    /// about: `training`, jobs that have been suspected of training and the tenants and
    /// organisations that have such a job (the regulations count training compute; a large
    /// inference fleet's work is not); or `all` entities.
    pub compute_alerts: ComputeAlerts,
}

/// See [`AlertsConfig::compute_alerts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeAlerts {
    Training,
    All,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            thresholds_flop: vec![1e23, 1e25, 1e26],
            projection_horizon: HumanDuration::secs(14 * 86_400),
            projection_window: "24h".into(),
            projection_min_duration: HumanDuration::secs(1800),
            resend_interval: HumanDuration::secs(300),
            source: "/trainspotter".into(),
            compute_alerts: ComputeAlerts::Training,
        }
    }
}

/// HTTP server (/metrics, /livez, /readyz, /api/v1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// Metrics cardinality.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Tenants with their own series; the rest are summed as tenant="other".
    pub top_tenants: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { top_tenants: 20 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive, e.g. "info" or "trainspotter=debug".
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The checked form of the parts the engine needs, in milliseconds.
#[derive(Debug, Clone)]
pub struct Settings {
    pub windows: Vec<WindowSpec>,
    pub allowed_lateness_ms: i64,
    pub dedup_horizon_ms: i64,
    pub detect_window_ms: i64,
    pub detect_slide_ms: i64,
    /// Slides in the detection window (`detect_window_ms / detect_slide_ms`).
    pub detect_panes: i64,
    /// The newest slides a job's detection ring keeps in its array: those a sample within the
    /// allowed lateness can land in (`ceil(lateness / slide) + 1`, at most `detect_panes`). The
    /// older ones are held encoded ([`crate::slide_archive`]).
    pub detect_live: usize,
    /// Half the detection window in whole slides (at least one), in milliseconds: the span over
    /// which gang synchrony takes each device's variance.
    pub sync_half_ms: i64,
    pub job_end_after_ms: i64,
    pub ended_job_retention_ms: i64,
    pub projection_window: usize,
    pub projection_horizon_ms: i64,
    pub projection_min_duration_ms: i64,
    pub resend_ms: i64,
    pub thresholds: Vec<f64>,
    pub group_start_tolerance_ms: i64,
    /// Compute alerts only for work suspected of training (`alerts.compute_alerts`).
    pub compute_alerts_training_only: bool,
    pub join: crate::join::JoinSettings,
}

impl Config {
    /// Built-in defaults, then `path` (if any), then `TRAINSPOTTER__*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::Load(format!("{}: no such file", p.display())));
            }
            b = b.add_source(config::File::from(p).format(config::FileFormat::Toml));
        }
        b = b.add_source(
            config::Environment::with_prefix("TRAINSPOTTER")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                // Lists from the environment are comma separated.
                .list_separator(",")
                .with_list_parse_key("kafka.topics")
                .with_list_parse_key("alerts.thresholds_flop")
                .with_list_parse_key("input.labels.tenant")
                .with_list_parse_key("input.labels.job")
                .with_list_parse_key("input.labels.node")
                .with_list_parse_key("input.labels.gpu")
                .with_list_parse_key("input.labels.accelerator")
                .with_list_parse_key("alertmanager.urls"),
        );
        let raw = b.build().map_err(|e| ConfigError::Load(e.to_string()))?;
        Self::from_source(raw)
    }

    /// Parses a TOML string over the defaults (no environment), for tests and examples.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        Self::from_source(raw)
    }

    fn from_source(raw: config::Config) -> Result<Config, ConfigError> {
        let cfg: Config = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            ConfigError::Invalid { key: path, message }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every cross-field rule once and returns the engine's checked settings.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let k = &self.kafka;
        if k.topics.is_empty() {
            return Err(invalid(
                "kafka.topics",
                "at least one usage topic is required",
            ));
        }
        if k.batch_max == 0 {
            return Err(invalid("kafka.batch_max", "must be at least 1"));
        }
        if k.drain_timeout().0 >= k.session_timeout.0 {
            return Err(invalid(
                "kafka.drain_timeout",
                "must be below kafka.session_timeout, or a slow revocation costs the group membership",
            ));
        }
        for (n, url) in self.alertmanager.urls.iter().enumerate() {
            if !url.starts_with("http://") {
                return Err(invalid(
                    &format!("alertmanager.urls[{n}]"),
                    "must be an http:// URL (TLS is not built in; use a local proxy or sidecar)",
                ));
            }
        }
        if self.alertmanager.resend_interval.ms() <= 0 {
            return Err(invalid("alertmanager.resend_interval", "must be positive"));
        }
        if self.registry.reload_interval.ms() <= 0 {
            return Err(invalid("registry.reload_interval", "must be positive"));
        }
        if self.registry.topic_timeout.ms() <= 0 {
            return Err(invalid("registry.topic_timeout", "must be positive"));
        }
        if self.detection.group_start_tolerance.ms() < 0 {
            return Err(invalid(
                "detection.group_start_tolerance",
                "must not be negative",
            ));
        }
        let i = &self.input;
        if i.scrape_interval.ms() <= 0 {
            return Err(invalid("input.scrape_interval", "must be positive"));
        }
        if i.join_max_pending == 0 {
            return Err(invalid("input.join_max_pending", "must be at least 1"));
        }
        if i.labels.tenant.is_empty() {
            return Err(invalid(
                "input.labels.tenant",
                "needs at least one label name",
            ));
        }
        if !i.labels.job_pattern.is_empty() {
            match regex::Regex::new(&i.labels.job_pattern) {
                Err(e) => return Err(invalid("input.labels.job_pattern", e.to_string())),
                Ok(r) if !r.capture_names().any(|n| n == Some("job")) => {
                    return Err(invalid(
                        "input.labels.job_pattern",
                        "needs a capture group named `job`",
                    ))
                }
                Ok(_) => {}
            }
        }
        let owned = [
            ("state.changelog_topic", &self.state.changelog_topic),
            ("input.repartition_topic", &self.input.repartition_topic),
        ];
        for (key, t) in owned {
            if t.is_empty() {
                continue;
            }
            if t.len() > 249
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(invalid(
                    key,
                    "not a Kafka topic name ([a-zA-Z0-9._-], at most 249 characters)",
                ));
            }
            if k.topics.contains(t) || [&k.alert_topic, &k.dead_letter_topic].contains(&t) {
                return Err(invalid(
                    key,
                    "must differ from the input, alert and dead-letter topics",
                ));
            }
        }
        if !i.repartition_topic.is_empty() {
            if let Some((topic, _)) = i.formats.iter().find(|(_, f)| **f != InputFormat::Native) {
                return Err(invalid(
                    "input.repartition_topic",
                    format!(
                        "the repartition step forwards native events only; topic {topic:?} is not native"
                    ),
                ));
            }
        }
        if !self.input.repartition_topic.is_empty()
            && self.input.repartition_topic == self.state.changelog_topic
        {
            return Err(invalid(
                "input.repartition_topic",
                "must differ from state.changelog_topic",
            ));
        }
        let w = &self.windows;
        if w.sliding.is_empty() {
            return Err(invalid(
                "windows.sliding",
                "at least one window is required",
            ));
        }
        let mut windows = Vec::new();
        for (i, s) in w.sliding.iter().enumerate() {
            let key = format!("windows.sliding[{i}]");
            let (width, slide) = (s.width.ms(), s.slide.ms());
            if s.name.is_empty() {
                return Err(invalid(&format!("{key}.name"), "must not be empty"));
            }
            if windows.iter().any(|x: &WindowSpec| x.name == s.name) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("duplicate window name {:?}", s.name),
                ));
            }
            if slide <= 0 || width <= 0 {
                return Err(invalid(
                    &format!("{key}.slide"),
                    "width and slide must be positive",
                ));
            }
            if width % slide != 0 {
                return Err(invalid(&format!("{key}.slide"), "slide must divide width"));
            }
            if width / slide > 100_000 {
                return Err(invalid(
                    &format!("{key}.slide"),
                    "more than 100000 panes per window",
                ));
            }
            windows.push(
                WindowSpec::new(s.name.clone(), width, slide)
                    .with_lateness(w.allowed_lateness.ms()),
            );
        }
        let longest = windows.iter().map(|w| w.width_ms()).max().unwrap_or(0);
        if w.dedup_horizon.ms() > longest {
            // Idle keys are evicted after the longest window: de-duplication cannot remember longer.
            return Err(invalid(
                "windows.dedup_horizon",
                "must not exceed the longest window",
            ));
        }
        let u = &self.estimate.utilization;
        if !(0.0 < u.low && u.low <= u.central && u.central <= u.high && u.high <= 1.0) {
            return Err(invalid(
                "estimate.utilization",
                "need 0 < low <= central <= high <= 1",
            ));
        }
        let t = &self.estimate.tensor_band;
        if !(0.0 < t.low && t.low <= t.central && t.central <= t.high && t.high.is_finite()) {
            return Err(invalid(
                "estimate.tensor_band",
                "need 0 < low <= central <= high",
            ));
        }
        if self.catalog.fallback_tflops.is_nan() || self.catalog.fallback_tflops <= 0.0 {
            return Err(invalid("catalog.fallback_tflops", "must be positive"));
        }
        for (i, a) in self.catalog.accelerators.iter().enumerate() {
            if a.all_of.is_empty() {
                return Err(invalid(
                    &format!("catalog.accelerators[{i}].all_of"),
                    "needs at least one token",
                ));
            }
            if a.bf16_tflops.is_nan() || a.bf16_tflops <= 0.0 {
                return Err(invalid(
                    &format!("catalog.accelerators[{i}].bf16_tflops"),
                    "must be positive",
                ));
            }
        }
        let d = &self.detection;
        let (dw, ds) = (d.window.ms(), d.slide.ms());
        if ds <= 0 || dw <= 0 || dw % ds != 0 {
            return Err(invalid(
                "detection.slide",
                "must be positive and divide detection.window",
            ));
        }
        for (key, r) in [
            ("detection.accelerators", d.accelerators),
            ("detection.accelerators_gpu_util", d.accelerators_gpu_util),
            ("detection.memory_gib", d.memory_gib),
            ("detection.duration", d.duration),
            ("detection.tensor_active", d.tensor_active),
            ("detection.sm_active", d.sm_active),
            ("detection.gpu_util", d.gpu_util),
            ("detection.temporal_variation", d.temporal_variation),
            ("detection.rank_spread", d.rank_spread),
            ("detection.gang_synchrony", d.gang_synchrony),
        ] {
            if !(r.low.is_finite() && r.high.is_finite()) || r.low == r.high {
                return Err(invalid(key, "low and high must be finite and different"));
            }
        }
        if !(d.synchrony_min_variation.is_finite() && d.synchrony_min_variation >= 0.0) {
            return Err(invalid(
                "detection.synchrony_min_variation",
                "must be a finite number >= 0",
            ));
        }
        let fw = &d.weights;
        for (key, x) in [
            ("detection.weights.accelerators", fw.accelerators),
            ("detection.weights.duration", fw.duration),
            ("detection.weights.activity", fw.activity),
            (
                "detection.weights.temporal_variation",
                fw.temporal_variation,
            ),
            ("detection.weights.rank_spread", fw.rank_spread),
            ("detection.weights.gang_synchrony", fw.gang_synchrony),
            ("detection.weights.memory_gib", fw.memory_gib),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                return Err(invalid(key, "must be a finite number >= 0"));
            }
        }
        if fw.accelerators
            + fw.duration
            + fw.activity
            + fw.temporal_variation
            + fw.rank_spread
            + fw.gang_synchrony
            + fw.memory_gib
            == 0.0
        {
            return Err(invalid(
                "detection.weights",
                "at least one weight must be positive",
            ));
        }
        if !(0.0 < d.score_threshold && d.score_threshold <= 1.0) {
            return Err(invalid("detection.score_threshold", "must be in (0, 1]"));
        }
        if !(0.0 <= d.resolve_below && d.resolve_below <= d.score_threshold) {
            return Err(invalid(
                "detection.resolve_below",
                "must be in [0, score_threshold]",
            ));
        }
        let a = &self.alerts;
        if a.thresholds_flop
            .iter()
            .any(|x| !(x.is_finite() && *x > 0.0))
        {
            return Err(invalid(
                "alerts.thresholds_flop",
                "thresholds must be positive numbers",
            ));
        }
        let mut thresholds = a.thresholds_flop.clone();
        thresholds.sort_by(f64::total_cmp);
        thresholds.dedup();
        let projection_window = windows
            .iter()
            .position(|w| w.name == a.projection_window)
            .ok_or_else(|| {
                invalid(
                    "alerts.projection_window",
                    format!("no window named {:?}", a.projection_window),
                )
            })?;
        if a.resend_interval.ms() <= 0 {
            return Err(invalid("alerts.resend_interval", "must be positive"));
        }
        if self.metrics.top_tenants > 1000 {
            return Err(invalid(
                "metrics.top_tenants",
                "at most 1000 (label cardinality)",
            ));
        }
        if self.state.dir.is_empty() {
            return Err(invalid("state.dir", "must not be empty"));
        }
        if self.state.checkpoint_interval.ms() <= 0 {
            return Err(invalid("state.checkpoint_interval", "must be positive"));
        }
        // A job leaves neither before it has ended nor while its duplicates can still be told.
        let retention = self
            .state
            .ended_job_retention
            .ms()
            .max(d.job_end_after.ms())
            .max(w.dedup_horizon.ms());
        if self.shutdown.grace.ms() <= 0 {
            return Err(invalid("shutdown.grace", "must be positive"));
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464",
                    self.http.listen
                ),
            ));
        }
        if k.session_timeout.ms() < 6000 {
            return Err(invalid(
                "kafka.session_timeout",
                "must be at least 6s (broker minimum)",
            ));
        }
        Ok(Settings {
            windows,
            allowed_lateness_ms: w.allowed_lateness.ms(),
            dedup_horizon_ms: w.dedup_horizon.ms(),
            detect_window_ms: dw,
            detect_slide_ms: ds,
            detect_panes: dw / ds,
            detect_live: ((w.allowed_lateness.ms().max(0) as u64).div_ceil(ds as u64) + 1)
                .min((dw / ds) as u64) as usize,
            sync_half_ms: (dw / ds / 2).max(1) * ds,
            job_end_after_ms: d.job_end_after.ms(),
            ended_job_retention_ms: retention,
            projection_window,
            projection_horizon_ms: a.projection_horizon.ms(),
            projection_min_duration_ms: a.projection_min_duration.ms(),
            resend_ms: a.resend_interval.ms(),
            thresholds,
            group_start_tolerance_ms: d.group_start_tolerance.ms(),
            compute_alerts_training_only: a.compute_alerts == ComputeAlerts::Training,
            join: crate::join::JoinSettings {
                interval_ms: i.scrape_interval.ms(),
                timeout_ms: i.join_timeout.ms(),
                max_pending: i.join_max_pending,
            },
        })
    }

    /// The effective configuration as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        let k = &mut c.kafka;
        let all = k
            .properties
            .iter_mut()
            .chain(k.consumer_properties.iter_mut())
            .chain(k.producer_properties.iter_mut());
        for (k, v) in all {
            let k = k.to_ascii_lowercase();
            if k.contains("password") || k.contains("secret") || k.contains("key") {
                *v = "<redacted>".into();
            }
        }
        toml::to_string_pretty(&c)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected an invalid-key error, got {other}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_windows() {
        let s = Config::default().validate().unwrap();
        let names: Vec<_> = s.windows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["1h", "24h", "7d", "30d"]);
        assert_eq!(s.windows[1].slide_ms(), 300_000);
        assert_eq!(s.allowed_lateness_ms, 300_000);
        // Live panes: the newest and those five minutes of lateness reach into.
        let live: Vec<_> = s.windows.iter().map(|w| w.live_panes()).collect();
        assert_eq!(live, [6, 2, 2, 2]);
        assert_eq!(s.thresholds, vec![1e23, 1e25, 1e26]);
    }

    #[test]
    fn file_values_override_defaults() {
        let c =
            Config::from_toml("[kafka]\nbrokers = \"k:1\"\n[windows]\nallowed_lateness = \"2m\"\n")
                .unwrap();
        assert_eq!(c.kafka.brokers, "k:1");
        assert_eq!(c.windows.allowed_lateness.ms(), 120_000);
        assert_eq!(c.kafka.group_id, "trainspotter");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("[kafka]\nbrokerz = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("brokerz"), "{e}");
        assert!(key_of(e).starts_with("kafka"));
    }

    #[test]
    fn wrong_types_and_bad_durations_name_the_key() {
        let e = Config::from_toml("[windows]\nallowed_lateness = \"soon\"\n").unwrap_err();
        assert_eq!(key_of(e), "windows.allowed_lateness");
        let e = Config::from_toml("[windows]\nallowed_lateness = \"1000years\"\n").unwrap_err();
        assert_eq!(key_of(e), "windows.allowed_lateness");
        let e = Config::from_toml("[metrics]\ntop_tenants = \"many\"\n").unwrap_err();
        assert_eq!(key_of(e), "metrics.top_tenants");
    }

    #[test]
    fn cross_field_rules_name_the_key() {
        let e = Config::from_toml(
            "[[windows.sliding]]\nname = \"odd\"\nwidth = \"1h\"\nslide = \"7m\"\n\
             [alerts]\nprojection_window = \"odd\"\n",
        )
        .unwrap_err();
        assert_eq!(key_of(e), "windows.sliding[0].slide");
        let e = Config::from_toml("[alerts]\nprojection_window = \"2h\"\n").unwrap_err();
        assert_eq!(key_of(e), "alerts.projection_window");
        let e =
            Config::from_toml("[estimate.utilization]\nlow = 0.5\ncentral = 0.4\nhigh = 0.45\n")
                .unwrap_err();
        assert_eq!(key_of(e), "estimate.utilization");
        let e = Config::from_toml("[alerts]\nthresholds_flop = [1e25, -1.0]\n").unwrap_err();
        assert_eq!(key_of(e), "alerts.thresholds_flop");
        let e = Config::from_toml("[kafka]\nsession_timeout = \"10s\"\ndrain_timeout = \"10s\"\n")
            .unwrap_err();
        assert_eq!(key_of(e), "kafka.drain_timeout");
        let e = Config::from_toml("[state]\nchangelog_topic = \"state/changelog\"\n").unwrap_err();
        assert_eq!(key_of(e), "state.changelog_topic");
        let e = Config::from_toml("[state]\nchangelog_topic = \"gpu-usage\"\n").unwrap_err();
        assert_eq!(key_of(e), "state.changelog_topic");
        let e = Config::from_toml("[input]\nrepartition_topic = \"trainspotter-alerts\"\n")
            .unwrap_err();
        assert_eq!(key_of(e), "input.repartition_topic");
        let e = Config::from_toml("[input.labels]\njob_pattern = \"^(.+)-\\\\d+$\"\n").unwrap_err();
        assert_eq!(key_of(e), "input.labels.job_pattern");
        let e = Config::from_toml("[input.formats]\nx = \"otlp\"\n").unwrap_err();
        assert!(key_of(e).starts_with("input.formats"));
        let e = Config::from_toml(
            "[input]\nrepartition_topic = \"r\"\n[input.formats]\ngpu-usage = \"prometheus_adapter\"\n",
        )
        .unwrap_err();
        assert_eq!(key_of(e), "input.repartition_topic");
        let e = Config::from_toml("[kafka]\nassignment_strategy = \"sticky\"\n").unwrap_err();
        assert_eq!(key_of(e), "kafka.assignment_strategy");
    }

    #[test]
    fn the_drain_timeout_defaults_to_a_third_of_the_session_timeout() {
        let c = Config::from_toml("[kafka]\nsession_timeout = \"6s\"\n").unwrap();
        assert_eq!(c.kafka.drain_timeout().0, Duration::from_secs(2));
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config::from_toml(
            "[kafka]\nsasl_password = \"hunter2\"\n[kafka.properties]\n\"sasl.password\" = \"hunter3\"\n\"client.id\" = \"ts\"\n",
        )
        .unwrap();
        let out = c.to_redacted_toml();
        assert!(
            !out.contains("hunter2") && !out.contains("hunter3"),
            "{out}"
        );
        assert!(out.contains("client.id"));
        assert!(!format!("{:?}", c.kafka.sasl_password).contains("hunter2"));
    }
}
