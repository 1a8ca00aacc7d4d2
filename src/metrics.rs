//! Every Prometheus metric trainspotter exports, created in one place, each reached through one typed
//! method. Each pipeline owns its own [`prometheus::Registry`] (no global registry), so tests never
//! share counters.
//!
//! Names follow `trainspotter_<subsystem>_<name>_<unit>[_total]` in base units. Per-tenant series
//! exist only for the top-N tenants by accelerator time, the rest summed as `tenant="other"`.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::alert::{AlertName, AlertRecord};
use crate::decode::RejectReason;
use crate::engine::EngineStats;

/// Label value for tenants outside the top N.
pub const OTHER_TENANT: &str = "other";

/// Buckets of the alert delivery and acknowledgement histograms, seconds: fine around the 1 s
/// latency target, up to 30 s for a broker that is down.
const ALERT_LATENCY_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    events_consumed: IntCounter,
    events_accepted: IntCounter,
    events_rejected: IntCounterVec,
    events_late: IntCounter,
    events_duplicate: IntCounter,
    events_unverified: IntCounter,
    catalog_fallback: IntCounterVec,
    dead_letter_produced: IntCounter,
    events_forwarded: IntCounter,
    messages_repeated: IntCounter,
    alert_records: IntCounterVec,
    alerts_active: IntGaugeVec,
    alert_produce_errors: IntCounter,
    alert_delivery: Histogram,
    alert_acknowledgement: Histogram,
    jobs_suspected: IntGauge,
    state_tenants: IntGauge,
    state_jobs: IntGauge,
    state_series: IntGauge,
    join_pending: IntGauge,
    join_forced: IntGauge,
    watermark: Gauge,
    watermark_lag: Gauge,
    max_event_time: Gauge,
    tenant_accelerator_seconds: GaugeVec,
    tenant_estimated_flop: GaugeVec,
    consumer_lag: IntGaugeVec,
    batch_duration: Histogram,
    evaluation_duration: Histogram,
    checkpoint_encode: Histogram,
    ready: IntGauge,
    checkpoint_written: IntCounterVec,
    checkpoint_failures: IntCounterVec,
    checkpoint_last: Gauge,
    checkpoint_bytes: IntGauge,
    restores: IntCounterVec,
    registry_reloads: IntCounterVec,
    registry_updates: IntCounterVec,
    registry_tenants: IntGauge,
    /// Tenants with their own series now.
    tenants_exported: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Where a checkpoint goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Local,
    Changelog,
}

impl Store {
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Local => "local",
            Store::Changelog => "changelog",
        }
    }
}

/// Registers a metric and hands it back. Names and help texts are static, so failures are bugs.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: prometheus::Result<M>,
) -> M {
    let m = m.expect("metric names and labels are static and valid");
    r.register(Box::new(m.clone()))
        .expect("each metric is registered once");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help))
}

fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(r, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    register(r, Gauge::new(name, help))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(r, GaugeVec::new(Opts::new(name, help), labels))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's own metrics, as the standard client libraries expose them (Linux only): its
/// resident memory is what a container's memory limit is compared with, its open file
/// descriptors what their limit is.
pub const PROCESS_METRICS: [&str; 7] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("a new registry takes the process collector");
        let m = Metrics {
            events_consumed: counter(&r, "trainspotter_ingest_events_consumed_total", "Messages read from the input."),
            events_accepted: counter(&r, "trainspotter_ingest_events_accepted_total", "Samples counted in the windows."),
            events_rejected: counter_vec(
                &r,
                "trainspotter_ingest_events_rejected_total",
                "Messages rejected by the decoder, by reason.",
                &["reason"],
            ),
            events_late: counter(
                &r,
                "trainspotter_window_events_late_total",
                "Accepted samples older than the watermark (still counted).",
            ),
            events_duplicate: counter(
                &r,
                "trainspotter_window_events_duplicate_total",
                "Samples dropped as duplicates of one already counted.",
            ),
            events_unverified: counter(
                &r,
                "trainspotter_window_events_unverified_total",
                "Accepted samples too old to be checked for duplicates.",
            ),
            catalog_fallback: counter_vec(
                &r,
                "trainspotter_catalog_fallback_samples_total",
                "Samples estimated with the fallback peak, by cause (unknown or unspecified model).",
                &["cause"],
            ),
            dead_letter_produced: counter(
                &r,
                "trainspotter_ingest_dead_letter_produced_total",
                "Rejected messages written to the dead-letter path.",
            ),
            events_forwarded: counter(
                &r,
                "trainspotter_ingest_events_forwarded_total",
                "Samples forwarded to the repartition topic, keyed by tenant (input.repartition_topic).",
            ),
            messages_repeated: counter(
                &r,
                "trainspotter_ingest_messages_repeated_total",
                "Messages delivered again at an offset their partition's state already holds (not applied again).",
            ),
            alert_records: counter_vec(
                &r,
                "trainspotter_alerts_records_total",
                "Alert records emitted, by alert name and status (re-sends included).",
                &["alertname", "status"],
            ),
            alerts_active: int_gauge_vec(&r, "trainspotter_alerts_active", "Active alerts by name.", &["alertname"]),
            alert_produce_errors: counter(
                &r,
                "trainspotter_alerts_produce_errors_total",
                "Alert records the producer failed to deliver (retried).",
            ),
            alert_delivery: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "trainspotter_alerts_delivery_seconds",
                        "Time from receiving the batch whose events raised an alert record (its evaluation runs within that batch) to the broker's acknowledgement of the record.",
                    )
                    .buckets(ALERT_LATENCY_BUCKETS.to_vec()),
                ),
            ),
            alert_acknowledgement: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "trainspotter_alerts_acknowledgement_seconds",
                        "Time from handing an alert record to the producer to the broker's acknowledgement of it: the part of trainspotter_alerts_delivery_seconds after the batch's evaluation.",
                    )
                    .buckets(ALERT_LATENCY_BUCKETS.to_vec()),
                ),
            ),
            jobs_suspected: int_gauge(&r, "trainspotter_detect_jobs_suspected", "Jobs currently suspected of training."),
            state_tenants: int_gauge(&r, "trainspotter_state_tenants", "Tenants held in state."),
            state_jobs: int_gauge(&r, "trainspotter_state_jobs", "Jobs held in state."),
            state_series: int_gauge(&r, "trainspotter_state_series", "Device series held in state."),
            join_pending: int_gauge(
                &r,
                "trainspotter_join_pending_scrapes",
                "Scrapes of exporter formats waiting to be joined into samples.",
            ),
            join_forced: int_gauge(
                &r,
                "trainspotter_join_forced_scrapes",
                "Scrapes joined early because the join buffer was full, in the state's lifetime (input.join_max_pending).",
            ),
            watermark: gauge(&r, "trainspotter_window_watermark_timestamp_seconds", "Current watermark, Unix time."),
            watermark_lag: gauge(
                &r,
                "trainspotter_window_watermark_lag_seconds",
                "Wall-clock time minus the watermark at the last refresh.",
            ),
            max_event_time: gauge(
                &r,
                "trainspotter_window_max_event_timestamp_seconds",
                "Latest event time seen, Unix time.",
            ),
            tenant_accelerator_seconds: gauge_vec(
                &r,
                "trainspotter_tenant_accelerator_seconds",
                "Lifetime accelerator-seconds held in state as of the latest evaluation (a job's samples count from the evaluation after them), top-N tenants plus tenant=\"other\".",
                &["tenant"],
            ),
            tenant_estimated_flop: gauge_vec(
                &r,
                "trainspotter_tenant_estimated_flop",
                "Lifetime central FLOP estimate held in state as of the latest evaluation (a job's samples count from the evaluation after them), top-N tenants plus tenant=\"other\".",
                &["tenant"],
            ),
            consumer_lag: int_gauge_vec(
                &r,
                "trainspotter_kafka_consumer_lag_messages",
                "Messages between the consumed position and the high watermark, per partition.",
                &["topic", "partition"],
            ),
            batch_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "trainspotter_pipeline_batch_duration_seconds",
                        "Time to decode and apply one batch.",
                    )
                    .buckets(vec![1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                ),
            ),
            evaluation_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "trainspotter_detect_evaluation_duration_seconds",
                        "Time to evaluate every job, tenant and organisation that changed (or holds an alert) at one detection boundary; the partition's batch waits for it.",
                    )
                    .buckets(vec![1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                ),
            ),
            checkpoint_encode: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "trainspotter_checkpoint_encode_seconds",
                        "Time to encode one partition's checkpoint into its temporary file on the consumer's thread, which takes no batch meanwhile (the fsync and the changelog that follow run on a thread of their own).",
                    )
                    .buckets(vec![1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                ),
            ),
            ready: int_gauge(
                &r,
                "trainspotter_ready",
                "1 when /readyz is ready: partitions assigned and restored, a broker reachable, in the group, not stalled.",
            ),
            checkpoint_written: counter_vec(
                &r,
                "trainspotter_checkpoint_written_total",
                "Partition checkpoints made durable, by store (local file, changelog topic).",
                &["store"],
            ),
            checkpoint_failures: counter_vec(
                &r,
                "trainspotter_checkpoint_failures_total",
                "Partition checkpoints that failed (offsets stay uncommitted, retried), by store.",
                &["store"],
            ),
            checkpoint_last: gauge(
                &r,
                "trainspotter_checkpoint_last_success_timestamp_seconds",
                "The time as of which every owned partition was last durably checkpointed (the start of the last checkpoint round that completed), Unix time.",
            ),
            checkpoint_bytes: int_gauge(
                &r,
                "trainspotter_checkpoint_size_bytes",
                "Size of the last partition checkpoint written.",
            ),
            restores: counter_vec(
                &r,
                "trainspotter_checkpoint_restores_total",
                "Partition assignments, by where the state came from (checkpoint, previous_checkpoint, changelog, beginning).",
                &["source"],
            ),
            registry_reloads: counter_vec(
                &r,
                "trainspotter_registry_reloads_total",
                "Tenant registry file reloads, by result (ok, or error: the previous registry stays in force).",
                &["result"],
            ),
            registry_updates: counter_vec(
                &r,
                "trainspotter_registry_updates_total",
                "Tenant registry updates from registry.topic, by result (ok, or error: the update was ignored).",
                &["result"],
            ),
            registry_tenants: int_gauge(
                &r,
                "trainspotter_registry_tenants",
                "Tenants in the tenant registry in force.",
            ),
            tenants_exported: Default::default(),
            registry: r,
        };
        // Pre-create the bounded label sets so dashboards see zeros rather than absent series.
        for reason in RejectReason::ALL {
            m.events_rejected.with_label_values(&[reason.code()]);
        }
        for name in AlertName::ALL {
            m.alerts_active.with_label_values(&[name.as_str()]);
            for status in ["firing", "resolved"] {
                m.alert_records.with_label_values(&[name.as_str(), status]);
            }
        }
        for cause in ["unknown", "unspecified"] {
            m.catalog_fallback.with_label_values(&[cause]);
        }
        for store in [Store::Local, Store::Changelog] {
            m.checkpoint_written.with_label_values(&[store.as_str()]);
            m.checkpoint_failures.with_label_values(&[store.as_str()]);
        }
        for result in ["ok", "error"] {
            m.registry_reloads.with_label_values(&[result]);
            m.registry_updates.with_label_values(&[result]);
        }
        for source in [
            "checkpoint",
            "previous_checkpoint",
            "changelog",
            "beginning",
        ] {
            m.restores.with_label_values(&[source]);
        }
        m
    }

    pub fn checkpoint_written(&self, store: Store, bytes: usize) {
        self.checkpoint_written
            .with_label_values(&[store.as_str()])
            .inc();
        self.checkpoint_bytes.set(bytes as i64);
    }

    pub fn checkpoint_failed(&self, store: Store) {
        self.checkpoint_failures
            .with_label_values(&[store.as_str()])
            .inc();
    }

    /// Every owned partition is covered by a durable checkpoint as of `unix_ms`.
    pub fn checkpoint_complete(&self, unix_ms: i64) {
        self.checkpoint_last.set(unix_ms as f64 / 1000.0);
    }

    /// A reload of the tenant registry file: `tenants` in force afterwards.
    pub fn registry_reloaded(&self, ok: bool, tenants: usize) {
        self.registry_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.registry_tenants.set(tenants as i64);
    }

    /// One update from the registry topic.
    pub fn registry_updated(&self, ok: bool) {
        self.registry_updates
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The tenant registry in force (at start and after updates).
    pub fn registry_loaded(&self, tenants: usize) {
        self.registry_tenants.set(tenants as i64);
    }

    pub fn restored(&self, source: &str) {
        self.restores.with_label_values(&[source]).inc();
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    /// Messages read so far (for callers that wait for a known input to be consumed).
    pub fn events_consumed_total(&self) -> u64 {
        self.events_consumed.get()
    }

    pub fn events_consumed(&self, n: u64) {
        self.events_consumed.inc_by(n);
    }

    pub fn event_rejected(&self, reason: RejectReason) {
        self.events_rejected
            .with_label_values(&[reason.code()])
            .inc();
    }

    pub fn dead_letter_produced(&self, n: u64) {
        self.dead_letter_produced.inc_by(n);
    }

    pub fn events_forwarded(&self, n: u64) {
        self.events_forwarded.inc_by(n);
    }

    pub fn messages_repeated(&self, n: u64) {
        self.messages_repeated.inc_by(n);
    }

    pub fn alert_produce_error(&self) {
        self.alert_produce_errors.inc();
    }

    /// An alert record acknowledged: `since_batch` seconds after its batch was received,
    /// `since_produced` after it was handed to the producer.
    pub fn alert_delivered(&self, since_batch: f64, since_produced: f64) {
        self.alert_delivery.observe(since_batch);
        self.alert_acknowledgement.observe(since_produced);
    }

    /// The delivery histogram: (upper bound, cumulative count) per bucket, and the count.
    pub fn alert_delivery_buckets(&self) -> (Vec<(f64, u64)>, u64) {
        buckets(&self.alert_delivery)
    }

    /// The evaluation duration histogram, as [`Metrics::alert_delivery_buckets`].
    pub fn evaluation_buckets(&self) -> (Vec<(f64, u64)>, u64) {
        buckets(&self.evaluation_duration)
    }

    /// Jobs and device series held in state, as last exported.
    pub fn state_sizes(&self) -> (i64, i64) {
        (self.state_jobs.get(), self.state_series.get())
    }

    pub fn batch_processed(&self, seconds: f64) {
        self.batch_duration.observe(seconds);
    }

    pub fn evaluated(&self, seconds: f64) {
        self.evaluation_duration.observe(seconds);
    }

    pub fn checkpoint_encoded(&self, seconds: f64) {
        self.checkpoint_encode.observe(seconds);
    }

    /// The checkpoint encoding histogram, as [`Metrics::alert_delivery_buckets`].
    pub fn checkpoint_encode_buckets(&self) -> (Vec<(f64, u64)>, u64) {
        buckets(&self.checkpoint_encode)
    }

    /// Checkpoint encodings observed and their total seconds.
    pub fn checkpoint_encode_totals(&self) -> (u64, f64) {
        totals(&self.checkpoint_encode)
    }

    /// Alert records delivered and their total seconds from batch received to acknowledged.
    pub fn alert_delivery_totals(&self) -> (u64, f64) {
        totals(&self.alert_delivery)
    }

    /// Alert records acknowledged and their total seconds from hand-over to acknowledgement.
    pub fn alert_acknowledgement_totals(&self) -> (u64, f64) {
        totals(&self.alert_acknowledgement)
    }

    /// Evaluations observed and their total seconds.
    pub fn evaluation_totals(&self) -> (u64, f64) {
        totals(&self.evaluation_duration)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(ready as i64);
    }

    /// A partition is no longer this instance's: its lag series goes.
    pub fn partition_released(&self, topic: &str, partition: i32) {
        let _ = self
            .consumer_lag
            .remove_label_values(&[topic, &partition.to_string()]);
    }

    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    pub fn alert_emitted(&self, r: &AlertRecord) {
        self.alert_records
            .with_label_values(&[r.alertname.as_str(), r.status.as_str()])
            .inc();
    }

    /// Adds what the engine counted since the previous snapshot.
    pub fn engine_progress(&self, before: &EngineStats, now: &EngineStats) {
        self.events_accepted.inc_by(now.accepted - before.accepted);
        self.events_late.inc_by(now.late - before.late);
        self.events_duplicate
            .inc_by(now.duplicate - before.duplicate);
        self.events_unverified
            .inc_by(now.unverified - before.unverified);
        self.catalog_fallback
            .with_label_values(&["unknown"])
            .inc_by(now.unknown_accelerator - before.unknown_accelerator);
        self.catalog_fallback
            .with_label_values(&["unspecified"])
            .inc_by(now.unspecified_accelerator - before.unspecified_accelerator);
    }

    /// Sets the state gauges from a snapshot of the engine.
    pub fn state(&self, s: &StateGauges) {
        self.state_tenants.set(s.tenants as i64);
        self.state_jobs.set(s.jobs as i64);
        self.state_series.set(s.series as i64);
        self.join_pending.set(s.join_pending as i64);
        self.join_forced.set(s.join_forced as i64);
        self.jobs_suspected.set(s.suspected as i64);
        if let Some(w) = s.watermark_ms {
            self.watermark.set(w as f64 / 1000.0);
            self.watermark_lag.set((s.now_ms - w) as f64 / 1000.0);
        }
        if let Some(m) = s.max_event_ms {
            self.max_event_time.set(m as f64 / 1000.0);
        }
        for (name, n) in s.active_alerts {
            self.alerts_active
                .with_label_values(&[name.as_str()])
                .set(n as i64);
        }
    }

    /// Replaces the per-tenant series with the top `n` tenants by accelerator time (ties by name)
    /// plus "other", the sum of the rest. A tenant named "other" is counted in "other". Selects
    /// the top `n` without sorting every tenant: refreshed every second, with 100k tenants.
    pub fn tenants(&self, mut totals: Vec<(&str, (f64, f64))>, n: usize) {
        let (mut other_s, mut other_f) = (0.0, 0.0);
        totals.retain(|&(tenant, (secs, flop))| {
            let other = tenant == OTHER_TENANT;
            if other {
                other_s += secs;
                other_f += flop;
            }
            !other
        });
        if totals.len() > n {
            totals.select_nth_unstable_by(n, |a, b| {
                b.1 .0.total_cmp(&a.1 .0).then_with(|| a.0.cmp(b.0))
            });
            for (_, (secs, flop)) in totals.drain(n..) {
                other_s += secs;
                other_f += flop;
            }
        }
        let set = |tenant: &str, (secs, flop): (f64, f64)| {
            self.tenant_accelerator_seconds
                .with_label_values(&[tenant])
                .set(secs);
            self.tenant_estimated_flop
                .with_label_values(&[tenant])
                .set(flop);
        };
        let mut shown = std::collections::BTreeSet::new();
        for (tenant, total) in totals {
            set(tenant, total);
            shown.insert(tenant.to_owned());
        }
        // Series of tenants no longer in the top N go only after the new values are set, so a
        // scrape never sees a partial set.
        let mut exported = self
            .tenants_exported
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for gone in exported.difference(&shown) {
            let _ = self.tenant_accelerator_seconds.remove_label_values(&[gone]);
            let _ = self.tenant_estimated_flop.remove_label_values(&[gone]);
        }
        *exported = shown;
        set(OTHER_TENANT, (other_s, other_f));
    }
}

/// Engine state summarised for gauges.
#[derive(Debug, Clone)]
pub struct StateGauges {
    pub tenants: usize,
    pub jobs: usize,
    pub series: usize,
    pub join_pending: usize,
    pub join_forced: u64,
    pub suspected: usize,
    pub watermark_ms: Option<i64>,
    pub max_event_ms: Option<i64>,
    /// Wall clock at the refresh, epoch ms.
    pub now_ms: i64,
    pub active_alerts: [(AlertName, usize); 3],
}

/// A histogram's observations and their sum.
fn totals(h: &Histogram) -> (u64, f64) {
    (h.get_sample_count(), h.get_sample_sum())
}

/// A histogram's (upper bound, cumulative count) per bucket, and its count.
fn buckets(h: &Histogram) -> (Vec<(f64, u64)>, u64) {
    use prometheus::core::Metric as _;
    let h = h.metric();
    let h = h.get_histogram();
    let buckets = h
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    (buckets, h.get_sample_count())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each process metric is exposed with a value, the resident memory being this process's
    /// (at least the few MiB a test binary holds) and the threads at least this one.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_metrics_are_exposed_with_this_process_values() {
        let text = Metrics::new().render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} is not exposed"))
                .parse()
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        for name in PROCESS_METRICS {
            assert!(value(name) >= 0.0, "{name}");
        }
        assert!(value("process_resident_memory_bytes") > 1_048_576.0);
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_open_fds") >= 1.0);
    }

    #[test]
    fn a_tenant_named_other_is_summed_into_other_and_takes_no_top_n_place() {
        let m = Metrics::new();
        let tenant_lines = |m: &Metrics| -> Vec<String> {
            m.render()
                .lines()
                .filter(|l| l.starts_with("trainspotter_tenant_accelerator_seconds{"))
                .map(str::to_owned)
                .collect()
        };
        let totals = vec![
            ("other", (100.0, 0.0)),
            ("b", (5.0, 0.0)),
            ("a", (5.0, 0.0)),
            ("c", (1.0, 0.0)),
        ];
        m.tenants(totals, 2);
        assert_eq!(
            tenant_lines(&m),
            [
                "trainspotter_tenant_accelerator_seconds{tenant=\"a\"} 5",
                "trainspotter_tenant_accelerator_seconds{tenant=\"b\"} 5",
                "trainspotter_tenant_accelerator_seconds{tenant=\"other\"} 101",
            ]
        );
        // A tenant that drops out of the top N loses its series.
        m.tenants(
            vec![("c", (9.0, 0.0)), ("a", (6.0, 0.0)), ("b", (5.0, 0.0))],
            2,
        );
        assert_eq!(
            tenant_lines(&m),
            [
                "trainspotter_tenant_accelerator_seconds{tenant=\"a\"} 6",
                "trainspotter_tenant_accelerator_seconds{tenant=\"c\"} 9",
                "trainspotter_tenant_accelerator_seconds{tenant=\"other\"} 5",
            ]
        );
    }

    #[test]
    fn per_tenant_series_are_bounded_to_top_n_plus_other() {
        let m = Metrics::new();
        let names: Vec<String> = (0..50).map(|i| format!("t{i:02}")).collect();
        let totals = names
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), (i as f64, 10.0 * i as f64)))
            .collect();
        m.tenants(totals, 3);
        let text = m.render();
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("trainspotter_tenant_accelerator_seconds{"))
            .collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(text.contains("trainspotter_tenant_accelerator_seconds{tenant=\"t49\"} 49"));
        let other: f64 = (0..47).map(|i| i as f64).sum();
        assert!(text.contains(&format!(
            "trainspotter_tenant_accelerator_seconds{{tenant=\"other\"}} {other}"
        )));
    }
}
