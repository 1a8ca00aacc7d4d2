//! The engine: the one owner of window, detection and alert state.
//!
//! Samples go in one at a time ([`Engine::apply`], called by the pipeline for each decoded sample of
//! a batch); alert records come out of [`Engine::drain_alerts`]. Event time drives everything: the
//! watermark is the latest event time minus the allowed lateness, and every time it crosses a
//! detection slide boundary the engine evaluates the jobs and tenants that changed (and those with
//! active alerts) at that boundary. Evaluation therefore depends only on the order of the input, not
//! on how it was batched. No I/O, no locks, and no clock but the one that times each evaluation (for
//! metrics, [`Evaluation`], and for the checkpoint encodings that wait for a gap between evaluations,
//! [`Engine::evaluated_at_ms`]): the state task owns the engine.
//!
//! State: tenants and jobs by name, each with lifetime [`Usage`], its [`Windows`] and, per device
//! series, what de-duplication and detection need. A job's samples reach its tenant and the
//! tenant's organisation a span at a time (`Credit`), settled at every evaluation before the
//! tenants are evaluated; reports add what is not settled yet. Keys idle for longer than the
//! longest window are evicted (their alerts resolve first).

use std::sync::{Arc, LazyLock};

use ahash::AHashMap;
use hashbrown::hash_map::RawEntryMut;
use hashbrown::Equivalent;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::alert::{AlertBook, AlertName, AlertRecord, Condition, Entity, Scope, Severity};
use crate::catalog::Catalog;
use crate::config::{Config, ConfigError, DetectionConfig, Settings};
use crate::decode::{format_rfc3339_ms, SampleRef, UsageSample};
use crate::detect::{self, DetectPane, Signal, Verdict};
use crate::estimate::{Estimator, FlopEstimate, Usage};
use crate::evidence::{Evidence, TrainingEvidence};
use crate::footprint::{self, Footprint};
use crate::join::{JoinBuffer, Reading};
use crate::line_table::{self, LineTable};
use crate::name::{Name, Names};
use crate::prefetch;
use crate::registry::{Effective, Registry};
use crate::series::{SeriesKey, SeriesRef, SeriesTable};
use crate::slide_archive::DetectRing;
use crate::stamps::StampSet;
use crate::window::{Moved, Windows};

const GIB: f64 = (1u64 << 30) as f64;

/// Smoothing of per-device activity (per sample) used for the rank-spread feature.
const DEVICE_EWMA_ALPHA: f32 = 0.2;

/// What became of one applied sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Counted. `late`: older than the watermark. `unverified`: too old to be checked for duplicates.
    Accepted { late: bool, unverified: bool },
    /// The same tenant/job/node/gpu/ts was already counted.
    Duplicate,
}

/// Counters the engine keeps about its input (the pipeline mirrors them into metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    pub accepted: u64,
    /// Messages the decoder rejected (counted here so checkpoints carry them).
    pub rejected: u64,
    pub late: u64,
    pub duplicate: u64,
    /// Accepted samples older than the de-duplication horizon (could not be checked).
    pub unverified: u64,
    /// Samples whose accelerator model is not in the catalog (fallback peak used).
    pub unknown_accelerator: u64,
    /// Samples that named no accelerator model (fallback peak used).
    pub unspecified_accelerator: u64,
}

impl EngineStats {
    pub fn add(&mut self, o: &EngineStats) {
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.late += o.late;
        self.duplicate += o.duplicate;
        self.unverified += o.unverified;
        self.unknown_accelerator += o.unknown_accelerator;
        self.unspecified_accelerator += o.unspecified_accelerator;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct JobKey {
    tenant: Name,
    job: Name,
}

/// A [`JobKey`] by borrowed names, to look one up without building it (hashes alike).
#[derive(Hash)]
struct JobRef<'a> {
    tenant: &'a str,
    job: &'a str,
}

impl Equivalent<JobKey> for JobRef<'_> {
    fn equivalent(&self, k: &JobKey) -> bool {
        *k.tenant == *self.tenant && *k.job == *self.job
    }
}

/// Samples the warm ([`Engine::warm_located`]) works on at once.
/// Batches warmed together should be this long: 8, 16 and 64 measured alike before the warm
/// located entries by hash alone; since, 32 is up to 5% faster than 16 (BENCHMARKS.md).
pub const WARM_BATCH: usize = 32;

/// The organisation table: hashbrown's, for look-ups by borrowed names ([`Equivalent`]). (Jobs and
/// tenants, which samples reach at random, have tables of whole cache lines: [`LineTable`].)
type Table<K, V> = hashbrown::HashMap<K, V, ahash::RandomState>;

/// Where a sample's keys lie in the engine's tables: the hashes of its job (if it names one), its
/// series and, for a sample of no job or of a job not seen yet, its tenant, computed once when its
/// batch is warmed ([`Engine::locate`]) and used again to apply it ([`Engine::apply_warmed`]). A
/// job's sample reaches its tenant only now and then (see `Credit`), so its tenant is hashed when
/// it does. A table's hasher never changes after the table is made, so a hash stays valid however
/// the tables grow or shrink in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHashes {
    tenant: Option<u64>,
    job: u64,
    series: u64,
}

/// The hash of tenant `name` in `tenants`.
fn tenant_hash(tenants: &TenantTable, name: &str) -> u64 {
    tenants.hasher().hash_one(name)
}

/// A job key's hashes in the job table and of its tenant in the tenant table, and the job
/// table's slot that a look-up of the job's hash alone found ([`LineTable::slot_at_hash`]: most
/// likely the job's, to be checked against its key).
#[derive(Debug, Clone, Copy, Default)]
struct JobHashes {
    job: u64,
    tenant: u64,
    slot: Option<usize>,
}

/// The hashes of the jobs a pass over a list of job keys has located and not yet reached
/// ([`Engine::prefetch_jobs`]): those of positions `i ..= i + LOCATE` while it is at `i`.
struct Ahead {
    hashes: [JobHashes; 16],
}

impl Ahead {
    /// How far ahead a job is hashed and its entries located (its names were asked for twice as
    /// far ahead).
    const LOCATE: usize = 8;
    /// How far ahead what a job's evaluation reads behind its entries is loaded.
    const LOAD: usize = 4;
    /// How far ahead what lies behind that is loaded (an archive's encoding).
    const CONTENTS: usize = 2;

    fn new() -> Self {
        const { assert!(Self::LOCATE < 16) };
        Ahead {
            hashes: [JobHashes::default(); 16],
        }
    }

    fn put(&mut self, i: usize, h: JobHashes) {
        self.hashes[i % 16] = h;
    }

    fn get(&self, i: usize) -> JobHashes {
        self.hashes[i % 16]
    }
}

/// Where look-ups in the job and tenant tables start ([`Engine::probes`]).
pub struct Probes<'e> {
    jobs: line_table::Probe<'e>,
    tenants: line_table::Probe<'e>,
}

/// Where [`Engine::locate`] found a sample's keys: their hashes, and the entries they most likely
/// have (by hash alone), for the rest of the warm ([`Engine::warm_located`]).
#[derive(Clone, Copy)]
pub struct Located<'e> {
    hashes: KeyHashes,
    ts_ms: i64,
    /// The detection pane of `ts_ms`.
    pane: i64,
    job: Option<(&'e JobKey, &'e JobState)>,
    tenant: Option<(&'e Name, &'e TenantState)>,
}

/// Runs `decode` (of a [`State`]) with the long names of the keys it decodes shared, as keys
/// made from samples share them ([`Names::collecting`]), and gives the state those names.
pub fn decoding<T, E>(
    decode: impl FnOnce() -> Result<T, E>,
    state: impl FnOnce(&mut T) -> &mut State,
) -> Result<T, E> {
    let (decoded, names) = Names::collecting(decode);
    let mut decoded = decoded?;
    state(&mut decoded).names = names;
    Ok(decoded)
}

/// The detection panes of a sample at `ts` covering `interval_ms` before it, with slides of `slide`
/// ms: the pane of `ts` itself (where its readings count), and the first and last panes its
/// interval `[ts - interval_ms, ts)` covers (`last < first` when it covers none). That is
/// `ts.div_euclid(slide)`, `(ts - interval_ms).div_euclid(slide)` and `(ts - 1).div_euclid(slide)`,
/// with one division instead of three unless the interval reaches into an earlier pane (the
/// divider is slow, and every sample of a job asks).
#[inline]
fn detection_panes(ts: i64, interval_ms: i64, slide: i64) -> (i64, i64, i64) {
    let pane = ts.div_euclid(slide);
    let pane_start = pane * slide;
    let last = if ts == pane_start { pane - 1 } else { pane };
    let start = ts - interval_ms;
    let first = if (pane_start..=ts).contains(&start) {
        pane
    } else {
        start.div_euclid(slide)
    };
    (pane, first, last)
}

/// One device series (or one aggregate series when the sample names no device).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeriesState {
    /// Timestamps counted and still inside the de-duplication horizon.
    seen: StampSet,
    last_ts: i64,
    /// Newest detection pane this series has been counted in as an active accelerator.
    covered_pane: i64,
    /// Smoothed activity of the best signal; NaN until one is reported.
    activity: f32,
    /// Readings of the best signal in the previous and the current half of the detection window
    /// (gang synchrony needs each device's variance over a known span of slides).
    halves: [detect::Spread; 2],
    /// Index of the current half (event time / half-window).
    half: i64,
}

impl Default for SeriesState {
    fn default() -> Self {
        SeriesState {
            seen: StampSet::default(),
            last_ts: i64::MIN,
            covered_pane: i64::MIN,
            activity: f32::NAN,
            halves: [detect::Spread::default(); 2],
            half: i64::MIN,
        }
    }
}

impl SeriesState {
    /// Adds one activity reading of the slide that ends at `ts`; `half_ms` is half the detection
    /// window.
    fn observe_activity(&mut self, ts: i64, v: f32, half_ms: i64) {
        let a = &mut self.activity;
        *a = if a.is_nan() {
            v
        } else {
            *a + DEVICE_EWMA_ALPHA * (v - *a)
        };
        // Nearly every reading of a series lies in the half of the reading before it.
        let h = crate::window::pane_near(ts, half_ms, Some(self.half));
        if h > self.half {
            self.halves = if h == self.half.saturating_add(1) {
                [self.halves[1], detect::Spread::default()]
            } else {
                [detect::Spread::default(); 2]
            };
            self.half = h;
        }
        if h == self.half {
            self.halves[1].add(v);
        } else if h == self.half - 1 {
            self.halves[0].add(v);
        }
    }

    /// Smoothed activity, and the variance over halves `current - 1 ..= current`.
    fn device_stat(&self, current: i64) -> Option<detect::DeviceStat> {
        if self.activity.is_nan() {
            return None;
        }
        let spread = if self.half == current {
            Some(self.halves[0].merged(&self.halves[1]))
        } else if self.half == current - 1 {
            Some(self.halves[1])
        } else {
            None
        };
        Some(detect::DeviceStat {
            activity: self.activity as f64,
            variance: spread.and_then(|s| s.variance()),
        })
    }
}

enum Seen {
    New,
    Duplicate,
    Unverifiable,
}

impl SeriesState {
    /// Records `ts` unless it was already counted. Timestamps below `floor` were forgotten.
    fn observe(&mut self, ts: i64, floor: i64) -> Seen {
        self.seen.forget_before(floor);
        if ts < floor {
            return Seen::Unverifiable;
        }
        if self.seen.insert(ts) {
            Seen::New
        } else {
            Seen::Duplicate
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Account {
    lifetime: Usage,
    windows: Windows,
    first_ts: i64,
    last_ts: i64,
}

impl Default for Account {
    fn default() -> Self {
        Account {
            lifetime: Usage::default(),
            windows: Windows::default(),
            first_ts: i64::MAX,
            last_ts: i64::MIN,
        }
    }
}

impl Account {
    /// Adds one sample; returns what this moved into the windows' rings ([`Windows::add`]).
    fn add(&mut self, s: &Settings, ts: i64, u: &Usage) -> Option<Moved> {
        self.first_ts = self.first_ts.min(ts);
        self.last_ts = self.last_ts.max(ts);
        self.lifetime.add(u);
        self.windows.add(&s.windows, ts, u)
    }

    /// Moves the pending sum into the rings; returns what this job account then owes its tenant.
    fn settle(&mut self, s: &Settings) -> Option<Credit> {
        let moved = self.windows.flush(&s.windows)?;
        Some(Credit::of(moved, self))
    }

    /// What [`Account::settle`] would return, without settling.
    fn owed(&self) -> Option<Credit> {
        Some(Credit::of(self.windows.pending()?, self))
    }

    /// Adds what a job's windows moved into their rings, a span's sum at a time (see [`Credit`]).
    fn credit(&mut self, s: &Settings, c: &Credit) {
        self.first_ts = self.first_ts.min(c.first_ts);
        self.last_ts = self.last_ts.max(c.last_ts);
        self.lifetime.add(&c.moved.usage);
        self.windows.add(&s.windows, c.moved.ts_ms, &c.moved.usage);
    }
}

/// What a job owes its tenant and the tenant's organisation: the samples its windows moved into
/// their rings ([`Moved`]: a span's sum or a late sample), with the times of the job's first and
/// last samples. A job's samples reach its tenant this way, once a span, instead of one at a time:
/// the tenant's entry lies elsewhere in memory, and touching it for every sample cost as much as
/// the job's own update. What a job owes is credited when its windows move on to a newer span,
/// and at each evaluation for every job with samples since the last ([`Engine::evaluate`]), before
/// the tenants are evaluated; between evaluations a tenant's account lacks its jobs' newest spans.
/// Windows credited this way read what adding each sample gives ([`Moved`]): accelerator time
/// exactly; the FLOP sums may round differently in the last bits, as for another arrival order.
#[derive(Debug, Clone, Copy)]
struct Credit {
    moved: Moved,
    first_ts: i64,
    last_ts: i64,
}

impl Credit {
    fn of(moved: Moved, job: &Account) -> Credit {
        Credit {
            moved,
            first_ts: job.first_ts,
            last_ts: job.last_ts,
        }
    }
}

/// A tenant's state, laid out for the tenant table ([`TenantTable`]): what a job's sample or
/// credit reaching the tenant reads comes first, so that with the key it lies in the entry's first
/// three cache lines ([`TENANT_HEAD_BYTES`]); the series of the tenant's own samples come after.
/// It is written to checkpoints in the order of [`TenantStateWire`], which this layout does not
/// change.
#[derive(Debug, Default)]
#[repr(C)]
struct TenantState {
    /// Its own samples (of no job) as they come, and its jobs' as they credit it ([`Credit`]).
    account: Account,
    /// Its organisation in the registry (the key of `State::orgs`), as resolved under the registry
    /// `org_epoch` names: looked up again once the engine's registry changes, not per sample.
    /// Not checkpointed (a restored tenant resolves it again).
    org: Option<Name>,
    org_epoch: u32,
    /// Idle for longer than every window: windows and series were freed, the lifetime is kept.
    dormant: bool,
    /// One of its jobs, or a group of them, has been suspected of training.
    training: bool,
    /// Listed in `State::touched_tenants`.
    touched: bool,
    // Read by the tenant's own samples (and the sweep) only, from here on.
    /// Series of samples that name no job.
    series: SeriesTable<SeriesState>,
}

/// The tenant table: entries on whole cache lines, a tenant's name first.
type TenantTable = LineTable<Name, TenantState, ahash::RandomState>;

/// Bytes from a tenant entry's start that a job's sample or credit reaches: its name and the
/// fields of [`TenantState`] before `series`.
const TENANT_HEAD_BYTES: usize = TenantTable::head(std::mem::offset_of!(TenantState, series));
const _: () = assert!(
    TENANT_HEAD_BYTES <= 3 * 64,
    "what a job brings a tenant spans three lines of its entry"
);

/// [`TenantState`] as checkpoints hold it: its fields in this order, whatever its layout.
#[derive(Serialize)]
#[serde(rename = "TenantState")]
struct TenantStateWire<'a> {
    account: &'a Account,
    series: &'a SeriesTable<SeriesState>,
    dormant: bool,
    training: bool,
    touched: bool,
}

/// [`TenantStateWire`] as read back.
#[derive(Deserialize)]
#[serde(rename = "TenantState")]
struct TenantStateRead {
    account: Account,
    series: SeriesTable<SeriesState>,
    dormant: bool,
    training: bool,
    touched: bool,
}

impl Serialize for TenantState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TenantStateWire {
            account: &self.account,
            series: &self.series,
            dormant: self.dormant,
            training: self.training,
            touched: self.touched,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TenantState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = TenantStateRead::deserialize(d)?;
        Ok(TenantState {
            account: r.account,
            org: None,
            org_epoch: 0,
            dormant: r.dormant,
            training: r.training,
            touched: r.touched,
            series: r.series,
        })
    }
}

/// An organisation of the tenant registry: the sum of its tenants' samples since the registry
/// named them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct OrgState {
    account: Account,
    /// The training-score threshold of the organisation's policy, and the registry epoch it was
    /// taken under (0 for none); not checkpointed.
    #[serde(skip)]
    threshold: (u32, f64),
    dormant: bool,
    /// A job of one of its tenants, or a group of them, has been suspected of training.
    training: bool,
    /// Listed in `State::touched_orgs`.
    touched: bool,
}

/// What evaluating a job takes from the tenant registry, kept with the job for the registry it was
/// taken from (not checkpointed): looking the tenant up in the registry for every job at every
/// evaluation cost as much as the rest of an evaluation.
#[derive(Debug, Clone, Default)]
struct RegistryView {
    /// [`Engine::registry_epoch`] it was taken under; 0 (never an epoch) for none.
    epoch: u32,
    /// The training-score threshold of the tenant's policy.
    threshold: f64,
    /// The policy's scale of the compute thresholds.
    scale: f64,
    /// The tenant's organisation (the organisation table's copy of its name when it has one).
    org: Option<Name>,
}

/// A job's state, laid out for the job table ([`JobTable`]): what every sample of the job updates
/// comes first, so that with the key it lies in the entry's first five cache lines
/// ([`JOB_HEAD_BYTES`]); what only evaluations read comes after. It is written to checkpoints
/// field by field in the order of [`JobStateWire`], which this layout does not change.
#[derive(Debug, Default)]
#[repr(C)]
struct JobState {
    account: Account,
    series: SeriesTable<SeriesState>,
    detect: DetectRing,
    /// Accelerator models seen (catalog index; `None` = unknown or unspecified) with sample counts;
    /// the first inline, where every sample of a job of one model counts without touching another
    /// allocation.
    models: SmallVec<[(Option<u16>, u64); 1]>,
    /// The engine's latest event time when the job's latest sample arrived: the partition's clock
    /// of the job, one of the two that must agree before an ended job leaves state (see
    /// `Engine::sweep`). Samples that arrive an hour late, from an exporter that lags the rest of
    /// the partition, still belong to the job they name.
    arrived_ms: i64,
    max_concurrent: f32,
    /// Listed in `State::touched_jobs`.
    touched: bool,
    // Read by evaluations only, from here on.
    /// See [`RegistryView`] (not checkpointed).
    view: RegistryView,
    score: f64,
    suspected: bool,
    /// Suspected of training at some time.
    ever_suspected: bool,
}

/// The job table: entries on whole cache lines, a job's key first.
type JobTable = LineTable<JobKey, JobState, ahash::RandomState>;

/// Bytes from a job entry's start that a sample of the job reads and writes: its key and the
/// fields of [`JobState`] before `view`. The warm prefetches only these.
const JOB_HEAD_BYTES: usize = JobTable::head(std::mem::offset_of!(JobState, view));
const _: () = assert!(
    JOB_HEAD_BYTES <= 5 * 64,
    "a sample's part of a job entry spans five lines"
);

/// [`JobState`] as checkpoints hold it: its fields in this order, whatever its layout.
#[derive(Serialize)]
#[serde(rename = "JobState")]
struct JobStateWire<'a> {
    account: &'a Account,
    series: &'a SeriesTable<SeriesState>,
    detect: &'a DetectRing,
    max_concurrent: f32,
    score: f64,
    suspected: bool,
    ever_suspected: bool,
    arrived_ms: i64,
    touched: bool,
    models: &'a SmallVec<[(Option<u16>, u64); 1]>,
}

/// [`JobStateWire`] as read back.
#[derive(Deserialize)]
#[serde(rename = "JobState")]
struct JobStateRead {
    account: Account,
    series: SeriesTable<SeriesState>,
    detect: DetectRing,
    max_concurrent: f32,
    score: f64,
    suspected: bool,
    ever_suspected: bool,
    arrived_ms: i64,
    touched: bool,
    models: SmallVec<[(Option<u16>, u64); 1]>,
}

impl Serialize for JobState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        JobStateWire {
            account: &self.account,
            series: &self.series,
            detect: &self.detect,
            max_concurrent: self.max_concurrent,
            score: self.score,
            suspected: self.suspected,
            ever_suspected: self.ever_suspected,
            arrived_ms: self.arrived_ms,
            touched: self.touched,
            models: &self.models,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for JobState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = JobStateRead::deserialize(d)?;
        Ok(JobState {
            account: r.account,
            series: r.series,
            detect: r.detect,
            models: r.models,
            arrived_ms: r.arrived_ms,
            max_concurrent: r.max_concurrent,
            touched: r.touched,
            view: RegistryView::default(),
            score: r.score,
            suspected: r.suspected,
            ever_suspected: r.ever_suspected,
        })
    }
}

/// The window values of one key, in configured order (serialises as a JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowValues<T>(pub Vec<(String, T)>);

impl<T: Serialize> Serialize for WindowValues<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl WindowValues<f64> {
    fn merge(&mut self, o: &Self) {
        for ((_, a), (_, b)) in self.0.iter_mut().zip(&o.0) {
            *a += b;
        }
    }
}

impl WindowValues<FlopEstimate> {
    fn merge(&mut self, o: &Self) {
        for ((_, a), (_, b)) in self.0.iter_mut().zip(&o.0) {
            a.add(b);
        }
    }
}

/// A tenant's totals, as in the replay report and `GET /api/v1/tenants`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantReport {
    pub tenant: String,
    pub accelerator_seconds: f64,
    pub estimated_flop: FlopEstimate,
    /// Accelerator-seconds of the window of each length that ends at the first slide boundary after
    /// the latest event time.
    pub windows: WindowValues<f64>,
    pub window_flop: WindowValues<FlopEstimate>,
    pub first_seen: String,
    pub last_seen: String,
}

impl TenantReport {
    /// Adds the same tenant's values from another shard.
    pub fn merge(&mut self, o: &TenantReport) {
        self.accelerator_seconds += o.accelerator_seconds;
        self.estimated_flop.add(&o.estimated_flop);
        self.windows.merge(&o.windows);
        self.window_flop.merge(&o.window_flop);
        self.first_seen = self.first_seen.clone().min(o.first_seen.clone());
        self.last_seen = self.last_seen.clone().max(o.last_seen.clone());
    }
}

/// An organisation's totals (the sum of its tenants' samples since the registry named them), as
/// in the replay report and `GET /api/v1/organisations`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrganisationReport {
    pub organisation: String,
    pub accelerator_seconds: f64,
    pub estimated_flop: FlopEstimate,
    pub windows: WindowValues<f64>,
    pub window_flop: WindowValues<FlopEstimate>,
    pub first_seen: String,
    pub last_seen: String,
}

impl OrganisationReport {
    /// Adds the same organisation's values from another shard.
    pub fn merge(&mut self, o: &OrganisationReport) {
        self.accelerator_seconds += o.accelerator_seconds;
        self.estimated_flop.add(&o.estimated_flop);
        self.windows.merge(&o.windows);
        self.window_flop.merge(&o.window_flop);
        self.first_seen = self.first_seen.clone().min(o.first_seen.clone());
        self.last_seen = self.last_seen.clone().max(o.last_seen.clone());
    }
}

/// A job's totals and detection state, as in the replay report and `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobReport {
    pub tenant: String,
    pub job: String,
    pub accelerator_seconds: f64,
    pub max_concurrent_accelerators: f64,
    pub training_score: f64,
    pub suspected: bool,
    pub estimated_flop: FlopEstimate,
    pub windows: WindowValues<f64>,
    pub window_flop: WindowValues<FlopEstimate>,
    pub accelerator_models: Vec<String>,
    pub first_seen: String,
    pub last_seen: String,
}

/// Why a job is or is not suspected (`explain`, `GET /api/v1/explain`).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub tenant: String,
    pub job: String,
    /// Event time the features were computed at: the latest evaluation.
    pub evaluated_at: String,
    /// The job's current detection state (with hysteresis: a suspected job stays suspected until
    /// its score falls below `detection.resolve_below`).
    pub suspected: bool,
    /// No sample for `detection.job_end_after`: the job is not evaluated any more.
    pub ended: bool,
    pub score: f64,
    pub gates_passed: bool,
    pub evidence: serde_json::Value,
}

/// Everything the engine accumulates from its input: what a checkpoint holds. Configuration and
/// caches are not part of it; they are rebuilt from the configuration on restore.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The names the keys decoded with the state share ([`decoding`]); empty otherwise.
    #[serde(skip)]
    names: Names,
    #[serde(serialize_with = "serialize_tenants")]
    tenants: TenantTable,
    #[serde(serialize_with = "serialize_jobs")]
    jobs: JobTable,
    max_event_ms: Option<i64>,
    /// Next detection boundary to evaluate at.
    next_tick_ms: i64,
    /// Next event time at which idle keys are swept.
    next_sweep_ms: i64,
    /// Keys with samples since the last evaluation (each once: its state's `touched` is set).
    touched_jobs: Vec<JobKey>,
    touched_tenants: Vec<Name>,
    orgs: Table<Name, OrgState>,
    touched_orgs: Vec<Name>,
    alerts: AlertBook,
    stats: EngineStats,
    /// Readings of metric-per-message formats not yet joined into samples.
    join: JoinBuffer,
    /// Event time of the latest evaluation.
    last_eval_ms: Option<i64>,
}

/// Serializes `table` exactly as serde's map of it does (its length, then every entry in the
/// table's order), loading each entry's scattered parts ahead of it: the encoding of a checkpoint
/// otherwise waits for a cache miss at each of them in turn (a key's names, its window and
/// detection rings, its series and their names). Sixteen entries ahead, `parts` prefetches what
/// an entry points to; eight ahead, `parts_of_parts` what those point to in turn.
fn serialize_prefetched<'t, K: Serialize + 't, V: Serialize + 't, S: serde::Serializer>(
    entries: impl Iterator<Item = (&'t K, &'t V)> + Clone,
    len: usize,
    s: S,
    parts: impl Fn(&K, &V),
    parts_of_parts: impl Fn(&V),
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut far = entries.clone();
    let mut near = entries.clone();
    for (k, v) in far.by_ref().take(16) {
        parts(k, v);
    }
    for (_, v) in near.by_ref().take(8) {
        parts_of_parts(v);
    }
    let mut map = s.serialize_map(Some(len))?;
    for (k, v) in entries {
        if let Some((k, v)) = far.next() {
            parts(k, v);
        }
        if let Some((_, v)) = near.next() {
            parts_of_parts(v);
        }
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// The job table, as [`serialize_prefetched`].
fn serialize_jobs<S: serde::Serializer>(jobs: &JobTable, s: S) -> Result<S::Ok, S::Error> {
    serialize_prefetched(
        jobs.iter(),
        jobs.len(),
        s,
        |k, j| j.prefetch_parts(k),
        JobState::prefetch_names_and_panes,
    )
}

/// The tenant table, as [`serialize_prefetched`].
fn serialize_tenants<S: serde::Serializer>(tenants: &TenantTable, s: S) -> Result<S::Ok, S::Error> {
    serialize_prefetched(
        tenants.iter(),
        tenants.len(),
        s,
        |name, t| {
            name.prefetch();
            t.account.windows.prefetch();
            t.series.prefetch_entries();
        },
        |t| t.account.windows.prefetch_panes(),
    )
}

impl JobState {
    /// Starts loading the key's long names and what the job's entry points to: its series, its
    /// window rings' heads, its detection panes and its model counts.
    #[inline]
    fn prefetch_parts(&self, k: &JobKey) {
        k.tenant.prefetch();
        k.job.prefetch();
        self.series.prefetch_entries();
        self.account.windows.prefetch();
        self.detect.prefetch();
        prefetch::slice(&self.models);
    }

    /// Starts loading what [`JobState::prefetch_parts`] loaded points to: the series' names and
    /// the window rings' panes.
    #[inline]
    fn prefetch_names_and_panes(&self) {
        for (key, _) in self.series.iter() {
            key.prefetch();
        }
        self.account.windows.prefetch_panes();
    }
}

impl JobReport {
    /// Adds the same job's values from another shard.
    pub fn merge(&mut self, o: &JobReport) {
        self.accelerator_seconds += o.accelerator_seconds;
        self.max_concurrent_accelerators = self
            .max_concurrent_accelerators
            .max(o.max_concurrent_accelerators);
        self.training_score = self.training_score.max(o.training_score);
        self.suspected |= o.suspected;
        self.estimated_flop.add(&o.estimated_flop);
        self.windows.merge(&o.windows);
        self.window_flop.merge(&o.window_flop);
        for m in &o.accelerator_models {
            if !self.accelerator_models.contains(m) {
                self.accelerator_models.push(m.clone());
            }
        }
        self.first_seen = self.first_seen.clone().min(o.first_seen.clone());
        self.last_seen = self.last_seen.clone().max(o.last_seen.clone());
    }
}

/// What jobs owe their tenants and organisations, by name ([`Engine::owed`]).
#[derive(Default)]
struct Owed<'e> {
    tenants: AHashMap<&'e str, SmallVec<[Credit; 2]>>,
    orgs: AHashMap<&'e str, SmallVec<[Credit; 2]>>,
}

/// `account` as crediting it with `credits` would leave it.
fn settled<'a>(
    s: &Settings,
    credits: Option<&SmallVec<[Credit; 2]>>,
    account: &'a Account,
) -> std::borrow::Cow<'a, Account> {
    match credits {
        None => std::borrow::Cow::Borrowed(account),
        Some(credits) => {
            let mut a = account.clone();
            for c in credits {
                a.credit(s, c);
            }
            std::borrow::Cow::Owned(a)
        }
    }
}

/// The engine. See the module documentation.
pub struct Engine {
    s: Settings,
    detection: DetectionConfig,
    estimator: Estimator,
    catalog: Catalog,
    /// Tenant context and policy (configuration, replaced on reload; not state).
    registry: Arc<Registry>,
    /// Changes with every registry set (never 0, which tenants start with): a tenant whose
    /// `org_epoch` differs resolves its organisation again.
    registry_epoch: u32,
    /// Whether a registry was set ([`Engine::set_registry`]): changing it settles first.
    registry_set: bool,
    names: Names,
    st: State,
    outbox: Vec<AlertRecord>,
    /// Evaluations since the last [`Engine::drain_evaluations`] (at most
    /// [`MAX_PENDING_EVALUATIONS`]).
    evaluations: Vec<Evaluation>,
    /// [`Engine::evaluated_at_ms`] (not state: nothing the engine decides depends on it).
    evaluated_at_ms: Option<i64>,
    /// Each tenant's context under the registry in force, as alert evidence carries it, shared by
    /// the conditions that hold it (not state: taken again from the registry).
    contexts: TenantContexts,
}

/// Tenants' alert contexts under one registry (by its epoch): made once for each tenant, not once
/// for each condition at every evaluation.
#[derive(Default)]
struct TenantContexts {
    epoch: u32,
    by_tenant: AHashMap<Name, (Option<String>, Arc<serde_json::Value>)>,
}

/// How long one evaluation took: the wall time of the only clock reading the engine makes, for
/// metrics (nothing the engine decides depends on it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Jobs evaluated.
    pub jobs: usize,
    pub seconds: f64,
}

/// Evaluations kept for [`Engine::drain_evaluations`] when nobody drains them (later ones are not
/// kept).
const MAX_PENDING_EVALUATIONS: usize = 1024;

/// A hash with fixed seeds, to order group candidates the same way in every process without
/// comparing names.
static GROUP_HASH: LazyLock<ahash::RandomState> =
    LazyLock::new(|| ahash::RandomState::with_seeds(1, 2, 3, 4));

/// The detection panes of a verdict's span (on the stack up to an hour of one-minute slides).
type Panes = SmallVec<[DetectPane; 64]>;

/// A job that may be one part of a larger run: it passed the duration and activity gates. It
/// names its job by position in the evaluation's list of jobs and its owner by hash, so that
/// ordering and grouping the candidates reads no names unless two hashes tie.
struct GroupCandidate {
    /// The job's position in the list of jobs being evaluated.
    job: u32,
    /// [`GROUP_HASH`] of the key.
    key_hash: u64,
    /// The key's hash in the job table (to find the job again without reading its names).
    table_hash: u64,
    /// The owner: the tenant's organisation in the tenant registry, or else the tenant (the
    /// job's); and the owner's [`GROUP_HASH`] (of its kind and name).
    org: Option<Name>,
    owner_hash: u64,
    /// The owner's training-score threshold.
    threshold: f64,
    first_ts: i64,
    suspected: bool,
    /// The most accelerators the job had in one detection pane (no pane of a group can hold more
    /// than the sum of its jobs').
    max_concurrent: f32,
}

impl GroupCandidate {
    /// The owner's name: the organisation's, or the tenant's (of `jobs[self.job]`).
    fn owner_name<'a>(&'a self, jobs: &'a [JobKey]) -> (&'a str, &'a str) {
        match &self.org {
            Some(org) => ("", org),
            None => (&jobs[self.job as usize].tenant, ""),
        }
    }

    /// Whether `o` has the same owner: by hash, then by the names.
    fn same_owner(&self, o: &GroupCandidate, jobs: &[JobKey]) -> bool {
        if self.owner_hash != o.owner_hash {
            return false;
        }
        match (&self.org, &o.org) {
            (Some(a), Some(b)) => a == b,
            (None, None) => jobs[self.job as usize].tenant == jobs[o.job as usize].tenant,
            _ => false,
        }
    }

    /// Orders owners by hash, then (when two hashes tie) as their entities order.
    fn cmp_owner(&self, o: &GroupCandidate, jobs: &[JobKey]) -> std::cmp::Ordering {
        self.owner_hash.cmp(&o.owner_hash).then_with(|| {
            if self.same_owner(o, jobs) {
                std::cmp::Ordering::Equal
            } else {
                self.owner_name(jobs).cmp(&o.owner_name(jobs))
            }
        })
    }

    /// The owner as an alert entity.
    fn owner(&self, jobs: &[JobKey]) -> Entity {
        match &self.org {
            Some(org) => Entity::organisation(org.clone()),
            None => Entity::tenant(jobs[self.job as usize].tenant.clone()),
        }
    }
}

/// Orders group candidates by owner (in the order of a fixed hash of the owner), each owner's by
/// start time, then by a fixed hash of the job's key. Those are three numbers, so sorting reads no
/// names. Names order the candidates only where two owners' hashes or two keys' hashes tie (at 64
/// bits, next to never): the list is then sorted again, by the full order.
fn order_candidates(owned: &mut [GroupCandidate], jobs: &[JobKey]) {
    owned.sort_unstable_by_key(|c| (c.owner_hash, c.first_ts, c.key_hash));
    let tied = owned.windows(2).any(|w| {
        w[0].owner_hash == w[1].owner_hash
            && (!w[0].same_owner(&w[1], jobs)
                || (w[0].first_ts, w[0].key_hash) == (w[1].first_ts, w[1].key_hash))
    });
    if tied {
        owned.sort_unstable_by(|a, b| {
            a.cmp_owner(b, jobs)
                .then_with(|| a.first_ts.cmp(&b.first_ts))
                .then_with(|| a.key_hash.cmp(&b.key_hash))
                .then_with(|| {
                    let (ka, kb) = (&jobs[a.job as usize], &jobs[b.job as usize]);
                    (&ka.tenant, &ka.job).cmp(&(&kb.tenant, &kb.job))
                })
        });
    }
}

/// How a sample reaches its tenant and the tenant's organisation ([`ToTenant::reach`]).
enum Reach<'a> {
    /// A sample of no job: added to both, which are listed as touched.
    Sample { ts: i64, usage: &'a Usage },
    /// A job's sample: both are listed as touched on the job's first sample since an evaluation
    /// (`touch`), and credited with what the job owes when it owes something (see [`Credit`]).
    Job { touch: bool, credit: Option<Credit> },
}

impl Reach<'_> {
    /// Whether the tenant is reached at all (most samples of a job do not reach it).
    fn reaches(&self) -> bool {
        !matches!(
            self,
            Reach::Job {
                touch: false,
                credit: None
            }
        )
    }
}

/// Gives the list of keys touched since an evaluation, emptied by it, the storage of the list the
/// evaluation took (`used`, the keys of the period before), emptied: a fleet touches about as many
/// keys every period, and growing the list again from nothing would copy it a dozen times and
/// fault in fresh pages at every evaluation. Storage beyond four times what the period used (and
/// a few thousand keys) is given back, so a burst does not hold it for good.
fn keep_storage<T>(list: &mut Vec<T>, mut used: Vec<T>) {
    if !list.is_empty() {
        return;
    }
    let len = used.len();
    used.clear();
    if used.capacity() > 4 * len + 4096 {
        used.shrink_to(2 * len);
    }
    *list = used;
}

/// The entry of tenant `name` (hashed `hash` in `tenants`), made if there is none.
fn tenant_entry<'t>(
    tenants: &'t mut TenantTable,
    names: &mut Names,
    hash: u64,
    name: &str,
) -> (&'t Name, &'t mut TenantState) {
    match tenants.entry(hash, name) {
        line_table::Entry::Occupied(k, v) => (k, v),
        line_table::Entry::Vacant(e) => e.insert(names.name(name), TenantState::default()),
    }
}

/// What reaching a tenant and its organisation reads of the engine besides its state.
struct ToTenant<'e> {
    s: &'e Settings,
    registry: &'e Registry,
    registry_epoch: u32,
}

impl ToTenant<'_> {
    /// Adds or credits what `reach` brings to tenant `tenant` (hashed `hash`; made if it has no
    /// entry) and its organisation (resolved again once the registry changed), and lists them as
    /// touched.
    fn reach(&self, st: &mut State, names: &mut Names, hash: u64, tenant: &str, reach: Reach<'_>) {
        let (key, t) = tenant_entry(&mut st.tenants, names, hash, tenant);
        if t.org_epoch != self.registry_epoch {
            let orgs = &mut st.orgs;
            t.org = self.registry.organisation(key).map(|org| {
                match orgs.raw_entry_mut().from_key(org) {
                    RawEntryMut::Occupied(e) => e.key().clone(),
                    RawEntryMut::Vacant(e) => {
                        e.insert(names.name(org), OrgState::default()).0.clone()
                    }
                }
            });
            t.org_epoch = self.registry_epoch;
        }
        let touch = match reach {
            Reach::Sample { .. } => true,
            Reach::Job { touch, .. } => touch,
        };
        let add = |account: &mut Account| match &reach {
            Reach::Sample { ts, usage } => {
                account.add(self.s, *ts, usage);
            }
            Reach::Job {
                credit: Some(c), ..
            } => account.credit(self.s, c),
            Reach::Job { credit: None, .. } => {}
        };
        add(&mut t.account);
        t.dormant = false;
        if touch && !t.touched {
            t.touched = true;
            st.touched_tenants.push(key.clone());
        }
        if let Some(org) = &t.org {
            let (key, o) = match st.orgs.raw_entry_mut().from_key(&**org) {
                RawEntryMut::Occupied(e) => e.into_key_value(),
                RawEntryMut::Vacant(e) => e.insert(org.clone(), OrgState::default()),
            };
            add(&mut o.account);
            o.dormant = false;
            if touch && !o.touched {
                o.touched = true;
                st.touched_orgs.push(key.clone());
            }
        }
    }
}

impl Engine {
    pub fn new(cfg: &Config) -> Result<Engine, ConfigError> {
        let st = State {
            next_tick_ms: i64::MIN,
            next_sweep_ms: i64::MIN,
            ..State::default()
        };
        Engine::with_state(cfg, st)
    }

    /// An engine continuing from `state` (as taken by [`Engine::state`]) under `cfg`. The caller
    /// checks that `cfg` has the same [`Engine::shape`] as the engine the state came from.
    pub fn with_state(cfg: &Config, mut st: State) -> Result<Engine, ConfigError> {
        let s = cfg.validate()?;
        st.alerts.set_resend_interval(s.resend_ms);
        Ok(Engine {
            s,
            detection: cfg.detection.clone(),
            estimator: Estimator::new(&cfg.estimate),
            catalog: Catalog::new(&cfg.catalog.accelerators, cfg.catalog.fallback_tflops),
            registry: Arc::new(Registry::default()),
            registry_epoch: 1,
            registry_set: false,
            names: std::mem::take(&mut st.names),
            st,
            outbox: Vec::new(),
            evaluations: Vec::new(),
            evaluated_at_ms: None,
            contexts: TenantContexts::default(),
        })
    }

    /// Uses `registry` for tenant context, organisations and policy from the next sample on.
    /// Organisation totals count samples from the time the registry names the tenant's
    /// organisation. What the jobs of a restored state owe (`Credit`) is credited under the
    /// first registry the engine is given (the one in force when the checkpoint was taken, unless
    /// it changed while the daemon was down).
    pub fn set_registry(&mut self, registry: Arc<Registry>) {
        if self.registry_set {
            self.settle();
        }
        self.registry_set = true;
        self.registry = registry;
        self.registry_epoch = self.registry_epoch.wrapping_add(1).max(1);
    }

    /// Lets go of the registry in force (holding an empty one) so that its owner can change it in
    /// place; [`Engine::set_registry`] must follow before the next sample or evaluation.
    pub fn release_registry(&mut self) {
        if self.registry_set {
            self.settle();
        }
        self.registry = Arc::default();
    }

    /// Credits what every job owes its tenant and organisation (see [`Credit`]), under the
    /// registry in force: before the registry changes, so that organisations count samples from
    /// the change on. (Evaluations settle the jobs they evaluate themselves.)
    fn settle(&mut self) {
        let keys = std::mem::take(&mut self.st.touched_jobs);
        let mut ahead = Ahead::new();
        for (i, k) in keys.iter().enumerate() {
            let hashes = self.prefetch_jobs(&keys, i, &mut ahead);
            let owed = self
                .st
                .jobs
                .get_hashed_mut(hashes.job, k)
                .and_then(|j| j.account.settle(&self.s));
            if let Some(c) = owed {
                self.credit_tenant(&k.tenant, hashes.tenant, c);
            }
        }
        self.st.touched_jobs = keys;
    }

    /// The accumulated state, for checkpoints. Alert records not yet drained are not part of it.
    pub fn state(&self) -> &State {
        &self.st
    }

    /// What the state's layout depends on: windows and detection panes. State taken under one
    /// shape cannot be continued under another.
    pub fn shape(&self) -> String {
        let windows: Vec<String> = self
            .s
            .windows
            .iter()
            .map(|w| format!("{}={}/{}", w.name, w.width_ms(), w.slide_ms()))
            .collect();
        format!(
            "windows:{};detect:{}/{}",
            windows.join(","),
            self.s.detect_window_ms,
            self.s.detect_slide_ms
        )
    }

    /// Records messages of this engine's input that the decoder rejected.
    pub fn count_rejected(&mut self, n: u64) {
        self.st.stats.rejected += n;
    }

    pub fn stats(&self) -> EngineStats {
        self.st.stats
    }

    pub fn max_event_ms(&self) -> Option<i64> {
        self.st.max_event_ms
    }

    /// Latest event time minus the allowed lateness.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.st.max_event_ms.map(|m| m - self.s.allowed_lateness_ms)
    }

    /// The detection boundary (event time, epoch ms) of this engine's latest evaluation; `None`
    /// before its first.
    pub fn evaluated_boundary_ms(&self) -> Option<i64> {
        self.st.last_eval_ms
    }

    /// When (wall clock, epoch ms) this engine's latest evaluation at a detection boundary ended;
    /// `None` before its first.
    pub fn evaluated_at_ms(&self) -> Option<i64> {
        self.evaluated_at_ms
    }

    pub fn tenant_count(&self) -> usize {
        self.st.tenants.len()
    }

    pub fn job_count(&self) -> usize {
        self.st.jobs.len()
    }

    pub fn series_count(&self) -> usize {
        self.st.jobs.values().map(|j| j.series.len()).sum::<usize>()
            + self
                .st
                .tenants
                .values()
                .map(|t| t.series.len())
                .sum::<usize>()
    }

    /// Heap bytes of the state by owner (see [`Footprint`]).
    pub fn footprint(&self) -> Footprint {
        fn series_bytes(m: &SeriesTable<SeriesState>) -> usize {
            m.heap_bytes() + m.values().map(|s| s.seen.heap_bytes()).sum::<usize>()
        }
        let st = &self.st;
        let mut f = Footprint {
            tenants: st.tenants.len(),
            organisations: st.orgs.len(),
            jobs: st.jobs.len(),
            ..Footprint::default()
        };
        f.tenant_bytes = footprint::table_bytes(st.tenants.capacity(), TenantTable::SLOT_BYTES);
        for t in st.tenants.values() {
            f.tenant_bytes += t.account.windows.heap_bytes();
            f.series += t.series.len();
            f.series_bytes += series_bytes(&t.series);
        }
        f.organisation_bytes = footprint::table_of::<Name, OrgState>(st.orgs.capacity());
        for o in st.orgs.values() {
            f.organisation_bytes += o.account.windows.heap_bytes();
        }
        f.job_bytes = footprint::table_bytes(st.jobs.capacity(), JobTable::SLOT_BYTES);
        for j in st.jobs.values() {
            f.job_bytes += j.account.windows.heap_bytes()
                + j.detect.heap_bytes()
                + footprint::small_vec_bytes(&j.models);
            f.series += j.series.len();
            f.series_bytes += series_bytes(&j.series);
        }
        // Names too long to be held inline are counted once, as the shared copies of `names`.
        f.other_bytes = self.names.heap_bytes()
            + st.touched_jobs.capacity() * std::mem::size_of::<JobKey>()
            + (st.touched_tenants.capacity() + st.touched_orgs.capacity())
                * std::mem::size_of::<Name>();
        f
    }

    pub fn suspected_jobs(&self) -> usize {
        self.st.jobs.values().filter(|j| j.suspected).count()
    }

    pub fn active_alerts(&self) -> [(AlertName, usize); 3] {
        self.st.alerts.counts()
    }

    /// Alert records produced since the last call, in the order they happened.
    pub fn drain_alerts(&mut self) -> Vec<AlertRecord> {
        std::mem::take(&mut self.outbox)
    }

    /// The evaluations run since the last call, oldest first.
    pub fn drain_evaluations(&mut self) -> std::vec::Drain<'_, Evaluation> {
        self.evaluations.drain(..)
    }

    /// Counts one sample: de-duplicates it, adds it to the tenant's and job's lifetime and windows,
    /// and updates the job's detection panes. May evaluate first if the sample moves the watermark
    /// across a detection boundary.
    pub fn apply(&mut self, sample: &UsageSample) -> Applied {
        self.apply_ref(&sample.borrowed())
    }

    /// The warm of a batch of samples starts loading what applying them will touch (their
    /// tenants, jobs and series and the window rings of each), without waiting for any of it, so
    /// that their cache misses overlap. It changes nothing, and works in passes, each reading only
    /// what the pass before prefetched: entries are located by hash alone
    /// ([`LineTable::at_hash`]: names are not compared, a wrong guess only costs a useless
    /// prefetch), then read for the addresses of their long names (names held inline come with
    /// the entry), rings and series, then the series are located and prefetched the same way.
    ///
    /// This is the first pass, for one sample as it is read: its keys' hashes, and the control
    /// bytes that locating it reads prefetched (its job's, or its tenant's for a sample of no
    /// job), with `probes` of this engine's tables as they are now ([`Engine::probes`]). The
    /// pipeline locates each sample ([`Engine::locate`]) a few samples after this, once those
    /// bytes have had the time to arrive.
    #[inline(always)]
    pub fn hash_ahead(&self, s: &SampleRef<'_>, probes: &Probes<'_>) -> KeyHashes {
        let h = self.key_hashes(s);
        match h.tenant {
            Some(tenant) => probes.tenants.prefetch(tenant),
            None => probes.jobs.prefetch(h.job),
        }
        h
    }

    /// Where look-ups in the job and tenant tables start, for [`Engine::hash_ahead`].
    pub fn probes(&self) -> Probes<'_> {
        Probes {
            jobs: self.st.jobs.probe(),
            tenants: self.st.tenants.probe(),
        }
    }

    /// The second pass of the warm ([`Engine::hash_ahead`]), for one sample whose keys hash to
    /// `h`: the entries of its job (or, for a sample of no job or of a new job, its tenant)
    /// located and prefetched. Only the tables' control bytes are read. A job's sample reaches
    /// its tenant only now and then (see `Credit`): its tenant waits for the job's entry (the
    /// third pass). The pipeline calls it as it reads the samples, so that these reads overlap
    /// the reading of the next, and the other passes ([`Engine::warm_located`]) once it has
    /// read a chunk.
    #[inline(always)]
    pub fn locate(&self, s: &SampleRef<'_>, mut h: KeyHashes) -> Located<'_> {
        let st = &self.st;
        let job = s.job.as_ref().and_then(|_| st.jobs.at_hash(h.job));
        if let Some((k, _)) = job {
            // The entry's part a sample reads, from the key on (`JOB_HEAD_BYTES`).
            prefetch::range(k, JOB_HEAD_BYTES);
        }
        let tenant = match (&s.job, job) {
            (Some(_), Some(_)) => None,
            _ => {
                let hash = *h
                    .tenant
                    .get_or_insert_with(|| tenant_hash(&st.tenants, &s.tenant));
                st.tenants.at_hash(hash)
            }
        };
        if let Some((k, v)) = tenant {
            prefetch::value(k);
            prefetch::value(v);
        }
        Located {
            hashes: h,
            ts_ms: s.ts_ms,
            pane: s.ts_ms.div_euclid(self.s.detect_slide_ms),
            job,
            tenant,
        }
    }

    /// The passes of the warm after the second ([`Engine::locate`]), over what it gave for a batch
    /// of samples (at most [`WARM_BATCH`]), in order. Puts their keys' hashes in `hashes`, for
    /// [`Engine::apply_warmed`]: each name is hashed once. (Both by reference: a batch's
    /// `Located`s and hashes by value were 3.5 KB copied a batch.)
    pub fn warm_located<'e>(
        &'e self,
        located: &mut [Located<'e>],
        hashes: &mut SmallVec<[KeyHashes; WARM_BATCH]>,
    ) {
        let st = &self.st;
        let slide = self.s.detect_slide_ms;
        // 3. What the buckets point to: long key names, series tags, model counts, the window
        // rings of keys whose sample falls outside their pending span, the slot of a job's
        // detection panes that a sample outside its head pane writes, and the tenant of a
        // job that the sample reaches it from (its first since an evaluation, or one that
        // moves its windows on and credits the tenant).
        for l in located.iter_mut() {
            if let Some((k, v)) = l.tenant {
                k.prefetch();
                if v.account.windows.touches_rings(l.ts_ms) {
                    v.account.windows.prefetch();
                }
            }
            if let Some((k, v)) = l.job {
                k.tenant.prefetch();
                k.job.prefetch();
                let moves = v.account.windows.touches_rings(l.ts_ms);
                if moves {
                    v.account.windows.prefetch();
                }
                v.series.prefetch();
                prefetch::slice(&v.models);
                // A sample in a slide after the head pane's moves the ring on, writing the
                // head out to its slot (a late one writes its own slot).
                v.detect.prefetch_pane(l.pane);
                if !v.touched || moves {
                    // The job found by hash alone may be another: its tenant's hash serves to
                    // prefetch, and is not kept for the sample.
                    l.tenant = st.tenants.at_hash(tenant_hash(&st.tenants, &k.tenant));
                    if let Some((k, _)) = l.tenant {
                        prefetch::range(k, TENANT_HEAD_BYTES);
                    }
                }
            }
        }
        // 4. The series entries, by hash alone; then 5. their names, and the slot of the
        // job's detection panes that the device is counted in when that is the slide before the
        // sample's: a sample at a slide's boundary covers the end of the slide before, where
        // the device was not counted yet when it is sampled once a slide or less often.
        let mut series: SmallVec<[Option<(&SeriesKey, &SeriesState)>; WARM_BATCH]> =
            SmallVec::new();
        for l in located.iter() {
            let e = l.job.and_then(|(_, v)| v.series.candidate(l.hashes.series));
            if let Some((k, v)) = e {
                prefetch::value(k);
                prefetch::value(v);
            }
            series.push(e);
        }
        for (l, e) in located.iter().zip(&series) {
            if let (Some((_, job)), Some((k, v))) = (l.job, e) {
                k.prefetch();
                if l.ts_ms == l.pane * slide && v.covered_pane < l.pane - 1 {
                    job.detect.prefetch_pane(l.pane - 1);
                }
            }
        }
        hashes.clear();
        hashes.extend(located.iter().map(|l| l.hashes));
    }

    /// [`Engine::apply`] of a sample with borrowed names. A known key costs one look-up of each
    /// table by the names as they came (no interning, no reference counting) and allocates nothing.
    pub fn apply_ref(&mut self, sample: &SampleRef<'_>) -> Applied {
        self.apply_warmed(sample, self.key_hashes(sample))
    }

    /// The hashes of `sample`'s keys in this engine's tables (its tenant's for a sample of no job).
    fn key_hashes(&self, sample: &SampleRef<'_>) -> KeyHashes {
        let tenant: &str = &sample.tenant;
        KeyHashes {
            tenant: sample
                .job
                .is_none()
                .then(|| tenant_hash(&self.st.tenants, tenant)),
            job: sample.job.as_deref().map_or(0, |job| {
                self.st.jobs.hasher().hash_one(JobRef { tenant, job })
            }),
            series: SeriesRef {
                node: sample.node.as_deref(),
                gpu: sample.gpu.as_deref(),
            }
            .hash(),
        }
    }

    /// [`Engine::apply_ref`] of a sample whose keys' hashes are known: the `KeyHashes` that
    /// [`Engine::locate`] gave for it (and for no other sample).
    pub fn apply_warmed(&mut self, sample: &SampleRef<'_>, hashes: KeyHashes) -> Applied {
        debug_assert_eq!(
            KeyHashes {
                tenant: hashes
                    .tenant
                    .and(Some(tenant_hash(&self.st.tenants, &sample.tenant))),
                ..self.key_hashes(sample)
            },
            hashes,
            "hashes of another sample"
        );
        let ts = sample.ts_ms;
        let watermark_before = self.watermark_ms();
        if self.st.max_event_ms.is_none_or(|m| ts > m) {
            self.advance_to(ts - self.s.allowed_lateness_ms);
            self.st.max_event_ms = Some(ts);
        }
        let floor = watermark_before.map_or(i64::MIN, |w| w - self.s.dedup_horizon_ms);
        let late = watermark_before.is_some_and(|w| ts < w);
        let half_ms = self.s.sync_half_ms;
        let slide = self.s.detect_slide_ms;
        let n = self.s.detect_panes as usize;
        let live = self.s.detect_live;

        let st = &mut self.st;
        let names = &mut self.names;
        let tenant_name: &str = &sample.tenant;
        let tenant_hash_of = |tenants: &TenantTable| {
            hashes
                .tenant
                .unwrap_or_else(|| tenant_hash(tenants, tenant_name))
        };
        let mut job = sample.job.as_deref().map(|j| {
            let r = JobRef {
                tenant: tenant_name,
                job: j,
            };
            match st.jobs.entry(hashes.job, &r) {
                line_table::Entry::Occupied(k, v) => (k, v),
                line_table::Entry::Vacant(e) => {
                    let hash = tenant_hash_of(&st.tenants);
                    let (tenant, _) = tenant_entry(&mut st.tenants, names, hash, tenant_name);
                    let key = JobKey {
                        tenant: tenant.clone(),
                        job: names.name(j),
                    };
                    e.insert(key, JobState::default())
                }
            }
        });
        // A sample of no job is the tenant's own; a job's sample reaches its tenant through the
        // job (see `Credit`).
        let mut own = match job {
            Some(_) => None,
            None => {
                let hash = tenant_hash_of(&st.tenants);
                Some(tenant_entry(&mut st.tenants, names, hash, tenant_name))
            }
        };
        let of_job = job.is_some();
        // De-duplicate on the series the sample belongs to.
        let series_map = match (&mut job, &mut own) {
            (Some((_, j)), _) => &mut j.series,
            (None, Some((_, t))) => &mut t.series,
            (None, None) => unreachable!("a sample of no job is the tenant's"),
        };
        let series_ref = SeriesRef {
            node: sample.node.as_deref(),
            gpu: sample.gpu.as_deref(),
        };
        let series = series_map.get_or_insert(&series_ref, hashes.series, || {
            SeriesKey::new(series_ref, |n| names.intern(n))
        });
        let unverified = match series.observe(ts, floor) {
            Seen::Duplicate => {
                st.stats.duplicate += 1;
                return Applied::Duplicate;
            }
            Seen::Unverifiable => true,
            Seen::New => false,
        };
        // The sample covers [ts - interval, ts): the device counts once in each detection pane it
        // covers that it was not counted in yet (used for job samples only).
        let interval_ms = crate::estimate::round(sample.interval_s * 1000.0);
        let (ts_pane, first, last) = detection_panes(ts, interval_ms, slide);
        let first = first
            .max(series.covered_pane.saturating_add(1))
            .max(last - n as i64 + 1);
        if of_job && last >= first {
            series.covered_pane = series.covered_pane.max(last);
        }
        series.last_ts = series.last_ts.max(ts);
        let best = Signal::best(&sample.activity);
        if let Some((_, v)) = best {
            series.observe_activity(ts, v as f32, half_ms);
        }

        let peak = self.catalog.resolve(sample.accelerator.as_deref());
        if peak.model.is_none() {
            if sample.accelerator.is_some() {
                st.stats.unknown_accelerator += 1;
            } else {
                st.stats.unspecified_accelerator += 1;
            }
        }
        let usage = self.estimator.sample_usage(
            sample.gpus,
            sample.interval_s,
            peak.flops,
            &sample.activity,
        );

        let reach = match job {
            Some((key, job)) => {
                let moved = job.account.add(&self.s, ts, &usage);
                job.arrived_ms = job.arrived_ms.max(st.max_event_ms.unwrap_or(ts));
                match job.models.iter_mut().find(|(m, _)| *m == peak.model) {
                    Some((_, c)) => *c += 1,
                    None => job.models.push((peak.model, 1)),
                }
                job.detect.write(ts_pane, n, live, |pane| {
                    let acc_s = usage.acc_ms as f32 / 1000.0;
                    if let Some((signal, v)) = best {
                        pane.add_activity(signal, v as f32, acc_s);
                    }
                    if let Some(bytes) = sample.fb_used_bytes {
                        // Per accelerator: an aggregate sample of several devices reports their sum.
                        pane.memory.add((bytes / sample.gpus / GIB) as f32, acc_s);
                    }
                });
                for p in first..=last {
                    let max_concurrent = &mut job.max_concurrent;
                    job.detect.write(p, n, live, |pane| {
                        pane.accelerators += sample.gpus as f32;
                        *max_concurrent = max_concurrent.max(pane.accelerators);
                    });
                }
                let touch = !job.touched;
                if touch {
                    job.touched = true;
                    st.touched_jobs.push(key.clone());
                }
                Reach::Job {
                    touch,
                    credit: moved.map(|m| Credit::of(m, &job.account)),
                }
            }
            None => Reach::Sample { ts, usage: &usage },
        };
        if reach.reaches() {
            let to = ToTenant {
                s: &self.s,
                registry: &self.registry,
                registry_epoch: self.registry_epoch,
            };
            let hash = tenant_hash_of(&st.tenants);
            to.reach(st, names, hash, tenant_name, reach);
        }
        self.st.stats.accepted += 1;
        self.st.stats.late += late as u64;
        self.st.stats.unverified += unverified as u64;
        Applied::Accepted { late, unverified }
    }

    /// Moves the watermark to `watermark`: evaluates at the newest detection boundary it passed.
    fn advance_to(&mut self, watermark: i64) {
        let slide = self.s.detect_slide_ms;
        if self.st.next_tick_ms == i64::MIN {
            self.st.next_tick_ms = (watermark.div_euclid(slide) + 1) * slide;
            self.st.next_sweep_ms = self.st.next_tick_ms;
            return;
        }
        if watermark < self.st.next_tick_ms {
            return;
        }
        let tick = watermark.div_euclid(slide) * slide;
        self.evaluate(tick);
        self.st.next_tick_ms = tick + slide;
        if tick >= self.st.next_sweep_ms {
            self.sweep(watermark);
            self.st.next_sweep_ms = tick + self.sweep_interval_ms();
        }
    }

    /// Adds readings of metric-per-message formats and applies every scrape they complete.
    pub fn apply_readings(&mut self, readings: impl IntoIterator<Item = Reading>) {
        for r in readings {
            self.st.join.add(r);
        }
        let mut joined = Vec::new();
        self.st.join.emit_ready(self.s.join, &mut joined);
        for s in &joined {
            self.apply(s);
        }
    }

    /// Every active alert, as a `firing` record as of the latest event time.
    pub fn active_alert_records(&self) -> Vec<AlertRecord> {
        self.st
            .alerts
            .active_records(self.st.max_event_ms.unwrap_or(0))
    }

    /// Scrapes waiting in the join buffer.
    pub fn join_pending(&self) -> usize {
        self.st.join.pending()
    }

    /// Scrapes joined early because the join buffer was full.
    pub fn join_forced(&self) -> u64 {
        self.st.join.forced()
    }

    /// End of input: pending scrapes are joined, the watermark moves to the latest event time and
    /// everything is evaluated there.
    pub fn finish(&mut self) {
        let mut joined = Vec::new();
        self.st.join.emit_all(self.s.join, &mut joined);
        for s in &joined {
            self.apply(s);
        }
        if let Some(m) = self.st.max_event_ms {
            self.evaluate(m);
        }
    }

    fn sweep_interval_ms(&self) -> i64 {
        let longest_slide = self
            .s
            .windows
            .iter()
            .map(|w| w.slide_ms())
            .max()
            .unwrap_or(0);
        longest_slide.clamp(self.s.detect_slide_ms, 3_600_000)
    }

    /// Evaluates detection and compute conditions at event time `now`: the keys that had samples
    /// since the last evaluation, in the order of their first sample, then those that hold active
    /// alerts without having had one, in name order (so that their alerts can resolve).
    fn evaluate(&mut self, now: i64) {
        let started = std::time::Instant::now();
        self.st.last_eval_ms = Some(now);
        let mut jobs: Vec<JobKey> = std::mem::take(&mut self.st.touched_jobs);
        let touched_tenants: Vec<Name> = std::mem::take(&mut self.st.touched_tenants);
        let touched_orgs: Vec<Name> = std::mem::take(&mut self.st.touched_orgs);
        let (mut extra_jobs, mut extra_tenants, mut extra_orgs) =
            (Vec::new(), Vec::new(), Vec::new());
        for e in self.st.alerts.entities() {
            match (e.scope(), e.job, e.org) {
                (Scope::Job, Some(job), _) => extra_jobs.push(JobKey {
                    tenant: e.tenant,
                    job,
                }),
                (Scope::Organisation, _, Some(org)) => extra_orgs.push(org),
                _ => extra_tenants.push(e.tenant),
            }
        }
        extra_jobs.retain(|k| !self.st.jobs.get(k).is_some_and(|j| j.touched));
        sort_by_name(&mut extra_jobs);
        let touched = jobs.len();
        jobs.append(&mut extra_jobs);
        let mut candidates = Vec::new();
        let mut ahead = Ahead::new();
        for (i, k) in jobs.iter().enumerate() {
            let hashes = self.prefetch_jobs(&jobs, i, &mut ahead);
            candidates.extend(self.evaluate_job(k, hashes, i, i < touched, now));
        }
        let mut groups: AHashMap<Entity, Condition> = self
            .group_conditions(&jobs, candidates, now)
            .into_iter()
            .collect();
        for e in groups.keys() {
            match &e.org {
                Some(o) => {
                    extra_orgs.push(o.clone());
                    if let Some(state) = self.st.orgs.get_mut(o) {
                        state.training = true;
                    }
                }
                None => {
                    extra_tenants.push(e.tenant.clone());
                    self.mark_training(&e.tenant);
                }
            }
        }
        extra_tenants.retain(|t| !self.st.tenants.get(t).is_some_and(|s| s.touched));
        extra_tenants.sort();
        extra_tenants.dedup();
        extra_orgs.retain(|o| !self.st.orgs.get(o).is_some_and(|s| s.touched));
        extra_orgs.sort();
        extra_orgs.dedup();
        let tenants = touched_tenants.iter().map(|t| (t, true));
        for (t, touched) in tenants.chain(extra_tenants.iter().map(|t| (t, false))) {
            match self.st.tenants.get_mut(t) {
                // Listed twice: evaluated already.
                Some(state) if touched && !state.touched => continue,
                Some(state) => state.touched = false,
                None => {}
            }
            let state = self.st.tenants.get(t);
            let entity = Entity::tenant(t.clone());
            let mut conditions = match state {
                Some(state) if !state.dormant && self.compute_alerts_for(state.training) => {
                    let scale = self.policy(&entity).threshold_scale;
                    self.compute_conditions(&entity, &state.account, scale, now)
                }
                _ => Vec::new(),
            };
            conditions.extend(groups.remove(&entity));
            self.reconcile(&entity, conditions, now);
        }
        let orgs = touched_orgs.iter().map(|o| (o, true));
        for (o, touched) in orgs.chain(extra_orgs.iter().map(|o| (o, false))) {
            match self.st.orgs.get_mut(o) {
                // Listed twice: evaluated already.
                Some(state) if touched && !state.touched => continue,
                Some(state) => state.touched = false,
                None => {}
            }
            let state = self.st.orgs.get(o);
            let entity = Entity::organisation(o.clone());
            let mut conditions = match state {
                Some(state) if !state.dormant && self.compute_alerts_for(state.training) => {
                    let scale = self.policy(&entity).threshold_scale;
                    self.compute_conditions(&entity, &state.account, scale, now)
                }
                _ => Vec::new(),
            };
            conditions.extend(groups.remove(&entity));
            self.reconcile(&entity, conditions, now);
        }
        self.st.alerts.resend_due(now, &mut self.outbox);
        let evaluated = jobs.len();
        keep_storage(&mut self.st.touched_jobs, jobs);
        keep_storage(&mut self.st.touched_tenants, touched_tenants);
        keep_storage(&mut self.st.touched_orgs, touched_orgs);
        if self.evaluations.len() < MAX_PENDING_EVALUATIONS {
            self.evaluations.push(Evaluation {
                jobs: evaluated,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        self.evaluated_at_ms = Some(crate::decode::now_ms());
    }

    /// Starts loading what evaluating the jobs after `jobs[i]` reads, which lie in arrival order
    /// and so at random in memory: the long names of the job 16 places ahead (hashing and comparing
    /// a key reads them), the table entries of the one 8 ahead and of its tenant (located by hash
    /// alone, [`LineTable::slot_at_hash`]), and the detection panes, series and window rings of the
    /// one 4 ahead and its tenant's window rings (settling what the job owes writes both). Each
    /// job's hashes and slot are found once, 8 places ahead, and kept in `ahead` for the passes
    /// after; returns those of `jobs[i]`. `i` counts up from 0 by one, with the same `ahead`.
    fn prefetch_jobs(&self, jobs: &[JobKey], i: usize, ahead: &mut Ahead) -> JobHashes {
        let hashes = |k: &JobKey| {
            let job = self.st.jobs.hasher().hash_one(k);
            JobHashes {
                job,
                tenant: tenant_hash(&self.st.tenants, &k.tenant),
                slot: self.st.jobs.slot_at_hash(job),
            }
        };
        if i == 0 {
            for (j, k) in jobs.iter().enumerate().take(Ahead::LOCATE) {
                ahead.put(j, hashes(k));
            }
        }
        if let Some(k) = jobs.get(i + 2 * Ahead::LOCATE) {
            k.tenant.prefetch();
            k.job.prefetch();
        }
        if let Some(k) = jobs.get(i + Ahead::LOCATE) {
            let h = hashes(k);
            ahead.put(i + Ahead::LOCATE, h);
            if let Some((_, j)) = h.slot.and_then(|s| self.st.jobs.at_slot(s)) {
                prefetch::value(j);
            }
            if let Some((k, _)) = self.st.tenants.at_hash(h.tenant) {
                prefetch::range(k, TENANT_HEAD_BYTES);
            }
        }
        if i + Ahead::LOAD < jobs.len() {
            let h = ahead.get(i + Ahead::LOAD);
            if let Some((_, j)) = h.slot.and_then(|s| self.st.jobs.at_slot(s)) {
                j.detect.prefetch();
                j.series.prefetch_entries();
                j.account.windows.prefetch();
            }
            if let Some((_, t)) = self.st.tenants.at_hash(h.tenant) {
                t.account.windows.prefetch();
            }
        }
        if i + Ahead::CONTENTS < jobs.len() {
            let h = ahead.get(i + Ahead::CONTENTS);
            if let Some((_, j)) = h.slot.and_then(|s| self.st.jobs.at_slot(s)) {
                // The detection slides' archive, whose bookkeeping was loaded above.
                j.detect.prefetch_archive();
            }
        }
        ahead.get(i)
    }

    /// Evaluates one job, at position `i` of the list of jobs evaluated; returns it as a group
    /// candidate when it passed the duration and activity gates.
    fn evaluate_job(
        &mut self,
        k: &JobKey,
        hashes: JobHashes,
        i: usize,
        touched: bool,
        now: i64,
    ) -> Option<GroupCandidate> {
        // One look-up, of the job's slot: the job is read there, then changed there after.
        let hash = hashes.job;
        debug_assert_eq!(hash, self.st.jobs.hasher().hash_one(k));
        let jobs = &self.st.jobs;
        let slot = hashes
            .slot
            .filter(|&s| jobs.at_slot(s).is_some_and(|(key, _)| key == k))
            .or_else(|| jobs.slot_of(hash, k));
        let found = slot.and_then(|s| jobs.at_slot(s));
        debug_assert_eq!(
            found.map(|(key, _)| key as *const JobKey),
            jobs.get_hashed(hash, k)
                .map(|(key, _)| key as *const JobKey)
        );
        if touched && found.is_some_and(|(_, j)| !j.touched) {
            return None; // listed twice: evaluated already
        }
        let entity = Entity::job(k.tenant.clone(), k.job.clone());
        let Some((_, job)) = found else {
            self.reconcile(&entity, Vec::new(), now);
            return None;
        };
        let ended = job.account.last_ts < now - self.s.job_end_after_ms;
        let mut conditions = Vec::new();
        let verdict = (!ended).then(|| self.verdict(&[job], now));
        let score = verdict.as_ref().map_or(0.0, |v| v.score);
        let new_view = (job.view.epoch != self.registry_epoch).then(|| self.registry_view(&entity));
        let view = new_view.as_ref().unwrap_or(&job.view);
        let threshold = view.threshold;
        let suspected = verdict
            .as_ref()
            .is_some_and(|v| v.suspects(threshold, self.detection.resolve_below, job.suspected));
        if let (true, Some(v)) = (suspected, &verdict) {
            let summary = format!(
                "job {} of tenant {} looks like large-model training: score {:.2}, {:.0} accelerators",
                k.job,
                k.tenant,
                v.score,
                v.features[0].value.unwrap_or(0.0)
            );
            conditions.push(self.training_condition(&[(k, job)], v, threshold, summary, now));
        }
        if !ended && self.compute_alerts_for(suspected || job.ever_suspected) {
            conditions.extend(self.compute_conditions(&entity, &job.account, view.scale, now));
        }
        let candidate = verdict
            .as_ref()
            .filter(|v| v.features[1].fired && v.features[2].fired)
            .map(|_| {
                let owner_hash = match &view.org {
                    Some(org) => GROUP_HASH.hash_one((1u8, &**org)),
                    None => GROUP_HASH.hash_one((0u8, &*k.tenant)),
                };
                GroupCandidate {
                    job: u32::try_from(i).expect("fewer than 2^32 jobs"),
                    // An organisation's threshold is set below.
                    threshold,
                    key_hash: GROUP_HASH.hash_one(k),
                    table_hash: hash,
                    org: view.org.clone(),
                    owner_hash,
                    first_ts: job.account.first_ts,
                    suspected,
                    max_concurrent: job.max_concurrent,
                }
            });
        let job = slot
            .and_then(|s| self.st.jobs.at_slot_mut(s))
            .expect("found above, and nothing was inserted or removed since");
        job.touched = false;
        // What the job owes its tenant is settled before the tenants are evaluated (`Credit`).
        let owed = job.account.settle(&self.s);
        job.score = score;
        job.suspected = suspected;
        if let Some(v) = new_view {
            job.view = v;
        }
        if suspected {
            job.ever_suspected = true;
            self.mark_training(&k.tenant);
        }
        if let Some(c) = owed {
            self.credit_tenant(&k.tenant, hashes.tenant, c);
        }
        self.reconcile(&entity, conditions, now);
        candidate.map(|mut c| {
            if let Some(org) = &c.org {
                c.threshold = self.org_threshold(org);
            }
            c
        })
    }

    /// Credits what a job of `tenant` (hashed `hash` in the tenant table) owed (see [`Credit`]).
    fn credit_tenant(&mut self, tenant: &str, hash: u64, c: Credit) {
        debug_assert_eq!(hash, tenant_hash(&self.st.tenants, tenant));
        let to = ToTenant {
            s: &self.s,
            registry: &self.registry,
            registry_epoch: self.registry_epoch,
        };
        let reach = Reach::Job {
            touch: false,
            credit: Some(c),
        };
        to.reach(&mut self.st, &mut self.names, hash, tenant, reach);
    }

    /// What evaluating the job `entity` takes from the registry in force.
    fn registry_view(&self, entity: &Entity) -> RegistryView {
        let org = self.registry.organisation(&entity.tenant).map(|org| {
            // The organisation's own copy of its name, if it has an account.
            match self.st.orgs.get_key_value(org) {
                Some((name, _)) => name.clone(),
                None => Name::from(org),
            }
        });
        let policy = self.policy(entity);
        RegistryView {
            epoch: self.registry_epoch,
            threshold: self.score_threshold(&policy),
            scale: policy.threshold_scale,
            org,
        }
    }

    /// The training-score threshold of organisation `org` (from its state when taken under the
    /// registry in force; an organisation's policy reads every member tenant's).
    fn org_threshold(&mut self, org: &Name) -> f64 {
        let epoch = self.registry_epoch;
        if let Some(o) = self.st.orgs.get(org) {
            if o.threshold.0 == epoch {
                return o.threshold.1;
            }
        }
        let t = self.score_threshold(&self.policy(&Entity::organisation(org.clone())));
        if let Some(o) = self.st.orgs.get_mut(org) {
            o.threshold = (epoch, t);
        }
        t
    }

    /// Records that `tenant` (and its organisation) has work suspected of training, which makes
    /// their totals subject to compute alerts.
    fn mark_training(&mut self, tenant: &Name) {
        if let Some(t) = self.st.tenants.get_mut(tenant) {
            t.training = true;
        }
        if let Some(org) = self.registry.organisation(tenant) {
            if let Some(o) = self.st.orgs.get_mut(org) {
                o.training = true;
            }
        }
    }

    /// Whether an entity gets compute alerts, given whether its work has been suspected of
    /// training (`alerts.compute_alerts`).
    fn compute_alerts_for(&self, training: bool) -> bool {
        training || !self.s.compute_alerts_training_only
    }

    /// The training-score threshold under `policy`.
    fn score_threshold(&self, policy: &Effective) -> f64 {
        policy
            .score_threshold
            .unwrap_or(self.detection.score_threshold)
    }

    /// `TrainingSuspected` for groups of jobs that look like one run split into parts: jobs of one
    /// tenant (or of the tenants of one organisation) that each passed the duration and activity
    /// gates, started within `detection.group_start_tolerance` of each other, and together pass
    /// every gate and the score threshold. A group is only alerted on when none of its jobs is
    /// suspected on its own (those alerts already name the run); of several qualifying groups of
    /// one tenant or organisation, the one with the most accelerators is reported.
    fn group_conditions(
        &self,
        jobs: &[JobKey],
        candidates: Vec<GroupCandidate>,
        now: i64,
    ) -> Vec<(Entity, Condition)> {
        let mut owned = candidates;
        order_candidates(&mut owned, jobs);
        // The cohorts that could pass: two or more jobs that started together, none suspected on
        // its own, and enough accelerators between them to reach the gang gate at their peaks.
        let tolerance = self.s.group_start_tolerance_ms;
        let gate = self.group_accelerator_gate();
        let mut cohorts: Vec<std::ops::Range<usize>> = Vec::new();
        let mut start = 0;
        while start < owned.len() {
            let mut end = start + 1;
            while end < owned.len()
                && owned[end].same_owner(&owned[start], jobs)
                && owned[end].first_ts - owned[end - 1].first_ts <= tolerance
            {
                end += 1;
            }
            let cohort = &owned[start..end];
            let peak: f64 = cohort.iter().map(|c| c.max_concurrent as f64).sum();
            if cohort.len() >= 2
                && !cohort.iter().any(|c| c.suspected)
                && gate.is_none_or(|g| peak >= g)
            {
                cohorts.push(start..end);
            }
            start = end;
        }
        // Each owner's cohorts; of those that pass, the one with the most accelerators.
        let mut out: Vec<(Entity, Condition)> = Vec::new();
        let mut i = 0;
        let mut members: SmallVec<[(&JobKey, &JobState); 8]> = SmallVec::new();
        let mut states: SmallVec<[&JobState; 8]> = SmallVec::new();
        for own in cohorts.chunk_by(|a, b| owned[a.start].same_owner(&owned[b.start], jobs)) {
            let first = &owned[own[0].start];
            // Made only when needed: reading the owner's name is a cache miss.
            let owner = || first.owner(jobs);
            let threshold = first.threshold;
            let mut best: Option<(f64, Condition)> = None;
            for range in own {
                self.prefetch_cohorts(&owned, &cohorts, i);
                i += 1;
                members.clear();
                members.extend(owned[range.clone()].iter().filter_map(|c| {
                    let key = &jobs[c.job as usize];
                    let found = self.st.jobs.get_hashed(c.table_hash, key);
                    found.map(|(_, j)| (key, j))
                }));
                states.clear();
                states.extend(members.iter().map(|(_, j)| *j));
                let v = self.verdict(&states, now);
                // Whether the owner holds a group alert matters only to keep one.
                let may_keep = v.features[0].fired && v.score >= self.detection.resolve_below;
                let held = may_keep
                    && self
                        .st
                        .alerts
                        .is_active(&owner(), AlertName::TrainingSuspected);
                let passes = v.suspects(threshold, self.detection.resolve_below, held);
                let accelerators = v.features[0].value.unwrap_or(0.0);
                if !passes || best.as_ref().is_some_and(|(a, _)| *a >= accelerators) {
                    continue;
                }
                let who = match (&first.org, members.iter().map(|(k, _)| &k.tenant).min()) {
                    (Some(org), _) => format!("organisation {org}"),
                    (None, Some(t)) => format!("tenant {t}"),
                    (None, None) => continue,
                };
                let summary = format!(
                    "{} jobs of {who}, started together, look like one large-model training run: score {:.2}, {:.0} accelerators",
                    members.len(),
                    v.score,
                    accelerators
                );
                best = Some((
                    accelerators,
                    self.training_condition(&members, &v, threshold, summary, now),
                ));
            }
            if let Some((_, c)) = best {
                out.push((owner(), c));
            }
        }
        out
    }

    /// The accelerators a group needs at its peak to be able to fire the accelerators gate, when
    /// both accelerator ramps rise (a gate fires at `high`); `None` when one is configured falling.
    fn group_accelerator_gate(&self) -> Option<f64> {
        let (a, b) = (
            self.detection.accelerators,
            self.detection.accelerators_gpu_util,
        );
        (a.low < a.high && b.low < b.high).then(|| {
            // Pane sums are f32: allow for their rounding.
            a.high.min(b.high) * (1.0 - 1e-3)
        })
    }

    /// Starts loading the job entries of the cohort 8 ahead of `cohorts[i]` (located by hash
    /// alone) and the detection panes and series of the one 4 ahead.
    fn prefetch_cohorts(
        &self,
        owned: &[GroupCandidate],
        cohorts: &[std::ops::Range<usize>],
        i: usize,
    ) {
        let entry = |c: &GroupCandidate| self.st.jobs.at_hash(c.table_hash).map(|(_, j)| j);
        if let Some(r) = cohorts.get(i + 8) {
            for j in owned[r.clone()].iter().filter_map(entry) {
                prefetch::value(j);
            }
        }
        if let Some(r) = cohorts.get(i + 4) {
            for j in owned[r.clone()].iter().filter_map(entry) {
                j.detect.prefetch();
                j.series.prefetch_entries();
            }
        }
    }

    /// The policy of the tenant registry for an entity. An organisation takes the strictest of its
    /// tenants' policies: the smallest threshold scale and score threshold, the highest severity.
    fn policy(&self, entity: &Entity) -> Effective {
        let Some(org) = &entity.org else {
            return self.registry.policy(&entity.tenant);
        };
        let mut out = Effective::default();
        let mut first = true;
        for tenant in self.registry.members(org) {
            let p = self.registry.policy(tenant);
            if first {
                out.threshold_scale = p.threshold_scale;
                first = false;
            } else {
                out.threshold_scale = out.threshold_scale.min(p.threshold_scale);
            }
            if let Some(sev) = p.min_severity {
                out.min_severity = Some(out.raise(sev));
            }
            out.score_threshold = match (out.score_threshold, p.score_threshold) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for r in p.rules {
                if !out.rules.contains(&r) {
                    out.rules.push(r);
                }
            }
        }
        out
    }

    /// States the conditions of `entity` to the alert book, with the tenant registry's context
    /// and severity policy applied.
    fn reconcile(&mut self, entity: &Entity, mut conditions: Vec<Condition>, now: i64) {
        if !conditions.is_empty() {
            let policy = self.policy(entity);
            let (organisation, context) = match &entity.org {
                Some(org) => (
                    Some(org.to_string()),
                    Arc::new(serde_json::json!({
                        "organisation": org.as_ref(),
                        "tenants": self.registry.members(org).collect::<Vec<_>>(),
                        "policy_rules": policy.rules,
                    })),
                ),
                None => self.tenant_context(&entity.tenant),
            };
            for c in &mut conditions {
                c.severity = policy.raise(c.severity);
                c.organisation = organisation.clone();
                c.evidence.insert("tenant_context", context.clone());
            }
        }
        self.st
            .alerts
            .reconcile(entity, conditions, now, &mut self.outbox);
    }

    /// The organisation and alert context of `tenant` under the registry in force.
    fn tenant_context(&mut self, tenant: &Name) -> (Option<String>, Arc<serde_json::Value>) {
        if self.contexts.epoch != self.registry_epoch {
            self.contexts.by_tenant.clear();
            self.contexts.epoch = self.registry_epoch;
        }
        if let Some(c) = self.contexts.by_tenant.get(tenant) {
            return c.clone();
        }
        let ctx = self.registry.context(tenant);
        let c = (
            ctx.organisation.clone(),
            Arc::new(serde_json::to_value(&ctx).unwrap_or_default()),
        );
        self.contexts.by_tenant.insert(tenant.clone(), c.clone());
        c
    }

    /// Features of one job, or of a group of jobs taken as one gang, over `[now - window, now)`,
    /// and the score.
    fn verdict(&self, jobs: &[&JobState], now: i64) -> Verdict {
        let slide = self.s.detect_slide_ms;
        let n = self.s.detect_panes;
        let last = now.div_euclid(slide) - 1;
        let first_ts = jobs.iter().map(|j| j.account.first_ts).min().unwrap_or(now);
        let first = (last - n + 1).max(first_ts.div_euclid(slide));
        // Gang synchrony looks at the current and the previous half window, as the devices keep
        // it: up to the newest slide received (devices keep every reading, also those past `now`).
        let half = self.s.sync_half_ms;
        // A ring released by the sweep held nothing inside the window: no synchrony panes, as
        // before its release.
        let held = jobs.iter().filter_map(|j| j.detect.head()).max();
        let head = held.unwrap_or(last);
        let current = (head * slide).div_euclid(half);
        let sync_first = ((current - 1) * half).div_euclid(slide).max(first);
        // One copy of the panes holds both spans: the window's, `first ..= last`, followed by
        // what synchrony's, `sync_first ..= head` (`sync_first >= first`), adds after it, from
        // `after` on. Slides with no sample are real gaps: they count as zero accelerators.
        // Filled in place: `smallvec!` would build the array and then move it.
        let in_window = (last - first + 1).max(0) as usize;
        let after = sync_first.max(last + 1);
        let mut panes = Panes::new();
        panes.resize(
            in_window + (head - after + 1).max(0) as usize,
            DetectPane::default(),
        );
        let mut any = false;
        let (window_part, after_part) = panes.split_at_mut(in_window);
        for job in jobs {
            job.detect.for_each_in(first, last, |i, p| {
                window_part[(i - first) as usize].add(p);
                any = true;
            });
            let add_after = |i, p: &DetectPane| after_part[(i - after) as usize].add(p);
            job.detect.for_each_in(after, head, add_after);
        }
        let window = match any {
            true => &panes[..in_window],
            false => &[][..],
        };
        let sync = match held {
            Some(head) if head >= sync_first => {
                let from = match sync_first <= last {
                    true => (sync_first - first) as usize,
                    false => in_window,
                };
                let to = match head <= last {
                    true => (head - first + 1) as usize,
                    false => panes.len(),
                };
                &panes[from..to]
            }
            _ => &[][..],
        };
        let recent = now - 2 * slide;
        let mut devices: SmallVec<[detect::DeviceStat; 32]> = SmallVec::new();
        devices.extend(
            jobs.iter()
                .flat_map(|j| j.series.values())
                .filter(|s| s.last_ts >= recent)
                .filter_map(|s| s.device_stat(current)),
        );
        let duration_ms = jobs
            .iter()
            .map(|j| (j.account.last_ts.min(now) - j.account.first_ts).max(0))
            .min()
            .unwrap_or(0);
        detect::score(
            &detect::features(
                window,
                &devices,
                duration_ms as f64 / 1000.0,
                self.detection.synchrony_min_variation,
                sync,
            ),
            &self.detection,
        )
    }

    fn training_condition(
        &self,
        jobs: &[(&JobKey, &JobState)],
        v: &Verdict,
        threshold: f64,
        summary: String,
        now: i64,
    ) -> Condition {
        let states: Vec<&JobState> = jobs.iter().map(|(_, j)| *j).collect();
        let mut evidence =
            Evidence::Training(Box::new(self.training_evidence(&states, v, threshold, now)));
        if jobs.len() > 1 {
            evidence.insert(
                "group",
                serde_json::json!({
                    "start_tolerance_seconds": self.s.group_start_tolerance_ms as f64 / 1000.0,
                    "jobs": jobs.iter().map(|(k, j)| serde_json::json!({
                        "tenant": k.tenant.as_ref(),
                        "job": k.job.as_ref(),
                        "first_seen": format_rfc3339_ms(j.account.first_ts),
                        "max_concurrent_accelerators": j.max_concurrent,
                    })).collect::<Vec<_>>(),
                }),
            );
        }
        let mut flop = FlopEstimate::default();
        for j in &states {
            flop.add(&self.estimator.flop(&j.account.lifetime));
        }
        Condition {
            name: AlertName::TrainingSuspected,
            threshold: None,
            severity: Severity::Warning,
            summary,
            evidence,
            estimated_flop: flop,
            eta_ms: None,
            organisation: None,
        }
    }

    /// What a training verdict rests on: the score and every feature against its thresholds, the
    /// window, and the devices, nodes and time span involved. The same in alerts and `explain`.
    fn training_evidence(
        &self,
        jobs: &[&JobState],
        v: &Verdict,
        threshold: f64,
        now: i64,
    ) -> TrainingEvidence {
        let slide = self.s.detect_slide_ms;
        let first_ts = jobs.iter().map(|j| j.account.first_ts).min().unwrap_or(now);
        let last_ts = jobs.iter().map(|j| j.account.last_ts).max().unwrap_or(now);
        let recent = now - 2 * slide;
        let mut nodes: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.series.iter())
            .filter(|(_, s)| s.last_ts >= recent)
            .filter_map(|(key, _)| key.node())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let mut signals: Vec<Signal> = jobs
            .iter()
            .flat_map(|j| self.signals_available(j, now))
            .collect();
        signals.sort_unstable_by_key(|s| s.name());
        signals.dedup();
        let mut models: Vec<String> = jobs.iter().flat_map(|j| self.model_names(j)).collect();
        models.sort_unstable();
        models.dedup();
        TrainingEvidence {
            verdict: v.clone(),
            score_threshold: threshold,
            window_start_ms: (now - self.s.detect_window_ms)
                .max(first_ts.div_euclid(slide) * slide),
            window_end_ms: now,
            signals_available: signals,
            nodes: nodes.len(),
            node_sample: nodes.into_iter().take(16).map(Name::from).collect(),
            devices_reporting: jobs
                .iter()
                .flat_map(|j| j.series.values())
                .filter(|s| s.last_ts >= recent)
                .count(),
            accelerator_models: models,
            first_seen_ms: first_ts,
            last_seen_ms: last_ts,
            extra: Vec::new(),
        }
    }

    /// Why job `job` of `tenant` is or is not suspected of training, evaluated at the engine's
    /// latest evaluation time, or for a job that has ended at the end of its last slide (the same
    /// features and thresholds an alert would show).
    pub fn explain(&self, tenant: &str, job: &str) -> Option<Explanation> {
        let key = JobKey {
            tenant: Name::from(tenant),
            job: Name::from(job),
        };
        let state = self.st.jobs.get(&key)?;
        let latest = self
            .st
            .last_eval_ms
            .or(self.st.max_event_ms)
            .unwrap_or(state.account.last_ts);
        let ended = state.account.last_ts < latest - self.s.job_end_after_ms;
        // An ended job is explained as it was when last seen: at the end of its last slide.
        let slide = self.s.detect_slide_ms;
        let now = if ended {
            (state.account.last_ts.div_euclid(slide) + 1) * slide
        } else {
            latest
        };
        let v = self.verdict(&[state], now);
        let entity = Entity::job(key.tenant.clone(), key.job.clone());
        let threshold = self.score_threshold(&self.policy(&entity));
        let mut evidence = self
            .training_evidence(&[state], &v, threshold, now)
            .to_json();
        evidence["tenant_context"] =
            serde_json::to_value(self.registry.context(tenant)).unwrap_or_default();
        Some(Explanation {
            tenant: tenant.to_string(),
            job: job.to_string(),
            evaluated_at: format_rfc3339_ms(now),
            suspected: state.suspected,
            ended,
            score: v.score,
            gates_passed: v.gates_passed,
            evidence,
        })
    }

    fn signals_available(&self, job: &JobState, now: i64) -> Vec<Signal> {
        let slide = self.s.detect_slide_ms;
        let last = now.div_euclid(slide) - 1;
        let first = last - self.s.detect_panes + 1;
        Signal::ALL
            .iter()
            .filter(|s| {
                let mut received = false;
                job.detect
                    .for_each_in(first, last, |_, p| received |= p.received(**s));
                received
            })
            .copied()
            .collect()
    }

    fn model_names(&self, job: &JobState) -> Vec<String> {
        job.models
            .iter()
            .map(|(m, _)| {
                m.map_or_else(
                    || "unknown".to_string(),
                    |i| self.catalog.name(i).to_string(),
                )
            })
            .collect()
    }

    /// `ComputeThresholdCrossed` for every threshold the central estimate reached, and
    /// `ComputeThresholdProjected` for every threshold the current rate reaches within the horizon.
    /// Thresholds are scaled by `scale`, the threshold scale of the entity's policy in the tenant
    /// registry.
    fn compute_conditions(
        &self,
        entity: &Entity,
        account: &Account,
        scale: f64,
        now: i64,
    ) -> Vec<Condition> {
        let lifetime = self.estimator.flop(&account.lifetime);
        // Words and evidence are made only for a condition that holds.
        let who = || match (&entity.org, &entity.job) {
            (Some(o), _) => format!("organisation {o}"),
            (None, Some(j)) => format!("job {j} of tenant {}", entity.tenant),
            (None, None) => format!("tenant {}", entity.tenant),
        };
        let spec = &self.s.windows[self.s.projection_window];
        let window_end = spec.end_after(now.min(account.last_ts));
        let in_window = self.estimator.flop(&account.windows.value(
            &self.s.windows,
            self.s.projection_window,
            window_end,
        ));
        let observed_ms = (account.last_ts - account.first_ts).max(0);
        let rate_span_ms = observed_ms.min(spec.width_ms());
        let rate = if rate_span_ms > 0 {
            in_window.central / (rate_span_ms as f64 / 1000.0)
        } else {
            0.0
        };
        let mut out = Vec::new();
        for &nominal in &self.s.thresholds {
            let t = nominal * scale;
            let policy =
                || serde_json::json!({"nominal_threshold": nominal, "threshold_scale": scale});
            if lifetime.central >= t {
                out.push(Condition {
                    name: AlertName::ComputeThresholdCrossed,
                    threshold: Some(t),
                    severity: Severity::Critical,
                    summary: format!(
                        "{} crossed {t:e} FLOP (central estimate {:.3e})",
                        who(),
                        lifetime.central
                    ),
                    evidence: serde_json::json!({
                        "lifetime_flop": lifetime,
                        "accelerator_seconds": account.lifetime.accelerator_seconds(),
                        "first_seen": format_rfc3339_ms(account.first_ts),
                        "last_seen": format_rfc3339_ms(account.last_ts),
                        "threshold_policy": policy(),
                    })
                    .into(),
                    estimated_flop: lifetime,
                    eta_ms: None,
                    organisation: None,
                });
                continue;
            }
            if rate <= 0.0 || observed_ms < self.s.projection_min_duration_ms {
                continue;
            }
            let eta_s = (t - lifetime.central) / rate;
            if eta_s * 1000.0 <= self.s.projection_horizon_ms as f64 {
                let eta_ms = now + (eta_s * 1000.0) as i64;
                out.push(Condition {
                    name: AlertName::ComputeThresholdProjected,
                    threshold: Some(t),
                    severity: Severity::Warning,
                    summary: format!(
                        "{} is projected to cross {t:e} FLOP at {} (central estimate {:.3e}, rate {:.3e} FLOP/s over the last {})",
                        who(),
                        format_rfc3339_ms(eta_ms),
                        lifetime.central,
                        rate,
                        spec.name
                    ),
                    evidence: serde_json::json!({
                        "lifetime_flop": lifetime,
                        "rate_flop_per_second": rate,
                        "rate_window": spec.name,
                        "rate_window_flop": in_window,
                        "rate_span_seconds": rate_span_ms as f64 / 1000.0,
                        "horizon_seconds": self.s.projection_horizon_ms as f64 / 1000.0,
                        "seconds_to_threshold": eta_s,
                        "threshold_policy": policy(),
                    })
                    .into(),
                    estimated_flop: lifetime,
                    eta_ms: Some(eta_ms),
                    organisation: None,
                });
            }
        }
        out
    }

    /// Evicts keys no window can contain any more, and device series older than every horizon.
    /// Out of line: it runs once an hour of event time at most.
    #[inline(never)]
    fn sweep(&mut self, watermark: i64) {
        let longest = self
            .s
            .windows
            .iter()
            .map(|w| w.width_ms() + w.slide_ms())
            .max()
            .unwrap_or(0);
        let idle_before = watermark - longest;
        let series_before = watermark - self.s.dedup_horizon_ms.max(self.s.detect_window_ms);
        // Jobs leave when none of their samples has arrived while event time moved on by the
        // longest window. Ended jobs never suspected of training leave after the shorter
        // retention, so that job churn does not pile up for a month, once two clocks agree that
        // they ended: the partition's (nothing of the job arrived while its event time moved on
        // by the retention) and the tenant's own (the tenant's samples moved on by the retention
        // without the job). The partition's clock alone would drop the jobs of a tenant whose
        // exporter pauses or lags while others fill the partition, and the tenant's alone the
        // jobs of one lagging exporter among the tenant's several.
        let retention = self.s.ended_job_retention_ms;
        let retained_before = watermark - retention;
        // What no current or later window can read is let go: series past the de-duplication
        // and detection horizons, and rings whose newest pane is older than their window. A job
        // that has ended keeps only what its longer windows still hold, and its lifetime. One
        // pass over the jobs does both; a job's tenant is looked up only when the job's own
        // clock says it may have ended.
        let specs = &self.s.windows;
        let detect_slide = self.s.detect_slide_ms;
        let detect_panes = self.s.detect_panes;
        let tenants = &self.st.tenants;
        let mut gone: Vec<JobKey> = Vec::new();
        for (k, j) in self.st.jobs.iter_mut() {
            let ended = j.arrived_ms < idle_before
                || (!j.ever_suspected
                    && j.arrived_ms < retained_before
                    && tenants.get(&k.tenant).is_some_and(|t| {
                        j.account.last_ts < t.account.last_ts.saturating_sub(retention)
                    }));
            if ended {
                gone.push(k.clone());
                continue;
            }
            j.series.retain(|s| s.last_ts >= series_before);
            j.account.windows.release_stale(specs, watermark);
            j.detect
                .release_before(watermark.div_euclid(detect_slide) - detect_panes + 1);
        }
        for k in gone {
            self.st.jobs.remove(&k);
            self.reconcile(&Entity::job(k.tenant, k.job), Vec::new(), watermark);
        }
        // Tenants are few and their lifetime totals are what compliance reports on: an idle tenant
        // gives up its windows and series but keeps its lifetime, so a paused run that resumes
        // after a month still adds up. Its alerts resolve; they fire again if it comes back.
        let dormant: Vec<Name> = self
            .st
            .tenants
            .iter()
            .filter(|(_, t)| !t.dormant && t.account.last_ts < idle_before)
            .map(|(k, _)| k.clone())
            .collect();
        for t in dormant {
            let state = self.st.tenants.get_mut(&t).expect("listed above");
            state.dormant = true;
            state.account.windows = Windows::default();
            state.series = SeriesTable::default();
            self.reconcile(&Entity::tenant(t), Vec::new(), watermark);
        }
        // Organisations likewise keep their lifetime.
        let dormant: Vec<Name> = self
            .st
            .orgs
            .iter()
            .filter(|(_, o)| !o.dormant && o.account.last_ts < idle_before)
            .map(|(k, _)| k.clone())
            .collect();
        for o in dormant {
            let state = self.st.orgs.get_mut(&o).expect("listed above");
            state.dormant = true;
            state.account.windows = Windows::default();
            self.reconcile(&Entity::organisation(o), Vec::new(), watermark);
        }
        let specs = &self.s.windows;
        for t in self.st.tenants.values_mut() {
            t.series.retain(|s| s.last_ts >= series_before);
            t.account.windows.release_stale(specs, watermark);
        }
        for o in self.st.orgs.values_mut() {
            o.account.windows.release_stale(specs, watermark);
        }
        self.names.sweep();
        // Contexts no condition holds any more.
        self.contexts
            .by_tenant
            .retain(|_, (_, c)| Arc::strong_count(c) > 1);
    }

    fn window_values(
        &self,
        account: &Account,
        latest: i64,
    ) -> (WindowValues<f64>, WindowValues<FlopEstimate>) {
        let mut acc = Vec::with_capacity(self.s.windows.len());
        let mut flop = Vec::with_capacity(self.s.windows.len());
        for (i, spec) in self.s.windows.iter().enumerate() {
            let u = account
                .windows
                .value(&self.s.windows, i, spec.end_after(latest));
            acc.push((spec.name.clone(), u.accelerator_seconds()));
            flop.push((spec.name.clone(), self.estimator.flop(&u)));
        }
        (WindowValues(acc), WindowValues(flop))
    }

    /// Every tenant, sorted by name; windows relative to the latest event time seen.
    pub fn tenant_reports(&self) -> Vec<TenantReport> {
        self.tenant_reports_at(self.st.max_event_ms.unwrap_or(0))
    }

    /// Every tenant, with windows relative to event time `latest` (at or after this engine's own
    /// latest event, e.g. the latest over all partitions, so that every partition reports the same
    /// windows).
    pub fn tenant_reports_at(&self, latest: i64) -> Vec<TenantReport> {
        let owed = self.owed();
        let mut v: Vec<TenantReport> = self
            .st
            .tenants
            .iter()
            .map(|(t, s)| {
                let account = settled(&self.s, owed.tenants.get(&**t), &s.account);
                let (windows, window_flop) = self.window_values(&account, latest);
                TenantReport {
                    tenant: t.to_string(),
                    accelerator_seconds: account.lifetime.accelerator_seconds(),
                    estimated_flop: self.estimator.flop(&account.lifetime),
                    windows,
                    window_flop,
                    first_seen: format_rfc3339_ms(account.first_ts),
                    last_seen: format_rfc3339_ms(account.last_ts),
                }
            })
            .collect();
        v.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        v
    }

    /// Every organisation, with windows relative to event time `latest` (see
    /// [`Engine::tenant_reports_at`]).
    pub fn organisation_reports_at(&self, latest: i64) -> Vec<OrganisationReport> {
        let owed = self.owed();
        let mut v: Vec<OrganisationReport> = self
            .st
            .orgs
            .iter()
            .map(|(o, s)| {
                let account = settled(&self.s, owed.orgs.get(&**o), &s.account);
                let (windows, window_flop) = self.window_values(&account, latest);
                OrganisationReport {
                    organisation: o.to_string(),
                    accelerator_seconds: account.lifetime.accelerator_seconds(),
                    estimated_flop: self.estimator.flop(&account.lifetime),
                    windows,
                    window_flop,
                    first_seen: format_rfc3339_ms(account.first_ts),
                    last_seen: format_rfc3339_ms(account.last_ts),
                }
            })
            .collect();
        v.sort_by(|a, b| a.organisation.cmp(&b.organisation));
        v
    }

    /// What the jobs with samples since the last evaluation owe their tenants and organisations
    /// (see [`Credit`]), by name, in the order settling credits it: reports add it, so that they
    /// count every sample applied. The jobs lie at random in memory; each is loaded eight ahead
    /// of its turn.
    fn owed(&self) -> Owed<'_> {
        let mut owed = Owed::default();
        let keys = &self.st.touched_jobs;
        for (i, k) in keys.iter().enumerate() {
            let jobs = &self.st.jobs;
            if let Some((_, j)) = keys
                .get(i + 8)
                .and_then(|k| jobs.at_hash(jobs.hasher().hash_one(k)))
            {
                prefetch::value(j);
            }
            let Some(c) = self.st.jobs.get(k).and_then(|j| j.account.owed()) else {
                continue;
            };
            owed.tenants.entry(&k.tenant).or_default().push(c);
            // The organisation settling credits: resolved again under a changed registry.
            let org = match self.st.tenants.get(&*k.tenant) {
                Some(t) if t.org_epoch == self.registry_epoch => t.org.as_deref(),
                _ => self.registry.organisation(&k.tenant),
            };
            if let Some(org) = org {
                owed.orgs.entry(org).or_default().push(c);
            }
        }
        owed
    }

    /// Every job, sorted by tenant and job.
    pub fn job_reports(&self) -> Vec<JobReport> {
        self.job_reports_at(self.st.max_event_ms.unwrap_or(0))
    }

    /// Every job, with windows relative to event time `latest` (see [`Engine::tenant_reports_at`]).
    pub fn job_reports_at(&self, latest: i64) -> Vec<JobReport> {
        let mut v: Vec<JobReport> = self
            .st
            .jobs
            .iter()
            .map(|(k, j)| {
                let (windows, window_flop) = self.window_values(&j.account, latest);
                JobReport {
                    tenant: k.tenant.to_string(),
                    job: k.job.to_string(),
                    accelerator_seconds: j.account.lifetime.accelerator_seconds(),
                    max_concurrent_accelerators: j.max_concurrent as f64,
                    training_score: j.score,
                    suspected: j.suspected,
                    estimated_flop: self.estimator.flop(&j.account.lifetime),
                    windows,
                    window_flop,
                    accelerator_models: self.model_names(j),
                    first_seen: format_rfc3339_ms(j.account.first_ts),
                    last_seen: format_rfc3339_ms(j.account.last_ts),
                }
            })
            .collect();
        v.sort_by(|a, b| (&a.tenant, &a.job).cmp(&(&b.tenant, &b.job)));
        v
    }

    /// Lifetime accelerator-seconds and central FLOP of each tenant (for bounded per-tenant
    /// metrics), by borrowed name, as of the latest evaluation: what the jobs owe (see `Credit`)
    /// is not looked up, so that the metrics refreshed every second do not read every job's entry.
    /// Reports count it ([`Engine::tenant_reports_at`]).
    pub fn tenant_totals(&self) -> impl Iterator<Item = (&str, (f64, f64))> + '_ {
        self.st.tenants.iter().map(|(t, s)| {
            let u = &s.account.lifetime;
            (
                &**t,
                (u.accelerator_seconds(), self.estimator.flop(u).central),
            )
        })
    }
}

/// Sorts job keys by tenant name, then job name. Each name's first eight bytes are read once, in
/// order, and compared as numbers, so most comparisons read no name (a long one lies at random in
/// memory), and the tenant names of two keys that share the tenant's one copy are not compared.
fn sort_by_name(jobs: &mut Vec<JobKey>) {
    fn prefix(s: &str) -> u64 {
        let mut b = [0u8; 8];
        let n = s.len().min(8);
        b[..n].copy_from_slice(&s.as_bytes()[..n]);
        u64::from_be_bytes(b)
    }
    let mut keyed: Vec<(u64, u64, JobKey)> = jobs
        .drain(..)
        .map(|k| (prefix(&k.tenant), prefix(&k.job), k))
        .collect();
    keyed.sort_unstable_by(|(ta, ja, a), (tb, jb, b)| {
        ta.cmp(tb)
            .then_with(|| a.tenant.cmp(&b.tenant))
            .then_with(|| ja.cmp(jb))
            .then_with(|| a.job.cmp(&b.job))
    });
    jobs.extend(keyed.into_iter().map(|(_, _, k)| k));
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Group candidates come out in the full order (owner by hash then by name, start time,
        /// key hash, key names) whether or not hashes tie: here owners' and keys' hashes take
        /// two values, so different owners, and different keys, share one all the time.
        #[test]
        fn group_candidates_order_by_owner_start_and_key_whatever_hashes_tie(
            picks in proptest::collection::btree_set((0usize..4, 0usize..4), 1..16),
            starts in proptest::collection::vec(0i64..3, 16),
        ) {
            // Tenant 0 is its own owner; tenant 2 belongs to org-a, tenants 1 and 3 to org-b,
            // whose hash tenant 0 shares.
            let org = |t: usize| match t {
                0 => None,
                2 => Some(Name::from("org-a")),
                _ => Some(Name::from("org-b")),
            };
            let owner_hash = |t: usize| u64::from(t != 2);
            let jobs: Vec<JobKey> = picks
                .iter()
                .map(|&(t, j)| JobKey {
                    tenant: Name::from(format!("tenant-{t}").as_str()),
                    job: Name::from(format!("job-{j}").as_str()),
                })
                .collect();
            let candidates = || {
                picks.iter().enumerate().map(|(i, &(t, j))| GroupCandidate {
                    job: i as u32,
                    key_hash: ((t + j) % 2) as u64,
                    table_hash: 0,
                    org: org(t),
                    owner_hash: owner_hash(t),
                    threshold: 0.75,
                    first_ts: starts[i],
                    suspected: false,
                    max_concurrent: 8.0,
                })
            };
            // The full order, names compared wherever the numbers tie.
            let mut expected: Vec<GroupCandidate> = candidates().collect();
            expected.sort_by(|a, b| {
                // As the entities order: by tenant (none for an organisation), then organisation.
                let owner = |c: &GroupCandidate| match &c.org {
                    Some(o) => (String::new(), o.to_string()),
                    None => (jobs[c.job as usize].tenant.to_string(), String::new()),
                };
                let key = |c: &GroupCandidate| {
                    let k = &jobs[c.job as usize];
                    (k.tenant.to_string(), k.job.to_string())
                };
                (a.owner_hash, owner(a), a.first_ts, a.key_hash, key(a))
                    .cmp(&(b.owner_hash, owner(b), b.first_ts, b.key_hash, key(b)))
            });
            let mut got: Vec<GroupCandidate> = candidates().collect();
            order_candidates(&mut got, &jobs);
            let positions = |v: &[GroupCandidate]| v.iter().map(|c| c.job).collect::<Vec<_>>();
            proptest::prop_assert_eq!(positions(&got), positions(&expected));
        }
    }

    proptest::proptest! {
        /// The panes a sample touches are those the three divisions give, wherever `ts` and its
        /// interval fall against the slides (on a boundary, just after one, reaching back over
        /// several, or none at all).
        #[test]
        fn detection_panes_are_the_divisions_they_spare(
            ts in -1_000_000i64..1_000_000,
            interval in 0i64..300_000,
            slide in 1i64..100_000,
            on_boundary in proptest::bool::ANY,
        ) {
            let ts = if on_boundary { ts.div_euclid(slide) * slide } else { ts };
            proptest::prop_assert_eq!(
                detection_panes(ts, interval, slide),
                (ts.div_euclid(slide), (ts - interval).div_euclid(slide), (ts - 1).div_euclid(slide))
            );
        }

        /// A series' half window taken near its current one (`window::pane_near`, as
        /// `SeriesState` does) is `ts.div_euclid(span)` whatever half is current (the one of
        /// `ts`, one before or after it, far away, or none yet), also for a `ts` on a boundary.
        #[test]
        fn a_half_taken_near_the_current_one_is_the_division_it_spares(
            ts in -10_000_000i64..10_000_000,
            span in 1i64..1_000_000,
            offset in -3i64..3,
            none_yet in proptest::bool::ANY,
            on_boundary in proptest::bool::ANY,
        ) {
            let ts = if on_boundary { ts.div_euclid(span) * span } else { ts };
            let current = if none_yet { i64::MIN } else { ts.div_euclid(span) + offset };
            proptest::prop_assert_eq!(crate::window::pane_near(ts, span, Some(current)), ts.div_euclid(span));
        }
    }

    proptest::proptest! {
        /// Sorting job keys with name prefixes and shared tenant copies gives the order of their
        /// names, also for names that share prefixes, are shorter than eight bytes, hold NULs or
        /// are too long to be held inline.
        #[test]
        fn job_keys_sort_by_tenant_then_job_name(
            names in proptest::collection::vec(("[ab\\x00]{0,30}", "[ab\\x00]{0,30}"), 0..60)
        ) {
            let mut tenants: Vec<Name> = Vec::new();
            let mut keys: Vec<JobKey> = names
                .iter()
                .map(|(t, j)| {
                    // One shared copy per tenant name, as the engine keeps them, and now and then
                    // a second copy of the same name.
                    let tenant = match tenants.iter().find(|x| ***x == **t) {
                        Some(x) if j.len() % 2 == 0 => x.clone(),
                        _ => {
                            let x: Name = Name::from(t.as_str());
                            tenants.push(x.clone());
                            x
                        }
                    };
                    JobKey { tenant, job: Name::from(j.as_str()) }
                })
                .collect();
            let mut expected: Vec<(String, String)> = names.clone();
            expected.sort();
            sort_by_name(&mut keys);
            let got: Vec<(String, String)> =
                keys.iter().map(|k| (k.tenant.to_string(), k.job.to_string())).collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }

    const T0: i64 = 1_714_521_600_000; // 2024-05-01T00:00:00Z
    const MIN: i64 = 60_000;

    fn engine() -> Engine {
        Engine::new(&Config::default()).unwrap()
    }

    fn gpu_sample(ts: i64, job: &str, gpu: usize) -> UsageSample {
        UsageSample::new(ts, "acme", 1.0, 30.0)
            .job(job)
            .device(format!("node-{}", gpu / 8), (gpu % 8).to_string())
            .accelerator("NVIDIA H100 80GB HBM3")
            .tensor_active(0.45)
    }

    /// The checkpoint's encoding of `v`.
    fn bincode_of(v: &impl Serialize) -> Vec<u8> {
        use bincode::Options as _;
        crate::checkpoint::opts().serialize(v).unwrap()
    }

    #[test]
    fn job_and_tenant_states_read_back_field_by_field_whatever_their_layout() {
        use bincode::Options as _;
        let mut e = engine();
        for gpu in 0..3 {
            e.apply(&gpu_sample(60_000, "job", gpu));
        }
        let (_, job) = e.st.jobs.iter_mut().next().unwrap();
        // Every scalar distinct from its default and from its neighbours in the checkpoint.
        job.max_concurrent = 3.5;
        job.score = 0.25;
        job.suspected = true;
        job.ever_suspected = false;
        job.arrived_ms = 77;
        job.touched = true;
        job.models.push((Some(2), 9));
        let job = &*job;
        let back: JobState = crate::checkpoint::opts()
            .deserialize(&bincode_of(job))
            .unwrap();
        assert_eq!(back.max_concurrent, 3.5);
        assert_eq!(back.score, 0.25);
        assert!(back.suspected && !back.ever_suspected && back.touched);
        assert_eq!(back.arrived_ms, 77);
        assert_eq!(back.models.as_slice(), job.models.as_slice());
        assert_eq!(back.series.len(), 3);
        assert_eq!(
            (back.account.first_ts, back.account.last_ts),
            (job.account.first_ts, job.account.last_ts)
        );
        assert_eq!(bincode_of(&back), bincode_of(job));

        let tenant = e.st.tenants.get_mut("acme").unwrap();
        tenant.dormant = true;
        tenant.training = false;
        tenant.touched = true;
        let tenant = &*tenant;
        let back: TenantState = crate::checkpoint::opts()
            .deserialize(&bincode_of(tenant))
            .unwrap();
        assert!(back.dormant && !back.training && back.touched);
        assert_eq!(back.account.lifetime, tenant.account.lifetime);
        assert_eq!(bincode_of(&back), bincode_of(tenant));
    }

    #[test]
    fn the_job_and_tenant_tables_serialize_as_serdes_maps_of_them_do() {
        struct Prefetched<'a>(&'a JobTable);
        impl Serialize for Prefetched<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_jobs(self.0, s)
            }
        }
        struct PrefetchedTenants<'a>(&'a TenantTable);
        impl Serialize for PrefetchedTenants<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_tenants(self.0, s)
            }
        }
        let mut e = engine();
        // More jobs and tenants than the look-ahead, of one to twelve devices, some over several
        // minutes.
        for j in 0..40 {
            for minute in 0..(1 + j % 3) {
                for gpu in 0..(1 + j % 12) {
                    let s = gpu_sample(minute * 60_000, &format!("job-{j}"), gpu as usize);
                    e.apply(&UsageSample {
                        tenant: format!("tenant-{}", j % 20),
                        ..s
                    });
                }
            }
        }
        assert_eq!(e.tenant_count(), 20);
        let ours = bincode_of(&Prefetched(&e.st.jobs));
        assert_eq!(ours, bincode_of(&e.st.jobs));
        assert!(ours.len() > 40 * 100);
        let ours = bincode_of(&PrefetchedTenants(&e.st.tenants));
        assert_eq!(ours, bincode_of(&e.st.tenants));
        assert!(ours.len() > 20 * 100);
    }

    #[test]
    fn duplicates_are_counted_once() {
        let mut e = engine();
        let s = gpu_sample(T0, "j", 0);
        assert_eq!(
            e.apply(&s),
            Applied::Accepted {
                late: false,
                unverified: false
            }
        );
        assert_eq!(e.apply(&s), Applied::Duplicate);
        assert_eq!(e.stats().duplicate, 1);
        assert_eq!(e.job_reports()[0].accelerator_seconds, 30.0);
        // Same time on another device is not a duplicate.
        assert!(matches!(
            e.apply(&gpu_sample(T0, "j", 1)),
            Applied::Accepted { .. }
        ));
        assert_eq!(e.tenant_reports()[0].accelerator_seconds, 60.0);
    }

    #[test]
    fn late_samples_still_count_in_lifetime_and_open_windows() {
        let mut e = engine();
        e.apply(&gpu_sample(T0 + 30 * MIN, "j", 0));
        let out = e.apply(&gpu_sample(T0 + 10 * MIN, "j", 1));
        assert_eq!(
            out,
            Applied::Accepted {
                late: true,
                unverified: true
            }
        );
        let t = &e.tenant_reports()[0];
        assert_eq!(t.accelerator_seconds, 60.0);
        assert_eq!(t.windows.0[0], ("1h".to_string(), 60.0));
        assert_eq!(e.stats().late, 1);
    }

    #[test]
    fn large_steady_gang_is_suspected_then_resolves_when_it_ends() {
        let mut e = engine();
        for step in 0..(3 * 120) {
            let ts = T0 + step * 30_000;
            for gpu in 0..128 {
                e.apply(&gpu_sample(ts, "pretrain", gpu));
            }
        }
        let alerts = e.drain_alerts();
        let fired: Vec<_> = alerts
            .iter()
            .filter(|a| a.alertname == AlertName::TrainingSuspected)
            .collect();
        assert_eq!(fired[0].status, crate::alert::Status::Firing);
        assert_eq!(fired[0].job.as_deref(), Some("pretrain"));
        let job = &e.job_reports()[0];
        assert!(job.suspected);
        assert_eq!(job.max_concurrent_accelerators, 128.0);
        assert_eq!(job.accelerator_models, vec!["H100 SXM".to_string()]);
        // Another tenant's traffic moves time on; the job has stopped, so its alert resolves.
        for step in 0..60 {
            e.apply(&UsageSample::new(
                T0 + 3 * 3_600_000 + step * MIN,
                "other",
                1.0,
                60.0,
            ));
        }
        let alerts = e.drain_alerts();
        assert!(alerts
            .iter()
            .any(|a| a.alertname == AlertName::TrainingSuspected
                && a.status == crate::alert::Status::Resolved));
        assert!(!e.job_reports()[0].suspected);
    }

    #[test]
    fn ended_jobs_leave_after_the_retention_unless_once_suspected() {
        let mut e = engine();
        for step in 0..(3 * 120) {
            let ts = T0 + step * 30_000;
            for gpu in 0..128 {
                e.apply(&gpu_sample(ts, "pretrain", gpu));
            }
            e.apply(&gpu_sample(ts, "notebook", 0));
        }
        let jobs = |e: &Engine| -> Vec<String> {
            let mut j: Vec<String> = e.job_reports().into_iter().map(|j| j.job).collect();
            j.sort();
            j
        };
        assert_eq!(jobs(&e), ["notebook", "pretrain"]);
        let acme = |e: &Engine| {
            let tenants = e.tenant_reports();
            tenants
                .iter()
                .find(|t| t.tenant == "acme")
                .unwrap()
                .accelerator_seconds
        };
        let before = acme(&e);
        // Three hours of the tenant's next job: past the one-hour retention and a sweep.
        for step in 0..180 {
            e.apply(&gpu_sample(T0 + 3 * 3_600_000 + step * MIN, "next", 0));
        }
        assert_eq!(
            jobs(&e),
            ["next", "pretrain"],
            "the ended job never suspected is dropped, the suspected one is kept"
        );
        assert_eq!(
            acme(&e),
            before + 180.0 * 30.0,
            "the tenant's totals keep the dropped job's usage"
        );
    }

    #[test]
    fn the_lists_of_touched_keys_keep_their_storage_across_evaluations() {
        let mut e = engine();
        let sample = |minute: i64, j: usize| {
            UsageSample::new(T0 + minute * MIN, format!("t{}", j % 7), 1.0, 60.0)
                .job(format!("j{j}"))
        };
        for j in 0..300 {
            e.apply(&sample(0, j));
        }
        assert_eq!(e.st.touched_jobs.len(), 300);
        assert_eq!(e.st.touched_tenants.len(), 7);
        // The next minute's first sample evaluates the first minute's keys.
        e.apply(&sample(1, 0));
        assert!(e.evaluated_at_ms().is_some());
        assert_eq!(e.st.touched_jobs.len(), 1);
        assert!(
            e.st.touched_jobs.capacity() >= 300,
            "the list kept its storage"
        );
        assert!(e.st.touched_tenants.capacity() >= 7);
        // The minute after evaluates the same keys, listed again.
        for j in 1..300 {
            e.apply(&sample(1, j));
        }
        e.apply(&sample(2, 0));
        assert_eq!(e.st.touched_jobs.len(), 1);
        assert_eq!(e.job_reports().len(), 300);
    }

    #[test]
    fn storage_kept_for_touched_keys_is_given_back_beyond_four_times_what_a_period_used() {
        let mut list: Vec<u64> = Vec::new();
        keep_storage(&mut list, Vec::with_capacity(100));
        assert!(list.is_empty() && list.capacity() >= 100);
        // A list that took keys meanwhile keeps its own.
        let mut list = vec![7];
        keep_storage(&mut list, Vec::with_capacity(100));
        assert_eq!(list, [7]);
        // After a burst, a quiet period's list holds about twice what it used.
        let mut list = Vec::new();
        let mut used: Vec<u64> = Vec::with_capacity(100_000);
        used.extend(0..10);
        keep_storage(&mut list, used);
        assert!(
            list.is_empty() && list.capacity() < 4096,
            "{}",
            list.capacity()
        );
    }

    #[test]
    fn a_tenant_silent_while_others_fill_the_partition_keeps_its_jobs() {
        let mut e = engine();
        // The tenant's exporter pauses for three hours while another tenant's samples move the
        // partition's event time on; then its backlog arrives. Nothing tells an ended job from a
        // paused exporter until the tenant's own samples move on, so the job stays one job.
        let mut expected = 0.0;
        for step in 0..60 {
            e.apply(&UsageSample::new(T0 + step * MIN, "paused", 1.0, 60.0).job("run"));
            expected += 60.0;
        }
        for step in 0..(4 * 60) {
            e.apply(&UsageSample::new(T0 + step * MIN, "busy", 1.0, 60.0));
        }
        for step in 60..(4 * 60) {
            e.apply(&UsageSample::new(T0 + step * MIN, "paused", 1.0, 60.0).job("run"));
            expected += 60.0;
        }
        let run = e
            .job_reports()
            .into_iter()
            .find(|j| j.job == "run")
            .expect("the paused tenant's job is held");
        assert_eq!(run.accelerator_seconds, expected);
    }

    #[test]
    fn a_job_whose_samples_arrive_hours_late_keeps_its_lifetime() {
        let mut e = engine();
        // Two exporters of one tenant: one is current, the other replays its buffer two hours
        // behind. The lagging job's event times stay behind the retention horizon, and behind
        // its tenant's newest sample by more than the retention, the whole time; but its samples
        // keep arriving, so it is one job with one lifetime.
        let lag = 2 * 3_600_000;
        let steps = 6 * 60;
        for step in 0..steps {
            let ts = T0 + lag + step * MIN;
            e.apply(&UsageSample::new(ts, "acme", 1.0, 60.0).job("live"));
            e.apply(&UsageSample::new(ts - lag, "acme", 1.0, 60.0).job("replayed"));
        }
        let replayed = e
            .job_reports()
            .into_iter()
            .find(|j| j.job == "replayed")
            .expect("the lagging job is held");
        assert_eq!(replayed.accelerator_seconds, steps as f64 * 60.0);
    }

    #[test]
    fn idle_jobs_are_evicted_and_idle_tenants_keep_their_lifetime() {
        let mut e = engine();
        e.apply(&gpu_sample(T0, "short", 0));
        let later = T0 + 32 * 86_400_000;
        for h in 0..3 {
            e.apply(&UsageSample::new(later + h * 3_600_000, "other", 1.0, 60.0));
        }
        assert!(e.job_reports().is_empty(), "the idle job is evicted");
        let acme = e
            .tenant_reports()
            .into_iter()
            .find(|t| t.tenant == "acme")
            .unwrap();
        assert_eq!(
            acme.accelerator_seconds, 30.0,
            "an idle tenant keeps its lifetime total"
        );
        assert!(acme.windows.0.iter().all(|(_, v)| *v == 0.0));
        // It comes back a month later: the lifetime adds up across the pause.
        e.apply(&gpu_sample(later + 3 * 3_600_000, "resumed", 0));
        let acme = e
            .tenant_reports()
            .into_iter()
            .find(|t| t.tenant == "acme")
            .unwrap();
        assert_eq!(acme.accelerator_seconds, 60.0);
    }

    /// `jobs` jobs of `gpus` GPUs each, job `j` of tenant `tenant(j)` starting `start(j)` minutes
    /// after T0, all sampled every 30 s until `minutes` after T0.
    fn run_split(
        e: &mut Engine,
        jobs: usize,
        gpus: usize,
        tenant: impl Fn(usize) -> String,
        start: impl Fn(usize) -> i64,
        minutes: i64,
    ) {
        for step in 0..(minutes * 2) {
            let ts = T0 + step * 30_000;
            for j in 0..jobs {
                if ts < T0 + start(j) * MIN {
                    continue;
                }
                for g in 0..gpus {
                    let mut s = gpu_sample(ts, &format!("part-{j}"), g);
                    s.tenant = tenant(j);
                    s.node = Some(format!("node-{j}-{}", g / 8));
                    e.apply(&s);
                }
            }
        }
    }

    /// The latest firing record of each distinct `TrainingSuspected` alert.
    fn training_alerts(alerts: &[AlertRecord]) -> Vec<&AlertRecord> {
        let mut out: Vec<&AlertRecord> = Vec::new();
        for a in alerts.iter().filter(|a| {
            a.alertname == AlertName::TrainingSuspected && a.status == crate::alert::Status::Firing
        }) {
            match out.iter_mut().find(|b| b.dedup_key == a.dedup_key) {
                Some(b) => *b = a,
                None => out.push(a),
            }
        }
        out
    }

    #[test]
    fn a_run_split_into_jobs_below_the_gang_gate_is_caught_as_one_group() {
        let mut e = engine();
        run_split(&mut e, 8, 32, |_| "acme".into(), |j| j as i64, 120);
        let alerts = e.drain_alerts();
        let fired = training_alerts(&alerts);
        assert_eq!(fired.len(), 1, "{fired:#?}");
        let a = fired[0];
        assert_eq!(a.scope, crate::alert::Scope::Tenant);
        assert_eq!(a.tenant, "acme");
        assert_eq!(a.job, None);
        assert_eq!(
            a.evidence.to_json()["group"]["jobs"]
                .as_array()
                .unwrap()
                .len(),
            8
        );
        assert_eq!(a.evidence.to_json()["features"][0]["value"], 256.0);
        assert!(e.job_reports().iter().all(|j| !j.suspected));
    }

    #[test]
    fn a_group_whose_jobs_together_just_reach_the_gang_gate_is_still_caught() {
        // 2 x 32 devices: exactly `detection.accelerators.high` (64) at the group's peak, the
        // most a group can reach; one device fewer and the group can never fire the gate.
        let mut e = engine();
        run_split(&mut e, 2, 32, |_| "acme".into(), |_| 0, 120);
        let alerts = e.drain_alerts();
        let fired = training_alerts(&alerts);
        assert_eq!(fired.len(), 1, "{fired:#?}");
        assert_eq!(fired[0].evidence.to_json()["features"][0]["value"], 64.0);
        let mut fewer = engine();
        for s in (0..240).flat_map(|step| {
            let ts = T0 + step * 30_000;
            (0..2).flat_map(move |j| {
                (0..(32 - j)).map(move |g| {
                    let mut s = gpu_sample(ts, &format!("part-{j}"), g);
                    s.tenant = "acme".into();
                    s.node = Some(format!("node-{j}-{}", g / 8));
                    s
                })
            })
        }) {
            fewer.apply(&s);
        }
        assert!(training_alerts(&fewer.drain_alerts()).is_empty());
    }

    #[test]
    fn a_group_and_its_evidence_do_not_depend_on_which_of_its_jobs_reports_first() {
        let run = |reverse: bool| {
            let mut e = engine();
            for step in 0..240 {
                let ts = T0 + step * 30_000;
                let mut order: Vec<usize> = (0..8).collect();
                if reverse {
                    order.reverse();
                }
                for j in order {
                    for g in 0..32 {
                        let mut s = gpu_sample(ts, &format!("part-{j}"), g);
                        s.tenant = "acme".into();
                        s.node = Some(format!("node-{j}-{}", g / 8));
                        e.apply(&s);
                    }
                }
            }
            let alerts = e.drain_alerts();
            training_alerts(&alerts)
                .iter()
                .map(|a| (a.dedup_key.clone(), a.evidence.to_json_string()))
                .collect::<Vec<_>>()
        };
        let forward = run(false);
        assert_eq!(forward.len(), 1, "{forward:#?}");
        assert_eq!(forward, run(true));
    }

    #[test]
    fn every_evaluation_is_reported_once_with_the_jobs_it_evaluated() {
        let mut e = engine();
        // Samples every 30 s for 20 minutes from T0 (on a minute): the watermark, 5 minutes
        // behind, goes from T0 - 5 min to T0 + 14.5 min, across the boundaries T0 - 4 min to
        // T0 + 14 min.
        run_split(&mut e, 3, 4, |_| "acme".into(), |_| 0, 20);
        let evaluations: Vec<Evaluation> = e.drain_evaluations().collect();
        assert_eq!(evaluations.len(), 19, "{evaluations:?}");
        assert!(evaluations
            .iter()
            .all(|x| x.jobs == 3 && x.seconds >= 0.0 && x.seconds < 60.0));
        assert_eq!(e.drain_evaluations().count(), 0);
    }

    /// Group candidates are told apart by their owner's hash, then by the address of its name,
    /// and only when both hashes tie and the addresses differ by the names themselves: equal
    /// names in separate copies are one owner, and two owners whose hashes collide stay two.
    #[test]
    fn group_candidates_have_one_owner_exactly_when_their_owners_names_are_equal() {
        let key = |tenant: &str, job: &str| JobKey {
            tenant: Name::from(tenant),
            job: Name::from(job),
        };
        // Two copies of tenant a's name, and tenant b's.
        let jobs = [key("a", "j1"), key("a", "j2"), key("b", "j3")];
        let candidate = |job: u32, owner_hash: u64, org: Option<&Name>| GroupCandidate {
            job,
            key_hash: 0,
            table_hash: 0,
            org: org.cloned(),
            owner_hash,
            threshold: 0.75,
            first_ts: 0,
            suspected: false,
            max_concurrent: 1.0,
        };
        let (a1, a2, b) = (
            candidate(0, 7, None),
            candidate(1, 7, None),
            candidate(2, 7, None),
        );
        assert!(a1.same_owner(&a2, &jobs), "equal names in two copies");
        assert_eq!(a1.cmp_owner(&a2, &jobs), std::cmp::Ordering::Equal);
        assert!(
            !a1.same_owner(&b, &jobs),
            "a hash collision is not one owner"
        );
        assert_eq!(a1.cmp_owner(&b, &jobs), std::cmp::Ordering::Less);
        assert_eq!(b.cmp_owner(&a1, &jobs), std::cmp::Ordering::Greater);
        assert!(
            !a1.same_owner(&candidate(0, 8, None), &jobs),
            "another hash"
        );
        // An organisation is never the same owner as a tenant, even one of the same name.
        let org: Name = Name::from("a");
        let o1 = candidate(0, 7, Some(&org));
        assert!(!o1.same_owner(&a1, &jobs));
        assert!(o1.same_owner(&candidate(2, 7, Some(&Name::from("a"))), &jobs));
        assert_eq!(o1.owner(&jobs), Entity::organisation(org.clone()));
        assert_eq!(b.owner(&jobs), Entity::tenant(Name::from("b")));
    }

    #[test]
    fn jobs_that_did_not_start_together_are_not_grouped() {
        let mut e = engine();
        // 20 minutes apart: each pair is beyond the 15-minute start tolerance.
        run_split(&mut e, 4, 32, |_| "acme".into(), |j| 20 * j as i64, 180);
        assert!(training_alerts(&e.drain_alerts()).is_empty());
    }

    fn registry(text: &str) -> Arc<Registry> {
        Arc::new(Registry::parse(text).unwrap())
    }

    #[test]
    fn a_run_split_across_tenants_of_one_organisation_is_an_organisation_alert() {
        let mut e = engine();
        e.set_registry(registry(
            r#"
            [tenants.acme-a]
            organisation = "acme"
            [tenants.acme-b]
            organisation = "acme"
            [tenants.acme-c]
            organisation = "acme"
            [tenants.acme-d]
            organisation = "acme"
            "#,
        ));
        let tenants = ["acme-a", "acme-b", "acme-c", "acme-d"];
        run_split(&mut e, 4, 32, |j| tenants[j].into(), |_| 0, 120);
        let alerts = e.drain_alerts();
        let fired = training_alerts(&alerts);
        assert_eq!(fired.len(), 1, "{fired:#?}");
        let a = fired[0];
        assert_eq!(a.scope, crate::alert::Scope::Organisation);
        assert_eq!(a.organisation.as_deref(), Some("acme"));
        assert_eq!(a.dedup_key, "TrainingSuspected||||acme");
        let evidence = a.evidence.to_json();
        assert_eq!(evidence["features"][0]["value"], 128.0);
        let members: Vec<&str> = evidence["tenant_context"]["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(members, tenants);
        // The organisation's accounting is the sum of its tenants'.
        let t: f64 = e
            .tenant_reports()
            .iter()
            .map(|t| t.accelerator_seconds)
            .sum();
        let o = &e.organisation_reports_at(0)[0];
        assert_eq!(o.organisation, "acme");
        assert_eq!(o.accelerator_seconds, t);
    }

    /// A new engine from a checkpoint of `e`'s state, encoded and decoded as on disk.
    fn through_checkpoint(e: &Engine, cfg: &Config) -> Engine {
        let header = crate::checkpoint::Header {
            topic: "t".into(),
            partition: 0,
            next_offset: 0,
            shape: e.shape(),
            written_at_ms: 0,
        };
        let bytes = crate::checkpoint::encode(&header, e.state()).unwrap();
        let cp = crate::checkpoint::decode(std::path::Path::new("x"), &bytes).unwrap();
        Engine::with_state(cfg, cp.state).unwrap()
    }

    #[test]
    fn a_tenant_counts_toward_the_organisation_of_the_registry_in_force_when_each_sample_arrives() {
        // Samples of a job reach the organisation through the job (`Credit`); samples of no job
        // directly. Either way each counts toward the organisation in force when it arrived.
        for job in [None, Some("j")] {
            let cfg = Config::default();
            let mut e = Engine::new(&cfg).unwrap();
            let org_of = |name: &str| format!("[tenants.t1]\norganisation = \"{name}\"\n");
            let minute = |m: i64| {
                let s = UsageSample::new(1_714_521_600_000 + m * 60_000, "t1", 8.0, 60.0);
                match job {
                    Some(j) => s.job(j),
                    None => s,
                }
            };
            let seconds = |e: &Engine, org: &str| {
                e.organisation_reports_at(0)
                    .iter()
                    .find(|o| o.organisation == org)
                    .map_or(0.0, |o| o.accelerator_seconds)
            };
            e.set_registry(registry(&org_of("acme")));
            e.apply(&minute(0));
            e.apply(&minute(1));
            e.set_registry(registry(&org_of("globex")));
            e.apply(&minute(2));
            e.set_registry(registry(""));
            e.apply(&minute(3));
            assert_eq!(seconds(&e, "acme"), 2.0 * 8.0 * 60.0, "{job:?}");
            assert_eq!(seconds(&e, "globex"), 8.0 * 60.0, "{job:?}");

            // A restored engine, given the registry in force (as the pipeline gives it before
            // any sample), resolves the organisation under its own registry from then on.
            let mut restored = through_checkpoint(&e, &cfg);
            restored.set_registry(registry(""));
            restored.apply(&minute(4));
            restored.set_registry(registry(&org_of("globex")));
            restored.apply(&minute(5));
            assert_eq!(seconds(&restored, "acme"), 2.0 * 8.0 * 60.0, "{job:?}");
            assert_eq!(seconds(&restored, "globex"), 2.0 * 8.0 * 60.0, "{job:?}");
        }
    }

    #[test]
    fn reports_count_what_jobs_owe_their_tenant_and_the_tenant_metrics_count_it_once_evaluated() {
        let cfg = Config::default();
        let mut e = Engine::new(&cfg).unwrap();
        e.set_registry(registry(
            "[tenants.acme]\norganisation = \"conglomerate\"\n",
        ));
        // Two jobs of the tenant, inside one minute: nothing is evaluated, nothing credited yet.
        for gpu in 0..4 {
            e.apply(&gpu_sample(T0 + 10_000, "a", gpu));
            e.apply(&gpu_sample(T0 + 20_000, "b", gpu));
        }
        e.apply(&UsageSample::new(T0 + 30_000, "acme", 2.0, 30.0));
        let expected = 8.0 * 30.0 + 2.0 * 30.0;
        let report = |e: &Engine| {
            let t = e.tenant_reports();
            let o = e.organisation_reports_at(e.st.max_event_ms.unwrap());
            assert_eq!((t.len(), o.len()), (1, 1));
            (t[0].clone(), o[0].accelerator_seconds, o[0].windows.clone())
        };
        let (tenant, org, org_windows) = report(&e);
        assert_eq!(tenant.accelerator_seconds, expected);
        assert_eq!(org, expected);
        for (name, v) in tenant.windows.0.iter().chain(&org_windows.0) {
            assert_eq!(*v, expected, "window {name}");
        }
        assert_eq!(tenant.first_seen, format_rfc3339_ms(T0 + 10_000));
        assert_eq!(tenant.last_seen, format_rfc3339_ms(T0 + 30_000));
        let totals = |e: &Engine| e.tenant_totals().map(|(_, (s, _))| s).sum::<f64>();
        assert_eq!(
            totals(&e),
            2.0 * 30.0,
            "the metrics count the jobs' samples once evaluated"
        );
        // A checkpoint holds what the jobs owe as they hold it.
        let mut restored = through_checkpoint(&e, &cfg);
        restored.set_registry(e.registry.clone());
        assert_eq!(report(&restored), report(&e));
        // The evaluation at the next minute's end credits the tenant.
        e.apply(&UsageSample::new(T0 + 6 * MIN + 30_000, "acme", 1.0, 30.0));
        assert_eq!(e.st.last_eval_ms, Some(T0 + MIN));
        assert_eq!(totals(&e), expected + 30.0);
        assert_eq!(report(&e).0.accelerator_seconds, expected + 30.0);
    }

    #[test]
    fn a_restored_state_shares_one_copy_of_each_long_name_like_the_state_it_was_taken_of() {
        let cfg = Config::default();
        let mut e = Engine::new(&cfg).unwrap();
        let tenant = "a-tenant-named-beyond-the-inline-limit";
        let long_job = "a-job-named-beyond-the-inline-limit";
        let long_node = "a-node-named-beyond-what-a-series-key-holds";
        let devices = [
            (long_job, long_node, "0"),
            (long_job, long_node, "1"),
            ("j2", long_node, "0"),
            ("j2", "node-b", "1"),
        ];
        for (job, node, gpu) in devices {
            let s = UsageSample::new(1_714_521_600_000, tenant, 1.0, 60.0)
                .job(job)
                .device(node, gpu);
            e.apply(&s);
        }
        let restored = through_checkpoint(&e, &cfg);
        for engine in [&e, &restored] {
            let keys: Vec<&JobKey> = engine.st.jobs.keys().collect();
            assert_eq!(keys.len(), 2);
            let (tenant_key, _) = engine.st.tenants.get_key_value(tenant).unwrap();
            assert!(tenant_key.is_shared());
            for k in &keys {
                assert!(k.tenant.same_copy(tenant_key), "one copy of the tenant");
            }
            let short_job = keys.iter().find(|k| *k.job == *"j2").unwrap();
            assert!(!short_job.job.is_shared(), "a short name is held inline");
            let series: Vec<&SeriesKey> = engine
                .st
                .jobs
                .values()
                .flat_map(|j| j.series.iter().map(|(s, _)| s))
                .collect();
            assert_eq!(series.len(), 4);
            let long: Vec<&Arc<str>> = series.iter().filter_map(|s| s.shared_node()).collect();
            assert_eq!(long.len(), 3, "the long node's series share names");
            assert!(long.iter().all(|n| Arc::ptr_eq(n, long[0])));
            assert!(series
                .iter()
                .any(|s| s.node() == Some("node-b") && s.shared_node().is_none()));
            // Each shared name once in the engine's set, which the footprint counts.
            let mut names: Vec<&str> = engine.names.iter().map(|n| &**n).collect();
            names.sort();
            assert_eq!(names, ["0", "1", long_job, long_node, tenant]);
        }
    }

    #[test]
    fn registry_policy_lowers_thresholds_and_raises_severity_for_matching_tenants() {
        let mut cfg = Config::default();
        cfg.alerts.thresholds_flop = vec![1e23];
        let mut e = Engine::new(&cfg).unwrap();
        e.set_registry(registry(
            r#"
            [tenants.acme]
            verification = "pending"
            jurisdiction = "DE"
            foreign_person = true

            [[policy]]
            name = "foreign"
            match = { foreign_person = true }
            threshold_scale = 0.0001
            severity = "critical"
            "#,
        ));
        // 128 H100 for 2 h at 45% tensor activity: about 4.1e20 FLOP, above 1e19 and below 1e23.
        for step in 0..240 {
            for gpu in 0..128 {
                e.apply(&gpu_sample(T0 + step * 30_000, "pretrain", gpu));
            }
        }
        let alerts = e.drain_alerts();
        let crossed: Vec<_> = alerts
            .iter()
            .filter(|a| a.alertname == AlertName::ComputeThresholdCrossed)
            .collect();
        assert!(!crossed.is_empty());
        assert_eq!(crossed[0].threshold, Some(1e19));
        assert_eq!(crossed[0].severity, Severity::Critical);
        assert_eq!(
            crossed[0].evidence.to_json()["threshold_policy"]["nominal_threshold"],
            1e23
        );
        let training = training_alerts(&alerts);
        assert_eq!(
            training[0].severity,
            Severity::Critical,
            "raised from warning"
        );
        let ctx = &training[0].evidence.to_json()["tenant_context"];
        assert_eq!(ctx["jurisdiction"], "DE");
        assert_eq!(ctx["verification"], "pending");
        assert_eq!(ctx["policy_rules"][0], "foreign");
        // Another tenant is not affected.
        assert!(alerts
            .iter()
            .all(|a| a.threshold.is_none() || a.threshold == Some(1e19)));
    }

    /// Held alerts carry their tenant's context from the registry in force: a registry change
    /// reaches every held condition of the tenant at the next evaluation.
    #[test]
    fn held_alerts_take_the_tenant_context_of_the_registry_in_force() {
        let mut e = engine();
        let with_jurisdiction =
            |j: &str| registry(&format!("[tenants.acme]\njurisdiction = \"{j}\"\n"));
        e.set_registry(with_jurisdiction("DE"));
        // Two jobs of 128 H100, each suspected of training on its own.
        let mut step = 0;
        let mut run = |e: &mut Engine, steps: i64| {
            for _ in 0..steps {
                for job in ["pretrain", "finetune"] {
                    for gpu in 0..128 {
                        e.apply(&gpu_sample(T0 + step * 30_000, job, gpu));
                    }
                }
                step += 1;
            }
        };
        run(&mut e, 120);
        let contexts = |e: &Engine| -> Vec<(Option<String>, serde_json::Value)> {
            let records = e.active_alert_records();
            training_alerts(&records)
                .iter()
                .map(|a| {
                    let ctx = a.evidence.to_json()["tenant_context"].clone();
                    (a.job.clone(), ctx["jurisdiction"].clone())
                })
                .collect()
        };
        let jobs = |j: &str| {
            vec![
                (Some("finetune".to_string()), serde_json::json!(j)),
                (Some("pretrain".to_string()), serde_json::json!(j)),
            ]
        };
        let mut held = contexts(&e);
        held.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(held, jobs("DE"));
        e.set_registry(with_jurisdiction("FR"));
        // Past the next detection boundary (1 minute slides).
        run(&mut e, 4);
        let mut held = contexts(&e);
        held.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(held, jobs("FR"));
    }

    #[test]
    fn a_job_is_judged_by_the_policy_of_the_registry_in_force_at_each_evaluation() {
        let mut e = engine();
        e.set_registry(registry(
            r#"
            [tenants.acme]
            verification = "verified"

            [[policy]]
            name = "strict"
            match = { verification = ["verified"] }
            score_threshold = 0.99
            "#,
        ));
        let mut step = 0;
        let mut run = |e: &mut Engine, minutes: i64| {
            for _ in 0..minutes * 2 {
                for gpu in 0..128 {
                    // Devices a little apart: a score below 1.
                    let a = 0.3 + 0.1 * (gpu % 2) as f64;
                    let s = gpu_sample(T0 + step * 30_000, "pretrain", gpu).tensor_active(a);
                    e.apply(&s);
                }
                step += 1;
            }
        };
        run(&mut e, 60);
        let score = e.job_reports()[0].training_score;
        assert!(score > 0.75 && score < 0.99, "{score}");
        assert!(training_alerts(&e.drain_alerts()).is_empty());
        // The same job under a registry without the rule: the default threshold (0.75).
        e.set_registry(registry("[tenants.acme]\nverification = \"verified\"\n"));
        run(&mut e, 5);
        assert_eq!(training_alerts(&e.drain_alerts()).len(), 1);
    }

    #[test]
    fn explain_shows_the_features_of_any_job_against_their_thresholds() {
        let mut e = engine();
        run_split(&mut e, 1, 16, |_| "acme".into(), |_| 0, 60);
        let x = e.explain("acme", "part-0").unwrap();
        assert!(!x.suspected);
        assert!(!x.gates_passed);
        let accel = &x.evidence["features"][0];
        assert_eq!(accel["name"], "accelerators");
        assert_eq!(accel["value"], 16.0);
        assert_eq!(accel["fired"], false);
        let reasons = x.evidence["reasons"].as_array().unwrap();
        assert!(
            reasons[0].as_str().unwrap().contains("not reached"),
            "{reasons:?}"
        );
        assert!(e.explain("acme", "nope").is_none());
    }

    #[test]
    fn a_training_run_stays_suspected_across_checkpoint_dips() {
        // The demo's pretraining run dips for a checkpoint every 2 h; over 16 h (before its
        // outage at hour 21) its alert must fire once and never resolve in between.
        let mut fleet = crate::sim::Fleet::demo(T0, 17, 7);
        let mut e = engine();
        let mut samples = Vec::new();
        let mut records = Vec::new();
        for m in 0..17 * 60 {
            samples.clear();
            fleet.samples_at(T0 + m * MIN, &mut samples);
            for s in &samples {
                e.apply(s);
            }
            records.extend(e.drain_alerts());
        }
        let training: Vec<_> = records
            .iter()
            .filter(|a| {
                a.alertname == AlertName::TrainingSuspected
                    && a.job.as_deref() == Some("pretrain-70b")
            })
            .collect();
        assert!(!training.is_empty());
        assert!(
            training
                .iter()
                .all(|a| a.status == crate::alert::Status::Firing),
            "resolved at {:?}",
            training
                .iter()
                .find(|a| a.status == crate::alert::Status::Resolved)
                .map(|a| &a.ends_at)
        );
        assert_eq!(
            training
                .iter()
                .map(|a| &a.starts_at)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            1,
            "one alert, re-sent"
        );
    }

    #[test]
    fn compute_alerts_go_to_work_suspected_of_training_unless_configured_for_all() {
        // 16 GPUs: below the gang gate, never suspected, but past a low threshold within hours.
        let alerted = |mode: crate::config::ComputeAlerts| {
            let mut cfg = Config::default();
            cfg.alerts.thresholds_flop = vec![1e18];
            cfg.alerts.compute_alerts = mode;
            let mut e = Engine::new(&cfg).unwrap();
            run_split(&mut e, 1, 16, |_| "acme".into(), |_| 0, 120);
            let alerts = e.drain_alerts();
            assert!(training_alerts(&alerts).is_empty());
            alerts
                .iter()
                .filter(|a| a.alertname == AlertName::ComputeThresholdCrossed)
                .map(|a| a.scope)
                .collect::<std::collections::HashSet<_>>()
        };
        assert!(alerted(crate::config::ComputeAlerts::Training).is_empty());
        let all = alerted(crate::config::ComputeAlerts::All);
        assert!(
            all.contains(&crate::alert::Scope::Job) && all.contains(&crate::alert::Scope::Tenant)
        );
    }
}
