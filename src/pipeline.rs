//! The pipeline: a batch of message payloads through decode and the engine, with metrics.
//!
//! `run`, `replay` and `demo` all drive this one type, so they cannot disagree about what an event
//! means. A batch is decoded first, then applied in order; rejections come back by position so the
//! caller can send each one to its dead-letter path before moving the offset on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use serde::Serialize;
use smallvec::SmallVec;

use crate::alert::{AlertName, AlertRecord};
use crate::config::{Config, ConfigError, InputFormat};
use crate::decode::{
    decode_native_by_serde, format_rfc3339_ms, DecodeLimits, Decoded, Decoder, FlatNative,
    NativeJson, RejectReason, Rejection, SampleRef, UsageSample,
};
use crate::engine::{
    Engine, EngineStats, Explanation, JobReport, KeyHashes, Located, OrganisationReport,
    TenantReport,
};
use crate::flatjson::KeyOrder;
use crate::join::Reading;
use crate::labels::LabelMap;
use crate::metrics::{Metrics, StateGauges};
use crate::otlp::{OtlpJson, OtlpProto};
use crate::prom_adapter::PromAdapterJson;
use crate::registry::{Registry, RegistryWatcher};
use crate::vector::VectorJson;

/// How often per-tenant gauges (which walk every tenant) are refreshed at most.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// Native events are read and their keys warmed (`Engine::hash_ahead` as each is read,
/// `Engine::locate` a few events later, then `Engine::warm_located`) this many at a time before
/// any of them is applied.
const WARM_CHUNK: usize = crate::engine::WARM_BATCH;

/// Samples read between hashing a sample, which prefetches the control bytes that locating it
/// reads ([`Engine::hash_ahead`]), and locating it ([`Engine::locate`]).
const LOCATE_BEHIND: usize = 3;

/// A message of a batch that the decoder rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Position in the batch.
    pub index: usize,
    pub rejection: Rejection,
}

/// Input counts of the replay report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EventCounts {
    pub accepted: u64,
    pub rejected: u64,
    pub late: u64,
    pub duplicate: u64,
    /// Accepted but too old to be checked for duplicates.
    pub unverified: u64,
}

/// The replay report (`replay --report FILE`), a contract tests and analysts rely on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub events: EventCounts,
    pub max_event_time: Option<String>,
    pub watermark: Option<String>,
    pub tenants: Vec<TenantReport>,
    /// Organisations of the tenant registry (empty without one).
    pub organisations: Vec<OrganisationReport>,
    pub jobs: Vec<JobReport>,
}

/// Which input an engine's state belongs to: a Kafka topic partition, or the local input of
/// `replay`. State is kept per shard so a partition's state can move with the partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl Shard {
    pub fn new(topic: &str, partition: i32) -> Shard {
        Shard {
            topic: Arc::from(topic),
            partition,
        }
    }

    /// The topic name of a file replay's single shard (`input.formats` applies to it as well).
    pub const LOCAL_TOPIC: &'static str = "local";

    /// The single shard of a file replay.
    pub fn local() -> Shard {
        Shard::new(Self::LOCAL_TOPIC, 0)
    }
}

pub struct Pipeline {
    cfg: Config,
    shards: BTreeMap<Shard, Engine>,
    /// Decoder of each topic whose format is not native.
    decoders: HashMap<String, Arc<dyn Decoder>>,
    native: Arc<dyn Decoder>,
    metrics: Arc<Metrics>,
    samples: Vec<(usize, UsageSample)>,
    readings: Vec<Reading>,
    scratch: Decoded,
    last_refresh: Option<Instant>,
    /// The tenant registry in force, shared by every shard's engine.
    registry: Arc<Registry>,
    /// Watches `registry.file` for changes.
    watcher: Option<(RegistryWatcher, Instant)>,
}

/// Observes the evaluations `engine` ran since the last call (metrics, and a debug log line each).
fn record_evaluations(metrics: &Metrics, engine: &mut Engine) {
    for e in engine.drain_evaluations() {
        metrics.evaluated(e.seconds);
        tracing::debug!(
            jobs = e.jobs,
            seconds = e.seconds,
            "evaluated at a detection boundary"
        );
    }
}

/// Counts a rejected message in `metrics` and adds it to the batch's `rejected`.
fn reject(metrics: &Metrics, rejected: &mut Vec<Rejected>, index: usize, rejection: Rejection) {
    metrics.event_rejected(rejection.reason);
    rejected.push(Rejected { index, rejection });
}

/// The rejection of a message without a payload (a tombstone).
fn no_payload() -> Rejection {
    Rejection {
        reason: RejectReason::MalformedJson,
        detail: "message has no payload".into(),
    }
}

/// The decoder of one input format.
pub fn decoder(cfg: &Config, format: InputFormat) -> Result<Arc<dyn Decoder>, ConfigError> {
    Ok(match format {
        InputFormat::Native => Arc::new(NativeJson),
        InputFormat::PrometheusAdapter => Arc::new(PromAdapterJson {
            labels: labels(cfg)?,
        }),
        InputFormat::Vector => Arc::new(VectorJson {
            labels: labels(cfg)?,
        }),
        InputFormat::OtlpJson => Arc::new(OtlpJson {
            labels: labels(cfg)?,
        }),
        InputFormat::OtlpProto => Arc::new(OtlpProto {
            labels: labels(cfg)?,
        }),
    })
}

fn labels(cfg: &Config) -> Result<LabelMap, ConfigError> {
    LabelMap::new(&cfg.input.labels).map_err(|e| ConfigError::Invalid {
        key: "input.labels.job_pattern".into(),
        message: e.to_string(),
    })
}

/// Routes `topic` to the decoder of `format` in `decoders`. A native topic gets no entry: it is
/// left to [`Pipeline`]'s `native` decoder, whose batches take the warmed path (`process` tells
/// it by pointer).
fn route(
    decoders: &mut HashMap<String, Arc<dyn Decoder>>,
    cfg: &Config,
    topic: &str,
    format: InputFormat,
) -> Result<(), ConfigError> {
    match format {
        InputFormat::Native => decoders.remove(topic),
        _ => decoders.insert(topic.to_string(), decoder(cfg, format)?),
    };
    Ok(())
}

impl Pipeline {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Pipeline, ConfigError> {
        cfg.validate()?;
        let mut decoders = HashMap::new();
        for (topic, format) in &cfg.input.formats {
            route(&mut decoders, cfg, topic, *format)?;
        }
        let (registry, watcher) = if cfg.registry.file.is_empty() {
            (Registry::default(), None)
        } else {
            let (w, r) =
                RegistryWatcher::open(&cfg.registry.file).map_err(|e| ConfigError::Invalid {
                    key: "registry.file".into(),
                    message: e.to_string(),
                })?;
            (r, Some((w, Instant::now())))
        };
        metrics.registry_loaded(registry.len());
        Ok(Pipeline {
            cfg: cfg.clone(),
            shards: BTreeMap::new(),
            decoders,
            native: Arc::new(NativeJson),
            metrics,
            samples: Vec::new(),
            readings: Vec::new(),
            scratch: Decoded::default(),
            last_refresh: None,
            registry: Arc::new(registry),
            watcher,
        })
    }

    /// The tenant registry in force.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Reloads the registry file if `registry.reload_interval` has passed and it changed; every
    /// engine uses the new registry from its next sample on. A file that does not parse is
    /// returned as an error and the registry in force stays. Returns whether it was replaced.
    pub fn poll_registry(&mut self) -> Result<bool, crate::registry::RegistryError> {
        let interval = Duration::from_millis(self.cfg.registry.reload_interval.ms() as u64);
        let Some((watcher, last)) = self.watcher.as_mut() else {
            return Ok(false);
        };
        if last.elapsed() < interval {
            return Ok(false);
        }
        *last = Instant::now();
        match watcher.poll() {
            Ok(Some(file)) => {
                // Keeps updates that came from elsewhere than the file.
                let len = self.change_registry(|r| {
                    r.replace_file(file);
                    r.len()
                });
                self.metrics.registry_reloaded(true, len);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                self.metrics.registry_reloaded(false, self.registry.len());
                Err(e)
            }
        }
    }

    /// Applies updates from the registry topic over the registry in force (a tombstone removes
    /// the tenant); an update that does not validate is returned and changes nothing.
    pub fn apply_registry_updates(
        &mut self,
        updates: &[crate::registry_topic::Update],
    ) -> Vec<crate::registry::RegistryError> {
        let metrics = self.metrics.clone();
        self.change_registry(|next| {
            let mut errors = Vec::new();
            for u in updates {
                let ok = match next.apply_update(&u.tenant, u.value.as_deref()) {
                    Ok(()) => true,
                    Err(e) => {
                        errors.push(e);
                        false
                    }
                };
                metrics.registry_updated(ok);
            }
            metrics.registry_loaded(next.len());
            errors
        })
    }

    /// Changes the registry in force and hands it to every engine. The engines let go of it
    /// first, so that the pipeline holds the only reference and the registry (100k tenants and
    /// more) is changed in place instead of copied for each batch of updates.
    fn change_registry<R>(&mut self, change: impl FnOnce(&mut Registry) -> R) -> R {
        for e in self.shards.values_mut() {
            e.release_registry();
        }
        let out = change(Arc::make_mut(&mut self.registry));
        for e in self.shards.values_mut() {
            e.set_registry(self.registry.clone());
        }
        out
    }

    /// Reads `topic` in `format` from now on (replay's `--format`).
    pub fn set_format(&mut self, topic: &str, format: InputFormat) -> Result<(), ConfigError> {
        route(&mut self.decoders, &self.cfg, topic, format)
    }

    fn decoder_of(&self, topic: &str) -> Arc<dyn Decoder> {
        self.decoders.get(topic).unwrap_or(&self.native).clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A fresh engine under this pipeline's configuration.
    pub fn new_engine(&self) -> Engine {
        let mut e =
            Engine::new(&self.cfg).expect("the configuration was validated in Pipeline::new");
        e.set_registry(self.registry.clone());
        e
    }

    /// Continues `shard` from a restored engine (replacing any engine it had).
    pub fn insert_shard(&mut self, shard: Shard, mut engine: Engine) {
        engine.set_registry(self.registry.clone());
        self.shards.insert(shard, engine);
    }

    /// Gives up a shard (its partition was revoked); returns its engine.
    pub fn remove_shard(&mut self, shard: &Shard) -> Option<Engine> {
        self.shards.remove(shard)
    }

    pub fn shard(&self, shard: &Shard) -> Option<&Engine> {
        self.shards.get(shard)
    }

    pub fn shards(&self) -> impl Iterator<Item = (&Shard, &Engine)> {
        self.shards.iter()
    }

    /// The engines of the shards that evaluated at a detection boundary within two slides before
    /// `now_ms` (wall clock): a shard that has not (its input stopped, or it was just assigned) is
    /// neither expected nor waited for.
    fn evaluating(&self, now_ms: i64) -> impl Iterator<Item = &Engine> + '_ {
        let slide = self.cfg.detection.slide.ms();
        self.shards.values().filter(move |e| {
            e.evaluated_at_ms()
                .is_some_and(|at| now_ms - at < 2 * slide)
        })
    }

    /// When (wall clock, epoch ms) the next evaluation at a detection boundary is expected: one
    /// detection slide after the oldest of the latest evaluations of the shards that evaluate
    /// (within two slides of `now_ms`), as when consumption keeps up with live input; `None` when
    /// no shard does.
    pub fn next_evaluation_expected_ms(&self, now_ms: i64) -> Option<i64> {
        self.evaluating(now_ms)
            .filter_map(Engine::evaluated_at_ms)
            .min()
            .map(|at| at + self.cfg.detection.slide.ms())
    }

    /// Whether a shard that evaluates (within two slides of `now_ms`) has evaluated a detection
    /// boundary that another has not reached yet.
    pub fn boundary_pending(&self, now_ms: i64) -> bool {
        let mut boundaries = self
            .evaluating(now_ms)
            .filter_map(Engine::evaluated_boundary_ms);
        let Some(first) = boundaries.next() else {
            return false;
        };
        boundaries.any(|b| b != first)
    }

    /// Decodes and applies one batch of `shard`'s input, in order. `None` payloads (tombstones)
    /// are rejected as malformed. Returns the rejections by position in the batch.
    pub fn process<'a, I>(
        &mut self,
        shard: &Shard,
        payloads: I,
        limits: DecodeLimits,
    ) -> Vec<Rejected>
    where
        I: IntoIterator<Item = Option<&'a [u8]>>,
    {
        let started = Instant::now();
        if !self.shards.contains_key(shard) {
            let engine = self.new_engine();
            self.shards.insert(shard.clone(), engine);
        }
        let decoder = self.decoder_of(&shard.topic);
        let engine = self.shards.get_mut(shard).expect("inserted above");
        let before = engine.stats();
        // Each message is decoded and its samples applied in order, their names borrowed from
        // the payload; readings of metric-per-message formats are joined after the batch.
        let mut rejected = Vec::new();
        let mut consumed = 0u64;
        self.readings.clear();
        if Arc::ptr_eq(&decoder, &self.native) {
            consumed = process_native(engine, &self.metrics, payloads, limits, &mut rejected);
        } else {
            for (index, payload) in payloads.into_iter().enumerate() {
                consumed += 1;
                self.scratch.clear();
                let result = match payload {
                    Some(p) => decoder.decode_each(p, limits, &mut self.scratch, &mut |s| {
                        engine.apply_ref(s);
                    }),
                    None => Err(no_payload()),
                };
                match result {
                    Ok(()) => self.readings.append(&mut self.scratch.readings),
                    Err(rejection) => reject(&self.metrics, &mut rejected, index, rejection),
                }
            }
        }
        if !self.readings.is_empty() {
            engine.apply_readings(self.readings.drain(..));
        }
        engine.count_rejected(rejected.len() as u64);
        record_evaluations(&self.metrics, engine);
        self.metrics.events_consumed(consumed);
        self.metrics.engine_progress(&before, &engine.stats());
        self.metrics
            .batch_processed(started.elapsed().as_secs_f64());
        self.refresh_gauges(false);
        rejected
    }

    /// Decodes a batch of `shard`'s input with its topic's decoder into `self.samples` (with the
    /// position of their message) and `self.readings`; returns the rejections by position and the
    /// number of messages.
    fn decode<'a, I>(
        &mut self,
        shard: &Shard,
        payloads: I,
        limits: DecodeLimits,
    ) -> (Vec<Rejected>, u64)
    where
        I: IntoIterator<Item = Option<&'a [u8]>>,
    {
        let decoder = self.decoder_of(&shard.topic);
        let mut rejected = Vec::new();
        let mut consumed = 0u64;
        self.samples.clear();
        self.readings.clear();
        for (index, payload) in payloads.into_iter().enumerate() {
            consumed += 1;
            self.scratch.clear();
            let result = match payload {
                Some(p) => decoder.decode(p, limits, &mut self.scratch),
                None => Err(no_payload()),
            };
            match result {
                Ok(()) => {
                    self.samples
                        .extend(self.scratch.samples.drain(..).map(|s| (index, s)));
                    self.readings.append(&mut self.scratch.readings);
                }
                Err(rejection) => reject(&self.metrics, &mut rejected, index, rejection),
            }
        }
        (rejected, consumed)
    }

    /// Decodes one batch of `shard`'s input for the repartition step: the samples come back (to be
    /// forwarded, keyed by tenant) instead of being applied; rejections are counted in `shard`'s
    /// engine, which otherwise stays empty, and come back by position in the batch.
    pub fn route<'a, I>(
        &mut self,
        shard: &Shard,
        payloads: I,
        limits: DecodeLimits,
    ) -> (Vec<Rejected>, Vec<(usize, UsageSample)>)
    where
        I: IntoIterator<Item = Option<&'a [u8]>>,
    {
        if !self.shards.contains_key(shard) {
            let engine = self.new_engine();
            self.shards.insert(shard.clone(), engine);
        }
        let (rejected, consumed) = self.decode(shard, payloads, limits);
        let samples = std::mem::take(&mut self.samples);
        let engine = self.shards.get_mut(shard).expect("inserted above");
        engine.count_rejected(rejected.len() as u64);
        self.metrics.events_consumed(consumed);
        (rejected, samples)
    }

    /// Alert records of every shard since the last call (counted in metrics).
    pub fn drain_alerts(&mut self) -> Vec<AlertRecord> {
        let mut alerts = Vec::new();
        for engine in self.shards.values_mut() {
            alerts.extend(engine.drain_alerts());
        }
        for a in &alerts {
            self.metrics.alert_emitted(a);
        }
        alerts
    }

    /// Every active alert of every shard.
    pub fn active_alert_records(&self) -> Vec<AlertRecord> {
        self.shards
            .values()
            .flat_map(Engine::active_alert_records)
            .collect()
    }

    /// End of a finite input: the watermark moves to the latest event time and detection runs there.
    pub fn finish(&mut self) {
        for engine in self.shards.values_mut() {
            engine.finish();
            record_evaluations(&self.metrics, engine);
        }
        self.refresh_gauges(true);
    }

    /// Latest event time over all shards.
    pub fn max_event_ms(&self) -> Option<i64> {
        self.shards.values().filter_map(Engine::max_event_ms).max()
    }

    /// Updates state and per-tenant gauges (at most once a second unless `force`).
    pub fn refresh_gauges(&mut self, force: bool) {
        if !force
            && self
                .last_refresh
                .is_some_and(|t| t.elapsed() < GAUGE_REFRESH)
        {
            return;
        }
        self.last_refresh = Some(Instant::now());
        let engines = || self.shards.values();
        let mut active_alerts = AlertName::ALL.map(|n| (n, 0));
        for e in engines() {
            for (i, (_, n)) in e.active_alerts().into_iter().enumerate() {
                active_alerts[i].1 += n;
            }
        }
        self.metrics.state(&StateGauges {
            tenants: engines().map(Engine::tenant_count).sum(),
            jobs: engines().map(Engine::job_count).sum(),
            series: engines().map(Engine::series_count).sum(),
            join_pending: engines().map(Engine::join_pending).sum(),
            join_forced: engines().map(Engine::join_forced).sum(),
            suspected: engines().map(Engine::suspected_jobs).sum(),
            // The slowest shard's watermark: how far behind the daemon is.
            watermark_ms: engines().filter_map(Engine::watermark_ms).min(),
            max_event_ms: self.max_event_ms(),
            now_ms: chrono::Utc::now().timestamp_millis(),
            active_alerts,
        });
        // A tenant may have state in several partitions: merge by name, without copying names.
        let totals: Vec<(&str, (f64, f64))> = if self.shards.len() == 1 {
            engines().flat_map(Engine::tenant_totals).collect()
        } else {
            let mut merged: AHashMap<&str, (f64, f64)> = AHashMap::new();
            for (tenant, (secs, flop)) in engines().flat_map(Engine::tenant_totals) {
                let t = merged.entry(tenant).or_default();
                t.0 += secs;
                t.1 += flop;
            }
            merged.into_iter().collect()
        };
        self.metrics.tenants(totals, self.cfg.metrics.top_tenants);
    }

    /// Every tenant over all shards, sorted by name, windows relative to the latest event time of
    /// any shard. A tenant whose events were spread over several
    /// partitions (producers must key by tenant) appears once, with the shards' values summed.
    pub fn tenant_reports(&self) -> Vec<TenantReport> {
        self.merged(
            Engine::tenant_reports_at,
            |t| t.tenant.clone(),
            TenantReport::merge,
        )
    }

    /// Every organisation over all shards, sorted by name (merged like tenants).
    pub fn organisation_reports(&self) -> Vec<OrganisationReport> {
        self.merged(
            Engine::organisation_reports_at,
            |o| o.organisation.clone(),
            OrganisationReport::merge,
        )
    }

    /// Every job over all shards, sorted by tenant and job (merged like tenants).
    pub fn job_reports(&self) -> Vec<JobReport> {
        self.merged(
            Engine::job_reports_at,
            |j| (j.tenant.clone(), j.job.clone()),
            JobReport::merge,
        )
    }

    /// The reports of every shard at the latest event time of any shard, sorted by `key`, those
    /// with the same key merged into one.
    fn merged<R, K: Ord>(
        &self,
        reports: impl Fn(&Engine, i64) -> Vec<R>,
        key: impl Fn(&R) -> K,
        merge: impl Fn(&mut R, &R),
    ) -> Vec<R> {
        let latest = self.max_event_ms().unwrap_or(0);
        let mut all: Vec<R> = self
            .shards
            .values()
            .flat_map(|e| reports(e, latest))
            .collect();
        all.sort_by_key(|r| key(r));
        all.dedup_by(|b, a| {
            let same = key(a) == key(b);
            if same {
                merge(a, b);
            }
            same
        });
        all
    }

    /// Why a job is or is not suspected (see [`Engine::explain`]); `None` if no shard has it.
    pub fn explain(&self, tenant: &str, job: &str) -> Option<Explanation> {
        self.shards.values().find_map(|e| e.explain(tenant, job))
    }

    pub fn report(&self) -> Report {
        let mut s = EngineStats::default();
        for e in self.shards.values() {
            s.add(&e.stats());
        }
        Report {
            events: EventCounts {
                accepted: s.accepted,
                rejected: s.rejected,
                late: s.late,
                duplicate: s.duplicate,
                unverified: s.unverified,
            },
            max_event_time: self.max_event_ms().map(format_rfc3339_ms),
            watermark: self
                .shards
                .values()
                .filter_map(Engine::watermark_ms)
                .min()
                .map(format_rfc3339_ms),
            tenants: self.tenant_reports(),
            organisations: self.organisation_reports(),
            jobs: self.job_reports(),
        }
    }
}

/// Applies a batch of native events in order, [`WARM_CHUNK`] at a time, one chunk ahead: a
/// chunk is read and its keys warmed ([`Engine::hash_ahead`], [`Engine::locate`],
/// [`Engine::warm_located`]) before the chunk before it is applied, so that the cache misses of
/// their look-ups overlap each other and the work on another chunk instead of being paid one
/// event after the other. Events the
/// flat-object reader cannot read are decoded in place by serde_json, as [`decode_native`] does.
/// Returns the number of messages.
///
/// [`decode_native`]: crate::decode::decode_native
fn process_native<'a>(
    engine: &mut Engine,
    metrics: &Metrics,
    payloads: impl IntoIterator<Item = Option<&'a [u8]>>,
    limits: DecodeLimits,
    rejected: &mut Vec<Rejected>,
) -> u64 {
    let mut payloads = payloads.into_iter().enumerate();
    let mut order = KeyOrder::default();
    let mut consumed = 0u64;
    let (mut ahead, mut current) = (Chunk::default(), Chunk::default());
    loop {
        ahead.read(&mut payloads, &mut order, limits, engine);
        consumed += ahead.events.len() as u64;
        current.apply(engine, metrics, limits, rejected);
        if ahead.events.is_empty() {
            return consumed;
        }
        std::mem::swap(&mut ahead, &mut current);
    }
}

/// Up to [`WARM_CHUNK`] events of a batch, read and warmed, to be applied.
#[derive(Default)]
struct Chunk<'a> {
    /// Each event's index in the batch and its payload.
    events: Vec<(usize, Option<&'a [u8]>)>,
    /// What became of each event: read and validated in one pass into its slot of `samples`,
    /// rejected, or left to serde_json.
    read: Vec<Read>,
    /// The samples, event by event; places kept from chunk to chunk and written over, each
    /// sample read and validated straight into its own: a sample made first and moved into a
    /// vector after was copied (272 bytes) twice.
    samples: Vec<SampleRef<'a>>,
    /// The hashes of each decoded sample's keys, in order, from the warm.
    hashes: SmallVec<[KeyHashes; WARM_CHUNK]>,
}

/// What became of an event of a [`Chunk`].
enum Read {
    /// Its sample is in its place in `Chunk::samples`.
    Decoded,
    Rejected(Rejection),
    /// The flat reader could not read it: serde_json decodes it when it is applied.
    Unread,
}

impl<'a> Chunk<'a> {
    /// Takes the next events of `payloads` (none once they are all taken), reads them and warms
    /// their keys in `engine`: each sample's keys are hashed as soon as it is read, which starts
    /// loading the control bytes that locate them ([`Engine::hash_ahead`]), and located
    /// [`LOCATE_BEHIND`] samples later ([`Engine::locate`]), so that those loads overlap the
    /// reading of the next events; the rest of the warm follows the chunk
    /// ([`Engine::warm_located`]).
    fn read(
        &mut self,
        payloads: &mut impl Iterator<Item = (usize, Option<&'a [u8]>)>,
        order: &mut KeyOrder,
        limits: DecodeLimits,
        engine: &Engine,
    ) {
        self.events.clear();
        self.events.extend(payloads.take(WARM_CHUNK));
        self.read.clear();
        if self.samples.len() < self.events.len() {
            self.samples
                .resize_with(self.events.len(), SampleRef::blank);
        }
        let probes = engine.probes();
        // Each decoded sample's position in `samples` and its keys' hashes.
        let mut hashed: SmallVec<[(usize, KeyHashes); WARM_CHUNK]> = SmallVec::new();
        let mut located: SmallVec<[Located<'_>; WARM_CHUNK]> = SmallVec::new();
        for (i, (_, p)) in self.events.iter().enumerate() {
            let slot = &mut self.samples[i];
            let read = match p.and_then(|p| FlatNative::read(p, order)) {
                None => Read::Unread,
                Some(f) => match f.sample_into(limits, slot) {
                    Ok(()) => {
                        hashed.push((i, engine.hash_ahead(slot, &probes)));
                        Read::Decoded
                    }
                    Err(r) => Read::Rejected(r),
                },
            };
            self.read.push(read);
            // Each sample is located once `LOCATE_BEHIND` more are hashed.
            if hashed.len() > located.len() + LOCATE_BEHIND {
                let (i, h) = hashed[located.len()];
                located.push(engine.locate(&self.samples[i], h));
            }
        }
        for &(i, h) in &hashed[located.len()..] {
            located.push(engine.locate(&self.samples[i], h));
        }
        engine.warm_located(&mut located, &mut self.hashes);
    }

    /// Applies the events in order and lists each one rejected.
    fn apply(
        &self,
        engine: &mut Engine,
        metrics: &Metrics,
        limits: DecodeLimits,
        rejected: &mut Vec<Rejected>,
    ) {
        let mut hashes = self.hashes.iter();
        let events = self.events.iter().zip(&self.read).zip(&self.samples);
        for (((index, payload), read), sample) in events {
            let result = match (read, payload) {
                (Read::Decoded, _) => {
                    let h = hashes.next().expect("one hash per decoded sample");
                    engine.apply_warmed(sample, *h);
                    Ok(())
                }
                (Read::Rejected(r), _) => Err(r.clone()),
                (Read::Unread, Some(p)) => decode_native_by_serde(p, limits).map(|s| {
                    engine.apply(&s);
                }),
                (Read::Unread, None) => Err(no_payload()),
            };
            if let Err(rejection) = result {
                reject(metrics, rejected, *index, rejection);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_native;

    /// A topic named native in `input.formats`, or set to it later, is read by the native
    /// decoder whose batches take the warmed path, as a topic left to the default is; another
    /// format set and then set back to native returns the topic to it.
    #[test]
    fn topics_configured_as_native_take_the_batched_native_path() {
        let mut cfg = Config::default();
        cfg.input.formats = [
            ("named-native".to_string(), InputFormat::Native),
            ("vector".to_string(), InputFormat::Vector),
        ]
        .into();
        let mut pipeline = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
        let batched = |p: &Pipeline, topic: &str| Arc::ptr_eq(&p.decoder_of(topic), &p.native);
        assert!(batched(&pipeline, "gpu-usage"));
        assert!(batched(&pipeline, "named-native"));
        assert!(!batched(&pipeline, "vector"));
        pipeline
            .set_format("gpu-usage", InputFormat::Vector)
            .unwrap();
        assert!(!batched(&pipeline, "gpu-usage"));
        pipeline
            .set_format("gpu-usage", InputFormat::Native)
            .unwrap();
        assert!(batched(&pipeline, "gpu-usage"));
    }

    /// Updates from the registry topic reach the engine of every partition, an invalid one
    /// changes nothing, and the registry in force is changed in place (its maps of every tenant
    /// are not copied for each batch of updates) unless someone else still holds it, who keeps
    /// what they hold.
    #[test]
    fn registry_updates_reach_every_engine_and_change_the_registry_in_place() {
        use crate::registry_topic::Update;
        const T0: i64 = 1_714_521_600_000;
        let cfg = Config::default();
        let mut pipeline = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
        let shards = [Shard::new("gpu-usage", 0), Shard::new("gpu-usage", 1)];
        let tenants = ["acme", "globex"];
        // 2 accelerators for 60 s: 120 accelerator-seconds per event.
        let event = |tenant: &str, minute: i64| {
            UsageSample::new(T0 + minute * 60_000, tenant, 2.0, 60.0)
                .job("j")
                .to_json()
                .into_bytes()
        };
        for (shard, tenant) in shards.iter().zip(tenants) {
            let e = event(tenant, 0);
            pipeline.process(shard, [Some(&e[..])], DecodeLimits::OPEN);
        }
        let before = Arc::as_ptr(pipeline.registry());
        let update = |tenant: &str, value: &str| Update {
            tenant: tenant.into(),
            value: Some(value.as_bytes().to_vec()),
        };
        let errors = pipeline.apply_registry_updates(&[
            update("acme", r#"{"organisation":"conglomerate"}"#),
            update("globex", r#"{"organisation":"conglomerate"}"#),
            update("initech", r#"{"organisation":7}"#),
        ]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(pipeline.registry().info("initech"), None);
        assert_eq!(Arc::as_ptr(pipeline.registry()), before, "changed in place");
        for (shard, tenant) in shards.iter().zip(tenants) {
            let e = event(tenant, 1);
            pipeline.process(shard, [Some(&e[..])], DecodeLimits::OPEN);
        }
        // Organisations count from the update on: one event of each tenant, one per partition.
        let orgs = pipeline.organisation_reports();
        assert_eq!(orgs.len(), 1);
        assert_eq!(orgs[0].organisation, "conglomerate");
        assert_eq!(orgs[0].accelerator_seconds, 240.0);

        let held = pipeline.registry().clone();
        let errors = pipeline.apply_registry_updates(&[Update {
            tenant: "acme".into(),
            value: None,
        }]);
        assert!(errors.is_empty());
        assert_eq!(held.organisation("acme"), Some("conglomerate"));
        assert_eq!(pipeline.registry().organisation("acme"), None);
        assert_eq!(
            pipeline.registry().organisation("globex"),
            Some("conglomerate")
        );
    }

    /// A detection boundary is pending while one partition has evaluated it and another, which
    /// evaluates too, has not reached it yet.
    #[test]
    fn a_boundary_is_pending_from_one_partitions_evaluation_to_the_others() {
        const T0: i64 = 1_714_521_600_000;
        let cfg = Config::default();
        let mut pipeline = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
        let shards = [Shard::new("gpu-usage", 0), Shard::new("gpu-usage", 1)];
        let event = |minute: i64| {
            UsageSample::new(T0 + minute * 60_000, "acme", 2.0, 60.0)
                .job("j")
                .to_json()
                .into_bytes()
        };
        let send = |pipeline: &mut Pipeline, shard: &Shard, minute: i64| {
            let e = event(minute);
            pipeline.process(shard, [Some(&e[..])], DecodeLimits::OPEN);
        };
        let now = crate::decode::now_ms;
        // Neither has evaluated yet, then only one has: nothing to wait for.
        assert!(!pipeline.boundary_pending(now()));
        for minute in 0..10 {
            send(&mut pipeline, &shards[0], minute);
        }
        assert!(pipeline
            .shard(&shards[0])
            .unwrap()
            .evaluated_boundary_ms()
            .is_some());
        assert!(!pipeline.boundary_pending(now()));
        // Both at the same boundary.
        for minute in 0..10 {
            send(&mut pipeline, &shards[1], minute);
        }
        assert!(!pipeline.boundary_pending(now()));
        // The first crosses the next boundary: pending until the second does too.
        send(&mut pipeline, &shards[0], 10);
        assert!(pipeline.boundary_pending(now()));
        send(&mut pipeline, &shards[1], 10);
        assert!(!pipeline.boundary_pending(now()));
        // Shards that have not evaluated for two slides (wall clock) are not waited for.
        send(&mut pipeline, &shards[0], 11);
        assert!(pipeline.boundary_pending(now()));
        assert!(!pipeline.boundary_pending(now() + 2 * cfg.detection.slide.ms()));
    }

    #[test]
    fn native_events_read_ahead_in_chunks_apply_and_reject_exactly_as_one_at_a_time() {
        const T0: i64 = 1_714_521_600_000;
        let cfg = Config::default();
        let mut pipeline = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
        let shard = Shard::new("gpu-usage", 0);
        // More than two chunks: flat events, events with an escaped name (which the flat reader
        // leaves to serde_json), malformed ones and a message without payload, interleaved.
        let payloads: Vec<Option<Vec<u8>>> = (0..2 * WARM_CHUNK as i64 + 8)
            .map(|i| match i % 7 {
                3 => Some(
                    format!(
                        r#"{{"ts":{},"tenant":"t\"{}","job":"j","interval_s":60,"gpus":4}}"#,
                        T0 + i * 60_000,
                        i % 2
                    )
                    .into_bytes(),
                ),
                5 => Some(b"{\"ts\":".to_vec()),
                6 if i == 13 => None,
                _ => Some(
                    UsageSample::new(T0 + i * 60_000, format!("t{}", i % 3), 2.0, 60.0)
                        .job(format!("j{}", i % 2))
                        .to_json()
                        .into_bytes(),
                ),
            })
            .collect();
        let rejected = pipeline.process(
            &shard,
            payloads.iter().map(|p| p.as_deref()),
            DecodeLimits::OPEN,
        );

        let mut one_by_one = Engine::new(&cfg).unwrap();
        let mut want = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            match p.as_deref().map(|b| decode_native(b, DecodeLimits::OPEN)) {
                Some(Ok(s)) => {
                    one_by_one.apply(&s);
                }
                Some(Err(r)) => want.push((i, r.reason)),
                None => want.push((i, no_payload().reason)),
            }
        }
        let got: Vec<(usize, RejectReason)> = rejected
            .iter()
            .map(|r| (r.index, r.rejection.reason))
            .collect();
        assert_eq!(got, want);
        let malformed = (0..payloads.len()).filter(|i| i % 7 == 5).count();
        assert_eq!(
            want.len(),
            malformed + 1,
            "the malformed and the missing payload"
        );
        one_by_one.count_rejected(want.len() as u64);
        let engine = pipeline.shard(&shard).unwrap();
        assert_eq!(engine.tenant_reports(), one_by_one.tenant_reports());
        assert_eq!(engine.job_reports(), one_by_one.job_reports());
        assert_eq!(engine.stats(), one_by_one.stats());
        assert_eq!(
            engine.tenant_count(),
            5,
            "t0, t1, t2 and the two escaped names"
        );
    }
}
