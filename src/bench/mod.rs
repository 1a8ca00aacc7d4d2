//! `trainspotter bench`: the throughput and memory harness behind BENCHMARKS.md.
//!
//! It builds a fleet of `gpus` devices in `jobs` jobs of `tenants` tenants, with random names, and
//! renders one round of native JSON events (one per device) once. Each further round is the same
//! events `interval` later (only the timestamp digits are rewritten, outside the timed part), sent
//! in a shuffled order so that consecutive events touch unrelated keys, as on a busy topic.
//!
//! Measured, on one thread:
//! - decoding alone, over one round: into owned samples, as the pipeline does it (names borrowed
//!   from the payload), and by serde_json alone (a yardstick of the machine's speed in this run);
//! - the pipeline (decode, windows, detection, alerts, metrics) over `rounds` rounds in batches of
//!   `batch` messages, as the consumer hands them over; the first round, which creates every key,
//!   is reported apart from the steady rounds, and the steady rounds with an evaluation apart from
//!   those without;
//! - the state's heap bytes by owner ([`crate::footprint`]) and the process's RSS;
//! - writing a checkpoint of the state and restoring an engine from it.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use statrs::statistics::{Data, OrderStatistics};

use crate::checkpoint;
use crate::config::Config;
use crate::decode::{decode_native, decode_native_by_serde, DecodeLimits, FlatNative};
use crate::engine::Engine;
use crate::flatjson::KeyOrder;
use crate::footprint::Footprint;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Shard};
use crate::sim::SplitMix64;

pub mod kafka;
pub mod live;
pub mod soak;

/// Event time of the first round: 2024-05-01T00:00:00Z.
const T0_MS: i64 = 1_714_521_600_000;
/// Offset of the 13 timestamp digits in every payload (`{"ts":` comes first).
const TS_AT: usize = 6;
/// Offset of the job name's last four hex digits, which [`Round::set_generations`] rewrites:
/// after the timestamp, `,"tenant":"`, the 19-byte tenant name, `","job":"` and `job-` with 8 of
/// its 12 digits.
const JOB_GEN_AT: usize = TS_AT + 13 + 11 + 19 + 9 + 12;

#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub gpus: usize,
    pub jobs: usize,
    pub tenants: usize,
    pub interval_ms: i64,
    pub rounds: usize,
    pub batch: usize,
    pub seed: u64,
    /// Every n-th job runs like a training job (the same steady activity on all its devices, 70
    /// GiB of device memory; the others hold 40 GiB); 0 for none.
    pub training_every: usize,
    /// The in-process measurements run with a tenant registry that puts every tenant in one of
    /// this many organisations (tenant `i` in organisation `i mod n`); 0 for no registry.
    pub organisations: usize,
}

/// One round of events: the payloads back to back, and where each one ends.
pub struct Round {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Tenant of each event (the message key on a topic).
    tenant_of: Vec<u32>,
    tenants: Vec<String>,
    /// Job of each event, and the last four hex digits of each job's name as generated.
    job_of: Vec<u32>,
    job_low: Vec<u16>,
}

impl Round {
    /// A tenant registry file (TOML) that puts tenant `i` in organisation `org-(i mod n)`, with two
    /// policy rules as a provider would have (every generated tenant is unverified, so the second
    /// matches all of them).
    pub fn registry(&self, organisations: usize) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(self.tenants.len() * 64);
        out.push_str(
            r#"[[policy]]
name = "foreign person"
match = { foreign_person = true }
threshold_scale = 0.1
score_threshold = 0.7

[[policy]]
name = "unverified"
match = { verification = ["unverified", "pending"] }
severity = "critical"

"#,
        );
        for (i, t) in self.tenants.iter().enumerate() {
            let org = i % organisations.max(1);
            let _ = writeln!(out, "[tenants.\"{t}\"]\norganisation = \"org-{org}\"");
        }
        out
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(s, &e)| &self.bytes[s..e])
    }

    /// Moves every event to `ts_ms` (13 digits, as all times from 2001 to 2286 are).
    pub fn set_ts(&mut self, ts_ms: i64) {
        let digits = format!("{ts_ms:013}");
        assert_eq!(digits.len(), 13, "event time out of the fixed-width range");
        for i in 0..self.ends.len() {
            let s = if i == 0 { 0 } else { self.ends[i - 1] };
            self.bytes[s + TS_AT..s + TS_AT + 13].copy_from_slice(digits.as_bytes());
        }
    }

    /// Renames every job to its generation `generation(job)`: the last four hex digits of its name
    /// become its generated ones plus the generation (mod 2^16), so each generation of a job is a
    /// new job of the same tenant on the same devices (job churn).
    pub fn set_generations(&mut self, generation: impl Fn(usize) -> u64) {
        let gens: Vec<u16> = (0..self.job_low.len())
            .map(|j| self.job_low[j].wrapping_add(generation(j) as u16))
            .collect();
        for i in 0..self.ends.len() {
            let s = if i == 0 { 0 } else { self.ends[i - 1] };
            let digits = format!("{:04x}", gens[self.job_of[i] as usize]);
            self.bytes[s + JOB_GEN_AT..s + JOB_GEN_AT + 4].copy_from_slice(digits.as_bytes());
        }
    }

    /// Jobs of the round.
    pub fn jobs(&self) -> usize {
        self.job_low.len()
    }

    /// The message key of each event: its tenant.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.tenant_of
            .iter()
            .map(|&t| self.tenants[t as usize].as_bytes())
    }

    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }
}

fn name(rng: &mut SplitMix64, prefix: &str) -> String {
    format!("{prefix}-{:012x}", rng.next_u64() >> 16)
}

/// Accelerator models of the fleet, by share of devices.
const MODELS: [&str; 3] = [
    "NVIDIA H100 80GB HBM3",
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA L40S",
];

impl Shape {
    /// One round of the fleet's events at `T0_MS`, in a shuffled order.
    pub fn round(&self) -> Round {
        let mut rng = SplitMix64::new(self.seed);
        let tenants: Vec<String> = (0..self.tenants)
            .map(|_| name(&mut rng, "tenant"))
            .collect();
        let jobs: Vec<(String, usize)> = (0..self.jobs)
            .map(|_| {
                let tenant = (rng.next_u64() % self.tenants as u64) as usize;
                (name(&mut rng, "job"), tenant)
            })
            .collect();
        let nodes: Vec<String> = (0..self.gpus.div_ceil(8))
            .map(|_| name(&mut rng, "node"))
            .collect();
        let mut order: Vec<usize> = (0..self.gpus).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let interval_s = self.interval_ms as f64 / 1000.0;
        let mut round = Round {
            bytes: Vec::with_capacity(self.gpus * 330),
            ends: Vec::with_capacity(self.gpus),
            tenant_of: Vec::with_capacity(self.gpus),
            tenants: Vec::new(),
            job_of: Vec::with_capacity(self.gpus),
            job_low: jobs
                .iter()
                .map(|(j, _)| u16::from_str_radix(&j[j.len() - 4..], 16).expect("hex digits"))
                .collect(),
        };
        for g in order {
            // Jobs hold consecutive devices (whole nodes for the larger ones).
            let j = g * self.jobs / self.gpus;
            let (job, tenant) = &jobs[j];
            let model = MODELS[j % MODELS.len()];
            let training = self.training_every > 0 && j % self.training_every == 0;
            let tensor = match training {
                true => 0.45,
                false => 0.05 + 0.5 * ((g * 7919) % 1000) as f64 / 1000.0,
            };
            let memory_gib: u64 = if training { 70 } else { 40 };
            write!(
                round.bytes,
                r#"{{"ts":{T0_MS},"tenant":"{}","job":"{job}","node":"{}","gpu":"{}","accelerator":"{model}","gpus":1,"interval_s":{interval_s},"tensor_active":{tensor:.3},"sm_active":{:.3},"gpu_util":{:.3},"fb_used_bytes":{},"power_w":{:.1}}}"#,
                tenants[*tenant],
                nodes[g / 8],
                g % 8,
                (tensor * 1.6).min(1.0),
                (tensor * 2.0).min(1.0),
                memory_gib << 30,
                300.0 + 400.0 * tensor,
            )
            .expect("writing to a Vec");
            round.ends.push(round.bytes.len());
            round.tenant_of.push(*tenant as u32);
            round.job_of.push(j as u32);
        }
        round.tenants = tenants;
        round
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub shape: Shape,
    pub payload_bytes_mean: f64,
    /// Decoding alone into an owned sample (names copied), as a single message is decoded.
    pub decode_ns_per_event: f64,
    /// Decoding alone as the pipeline does it: names borrowed from the payload.
    pub decode_borrowed_ns_per_event: f64,
    /// Decoding the same events by serde_json alone: the machine's speed in this run.
    pub serde_decode_ns_per_event: f64,
    /// Events per second of the first round (every key created).
    pub first_round_events_per_s: f64,
    /// Events per second over the remaining rounds.
    pub steady_events_per_s: f64,
    /// Events per second of each steady round.
    pub round_events_per_s: Vec<f64>,
    /// Evaluations at detection boundaries within each steady round (most rounds have none).
    pub round_evaluations: Vec<u64>,
    /// Wall time of those evaluations in each steady round, seconds.
    pub round_evaluation_s: Vec<f64>,
    pub alerts: usize,
    /// Evaluations at detection boundaries during the rounds, and their mean wall time.
    pub evaluations: u64,
    pub evaluation_mean_s: f64,
    pub footprint: Footprint,
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    pub checkpoint_bytes: u64,
    /// Staging the checkpoint ([`checkpoint::stage`]: the state serialised into its temporary
    /// file, a new one), as the daemon's first checkpoint of a partition does on its consumer
    /// thread.
    pub checkpoint_stage_s: f64,
    /// Staging it again over the previous file, as the daemon's third and later checkpoints of a
    /// partition do.
    pub checkpoint_restage_s: f64,
    /// Committing that one ([`checkpoint::Staged::commit`]: fsync and renames), as the daemon's
    /// checkpoint writer does.
    pub checkpoint_commit_s: f64,
    pub restore_s: f64,
}

/// Runs the in-process measurements. `scratch` receives the checkpoint file.
pub fn run(shape: &Shape, cfg: &Config, scratch: &Path) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        shape.gpus > 0 && shape.jobs > 0 && shape.tenants > 0,
        "gpus, jobs and tenants must be positive"
    );
    anyhow::ensure!(shape.jobs <= shape.gpus, "more jobs than devices");
    anyhow::ensure!(
        shape.rounds >= 2,
        "at least two rounds (the first creates the keys)"
    );
    let mut round = shape.round();
    let limits = DecodeLimits::OPEN;

    let started = Instant::now();
    let mut decoded = 0usize;
    for p in round.payloads() {
        decoded += decode_native(std::hint::black_box(p), limits).is_ok() as usize;
    }
    let decode_ns = started.elapsed().as_nanos() as f64 / round.len() as f64;
    anyhow::ensure!(
        decoded == round.len(),
        "the generated events must all decode"
    );
    // The pipeline's own path: the flat read, then a sample borrowing the payload's names.
    let started = Instant::now();
    let mut decoded = 0usize;
    let mut order = KeyOrder::default();
    for p in round.payloads() {
        if let Some(flat) = FlatNative::read(std::hint::black_box(p), &mut order) {
            decoded += std::hint::black_box(flat.sample(limits)).is_ok() as usize;
        }
    }
    let decode_borrowed_ns = started.elapsed().as_nanos() as f64 / round.len() as f64;
    anyhow::ensure!(
        decoded == round.len(),
        "the generated events must all be read by the flat reader"
    );
    // The same events through serde_json alone: code that does not change, so its time shows how
    // fast the machine is in this run (shared machines vary several-fold between days).
    let started = Instant::now();
    for p in round.payloads() {
        std::hint::black_box(decode_native_by_serde(std::hint::black_box(p), limits).is_ok());
    }
    let yardstick_ns = started.elapsed().as_nanos() as f64 / round.len() as f64;

    let mut cfg = cfg.clone();
    if shape.organisations > 0 {
        let file = scratch.join("registry.toml");
        std::fs::write(&file, round.registry(shape.organisations))?;
        cfg.registry.file = file.to_string_lossy().into_owned();
    }
    let cfg = &cfg;
    let metrics = Arc::new(Metrics::new());
    let mut pipeline = Pipeline::new(cfg, metrics.clone())?;
    let shard = Shard::local();
    let mut alerts = 0;
    let mut times = Vec::with_capacity(shape.rounds);
    let mut evaluated = Vec::with_capacity(shape.rounds);
    for r in 0..shape.rounds {
        let before = metrics.evaluation_totals();
        round.set_ts(T0_MS + r as i64 * shape.interval_ms);
        let payloads: Vec<&[u8]> = round.payloads().collect();
        let started = Instant::now();
        let mut rejected = 0;
        for batch in payloads.chunks(shape.batch) {
            rejected += pipeline
                .process(&shard, batch.iter().map(|p| Some(*p)), limits)
                .len();
            alerts += pipeline.drain_alerts().len();
        }
        times.push(started.elapsed());
        let after = metrics.evaluation_totals();
        evaluated.push((after.0 - before.0, after.1 - before.1));
        anyhow::ensure!(rejected == 0, "{rejected} generated events were rejected");
    }
    let (evaluations, evaluation_s) = metrics.evaluation_totals();
    let rate = |d: &Duration| round.len() as f64 / d.as_secs_f64();
    let steady: Duration = times[1..].iter().sum();
    let engine = pipeline.shard(&shard).expect("processed above");
    let footprint = engine.footprint();
    let (rss, peak) = rss();

    let header = checkpoint::Header {
        topic: "bench".into(),
        partition: 0,
        next_offset: 0,
        shape: engine.shape(),
        written_at_ms: 0,
    };
    let started = Instant::now();
    let mut staged = checkpoint::stage(scratch, &header, engine.state())?;
    let checkpoint_stage_s = started.elapsed().as_secs_f64();
    staged.commit()?;
    // The second has no previous file to write over yet.
    checkpoint::stage(scratch, &header, engine.state())?.commit()?;
    let started = Instant::now();
    let mut staged = checkpoint::stage(scratch, &header, engine.state())?;
    let checkpoint_restage_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    staged.commit()?;
    let checkpoint_commit_s = started.elapsed().as_secs_f64();
    let written = staged.len();
    drop(staged);
    drop(pipeline);
    let started = Instant::now();
    let loaded = checkpoint::read(&checkpoint::path(scratch, "bench", 0))?;
    let restored = Engine::with_state(cfg, loaded.state)?;
    let restore_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        restored.series_count() == footprint.series,
        "the restored engine holds {} series, not {}",
        restored.series_count(),
        footprint.series
    );

    Ok(Outcome {
        shape: shape.clone(),
        payload_bytes_mean: round.bytes() as f64 / round.len() as f64,
        decode_ns_per_event: decode_ns,
        decode_borrowed_ns_per_event: decode_borrowed_ns,
        serde_decode_ns_per_event: yardstick_ns,
        first_round_events_per_s: rate(&times[0]),
        steady_events_per_s: (round.len() * (shape.rounds - 1)) as f64 / steady.as_secs_f64(),
        round_events_per_s: times[1..].iter().map(rate).collect(),
        round_evaluations: evaluated[1..].iter().map(|e| e.0).collect(),
        round_evaluation_s: evaluated[1..].iter().map(|e| e.1).collect(),
        alerts,
        evaluations,
        evaluation_mean_s: evaluation_s / evaluations.max(1) as f64,
        footprint,
        rss_bytes: rss,
        peak_rss_bytes: peak,
        checkpoint_bytes: written,
        checkpoint_stage_s,
        checkpoint_restage_s,
        checkpoint_commit_s,
        restore_s,
    })
}

/// The median and range of the steady rounds without an evaluation and of those with one: the
/// per-event path and what an evaluation adds show apart.
fn split_rounds(rates: &[f64], evaluations: &[u64]) -> String {
    let summary = |with: bool| {
        let mut rates: Vec<f64> = (rates.iter().zip(evaluations))
            .filter(|&(_, &e)| (e > 0) == with)
            .map(|(&r, _)| r)
            .collect();
        rates.sort_by(f64::total_cmp);
        let (n, Some(&lo), Some(&hi)) = (rates.len(), rates.first(), rates.last()) else {
            return "none".to_string();
        };
        format!(
            "median {:.2}M events/s ({n} rounds, {:.2}-{:.2}M)",
            Data::new(&mut rates[..]).median() / 1e6,
            lo / 1e6,
            hi / 1e6
        )
    };
    format!("{} / {}", summary(false), summary(true))
}

/// Resident and peak resident set size of this process, from /proc (Linux).
pub fn rss() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
}

/// The outcome as a markdown table.
pub fn table(o: &Outcome) -> String {
    let s = &o.shape;
    let f = &o.footprint;
    let rounds = o
        .round_events_per_s
        .iter()
        .map(|r| format!("{:.2}", r / 1e6))
        .collect::<Vec<_>>()
        .join(", ");
    let (lo, hi) = o
        .round_events_per_s
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let rows = [
        (
            "workload".to_string(),
            format!(
                "{} devices, {} jobs{}, {} tenants{}, one event per device every {} ms, {} rounds, batches of {}; {:.0} B per event",
                s.gpus,
                s.jobs,
                match s.training_every {
                    0 => String::new(),
                    n => format!(" (one in {n} running like training)"),
                },
                s.tenants,
                match s.organisations {
                    0 => String::new(),
                    n => format!(" in {n} organisations of a tenant registry"),
                },
                s.interval_ms,
                s.rounds,
                s.batch,
                o.payload_bytes_mean
            ),
        ),
        (
            "decode only, owned sample".into(),
            format!("{:.0} ns/event", o.decode_ns_per_event),
        ),
        (
            "decode only, the pipeline's path (names borrowed)".into(),
            format!("{:.0} ns/event", o.decode_borrowed_ns_per_event),
        ),
        (
            "yardstick: decode by serde_json alone".into(),
            format!(
                "{:.0} ns/event (unchanged code: compare runs by it)",
                o.serde_decode_ns_per_event
            ),
        ),
        (
            "pipeline, first round (creates every key)".into(),
            format!("{:.2}M events/s", o.first_round_events_per_s / 1e6),
        ),
        (
            "pipeline, steady rounds".into(),
            format!(
                "{:.2}M events/s (rounds {:.2}-{:.2}M: {rounds})",
                o.steady_events_per_s / 1e6,
                lo / 1e6,
                hi / 1e6
            ),
        ),
        (
            "steady rounds without an evaluation / with one or more".into(),
            split_rounds(&o.round_events_per_s, &o.round_evaluations),
        ),
        (
            "evaluations at detection boundaries (within the steady rounds' time)".into(),
            format!(
                "{}, {:.0} ms each on average",
                o.evaluations,
                o.evaluation_mean_s * 1e3
            ),
        ),
        ("alerts raised".into(), o.alerts.to_string()),
        (
            "state per job".into(),
            format!("{:.0} B ({} jobs)", f.per_job(), f.jobs),
        ),
        (
            "state per device series".into(),
            format!("{:.0} B ({} series)", f.per_series(), f.series),
        ),
        (
            "state per tenant".into(),
            format!(
                "{:.0} B ({} tenants)",
                f.tenant_bytes as f64 / f.tenants.max(1) as f64,
                f.tenants
            ),
        ),
        ("state, total heap".into(), mib(f.total() as u64)),
        (
            "process RSS / peak RSS".into(),
            format!(
                "{} / {}",
                o.rss_bytes.map_or("n/a".into(), mib),
                o.peak_rss_bytes.map_or("n/a".into(), mib)
            ),
        ),
        (
            "checkpoint staged (first / over the previous file) + committed".into(),
            format!(
                "{} in {:.2} / {:.2} + {:.2} s",
                mib(o.checkpoint_bytes),
                o.checkpoint_stage_s,
                o.checkpoint_restage_s,
                o.checkpoint_commit_s
            ),
        ),
        (
            format!("restore ({} series)", f.series),
            format!("{:.2} s", o.restore_s),
        ),
    ];
    markdown_table(rows)
}

/// A two-column markdown table of (figure, value) rows.
pub(crate) fn markdown_table(rows: impl IntoIterator<Item = (String, String)>) -> String {
    let mut out = String::from("| figure | value |\n|---|---|\n");
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_with_an_evaluation_are_summarised_apart_from_the_others() {
        let rates = [1e6, 2e6, 3e6, 4e6, 5e6];
        assert_eq!(
            split_rounds(&rates, &[0, 0, 1, 0, 2]),
            "median 2.00M events/s (3 rounds, 1.00-4.00M) / median 4.00M events/s (2 rounds, 3.00-5.00M)"
        );
        assert_eq!(
            split_rounds(&rates[..2], &[0, 0]),
            "median 1.50M events/s (2 rounds, 1.00-2.00M) / none"
        );
    }

    #[test]
    fn a_round_has_one_decodable_event_per_device_and_moves_in_time() {
        let shape = Shape {
            gpus: 64,
            jobs: 8,
            tenants: 3,
            interval_ms: 10_000,
            rounds: 2,
            batch: 16,
            seed: 1,
            training_every: 0,
            organisations: 0,
        };
        let mut round = shape.round();
        assert_eq!(round.len(), 64);
        round.set_ts(T0_MS + 10_000);
        let samples: Vec<_> = round
            .payloads()
            .map(|p| decode_native(p, DecodeLimits::OPEN).unwrap())
            .collect();
        assert!(samples.iter().all(|s| s.ts_ms == T0_MS + 10_000));
        let mut devices: Vec<_> = samples
            .iter()
            .map(|s| (s.node.clone(), s.gpu.clone()))
            .collect();
        devices.sort();
        devices.dedup();
        assert_eq!(devices.len(), 64);
        let mut jobs: Vec<_> = samples.iter().map(|s| s.job.clone()).collect();
        jobs.sort();
        jobs.dedup();
        assert_eq!(jobs.len(), 8);
    }

    #[test]
    fn the_generated_registry_puts_every_tenant_of_the_round_in_one_of_n_organisations() {
        let shape = Shape {
            gpus: 64,
            jobs: 8,
            tenants: 5,
            interval_ms: 10_000,
            rounds: 2,
            batch: 16,
            seed: 1,
            training_every: 0,
            organisations: 2,
        };
        let round = shape.round();
        let registry = crate::registry::Registry::parse(&round.registry(2)).unwrap();
        assert_eq!(registry.len(), 5);
        let orgs: Vec<Option<&str>> = round
            .tenants
            .iter()
            .map(|t| registry.organisation(t))
            .collect();
        assert_eq!(
            orgs,
            [
                Some("org-0"),
                Some("org-1"),
                Some("org-0"),
                Some("org-1"),
                Some("org-0")
            ]
        );
        // Every generated tenant is unverified: the second rule applies to each.
        assert!(round
            .tenants
            .iter()
            .all(|t| registry.policy(t).rules == ["unverified"]));
    }

    #[test]
    fn a_new_generation_renames_only_the_jobs_it_moves() {
        let shape = Shape {
            gpus: 64,
            jobs: 8,
            tenants: 3,
            interval_ms: 10_000,
            rounds: 2,
            batch: 16,
            seed: 1,
            training_every: 4,
            organisations: 0,
        };
        let mut round = shape.round();
        let jobs_of = |round: &Round| -> Vec<(String, String, String)> {
            round
                .payloads()
                .map(|p| {
                    let s = decode_native(p, DecodeLimits::OPEN).unwrap();
                    (s.tenant, s.job.unwrap(), s.gpu.unwrap())
                })
                .collect()
        };
        let before = jobs_of(&round);
        round.set_generations(|j| (j % 2) as u64);
        let after = jobs_of(&round);
        let mut renamed = std::collections::BTreeMap::new();
        for ((t0, j0, g0), (t1, j1, g1)) in before.iter().zip(&after) {
            assert_eq!((t0, g0), (t1, g1), "only the job name changes");
            assert_eq!(j0[..j0.len() - 4], j1[..j1.len() - 4]);
            renamed.insert(j0.clone(), j0 != j1);
        }
        assert_eq!(renamed.len(), 8);
        assert_eq!(
            renamed.values().filter(|&&r| r).count(),
            4,
            "odd jobs moved on"
        );
        round.set_generations(|_| 0);
        assert_eq!(
            jobs_of(&round),
            before,
            "generation 0 is the name as generated"
        );
    }
}
