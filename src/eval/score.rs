//! Scoring: alerts and job reports of the pipeline against the runs' labels and ground truth.
//!
//! [`scope`] is the one place that says what an alert record is about; everything else asks it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::real::RealTraces;
use super::{EvalOptions, GroupResult, Mix};
use crate::alert::{AlertName, AlertRecord, Scope as AlertScope, Status};
use crate::decode::parse_rfc3339_ms;
use crate::estimate::{Estimator, FlopEstimate};
use crate::scenario::{Class, Run, Scenario};

const MINUTE_MS: f64 = 60_000.0;
const HOUR_MS: f64 = 3_600_000.0;

/// Detection within this long after a run's start counts for the recall target.
pub const DETECT_WITHIN_MIN: f64 = 30.0;
/// The targets the evaluation checks (docs/evaluation.md).
pub const RECALL_TARGET: f64 = 0.99;
pub const FALSE_ALARMS_PER_1000_TARGET: f64 = 1.0;
pub const ESTIMATE_TOLERANCE: f64 = 0.25;
/// Share of dense runs that must meet the estimate targets.
pub const ESTIMATE_SHARE_TARGET: f64 = 0.95;
/// Llama 3 405B (DOMAIN.md): 30.84M H100-hours, about 3.8e25 FLOP.
pub const LLAMA3_H100_HOURS: f64 = 30.84e6;
pub const LLAMA3_FLOP: f64 = 3.8e25;
const H100_PEAK: f64 = 989e12;

/// What an alert record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Job {
        tenant: String,
        job: String,
    },
    Tenant(String),
    /// An organisation of the tenant registry.
    Org(String),
}

/// The one mapping from an alert record to what it is about.
pub fn scope(rec: &AlertRecord) -> Scope {
    match (rec.scope, &rec.job, &rec.organisation) {
        (AlertScope::Organisation, _, Some(org)) => Scope::Org(org.clone()),
        (_, Some(job), _) => Scope::Job {
            tenant: rec.tenant.clone(),
            job: job.clone(),
        },
        _ => Scope::Tenant(rec.tenant.clone()),
    }
}

/// Whether `scope` concerns (part of) `run`.
fn touches(run: &Run, s: &Scope) -> bool {
    match s {
        Scope::Job { tenant, job } => run.members.iter().any(|(t, j)| t == tenant && j == job),
        Scope::Tenant(t) => run.members.iter().any(|(m, _)| m == t),
        Scope::Org(o) => run.org.as_deref() == Some(o),
    }
}

/// Whether `scope` covers all of `run` (so its compute figures are the run's).
fn covers(run: &Run, s: &Scope) -> bool {
    match s {
        Scope::Job { .. } => run.members.len() == 1 && touches(run, s),
        Scope::Tenant(t) => run.tenants() == [t.as_str()],
        Scope::Org(o) => run.org.as_deref() == Some(o),
    }
}

/// Summary statistics of a sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub n: usize,
    pub median: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

impl Stats {
    pub fn of(mut v: Vec<f64>) -> Stats {
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            (!v.is_empty()).then(|| {
                let pos = p * (v.len() - 1) as f64;
                let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
                v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
            })
        };
        Stats {
            n: v.len(),
            median: q(0.5),
            p95: q(0.95),
            max: v.last().copied(),
        }
    }
}

/// Projection of one threshold for one run.
#[derive(Debug, Clone, Serialize)]
pub struct EtaOutcome {
    pub threshold: f64,
    /// When the first projection was made, hours after the run's start.
    pub projected_at_h: f64,
    /// Projected crossing, hours after the run's start.
    pub eta_h: f64,
    /// True crossing, hours after the run's start; `None` when the run ends before it.
    pub true_crossing_h: Option<f64>,
    /// `eta_h - true_crossing_h`.
    pub error_h: Option<f64>,
}

/// One run, scored.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub name: String,
    pub scenario: Scenario,
    pub class: Class,
    pub telemetry: &'static str,
    pub accelerator: String,
    pub accelerators: f64,
    pub jobs: usize,
    pub planned_hours: f64,
    pub simulated_hours: f64,
    /// First `TrainingSuspected` about the run, minutes after its start.
    pub detect_minutes: Option<f64>,
    /// First alert of each name about the run, minutes after its start.
    pub first_alert_minutes: BTreeMap<&'static str, f64>,
    /// Highest training score of any of its jobs.
    pub max_score: f64,
    /// Ground-truth FLOP over the simulated part.
    pub true_flop: f64,
    /// The pipeline's estimate over the same part (sum of its jobs' lifetimes).
    pub estimated_flop: FlopEstimate,
    /// central / truth - 1 (positives only).
    pub estimate_error: Option<f64>,
    pub band_contains_truth: Option<bool>,
    pub projections: Vec<EtaOutcome>,
    /// `TrainingSuspected` about the run that resolved while it was still reporting (the alert
    /// dropped and, if it fires again, starts over: a stable detector has none).
    pub resolved_while_running: usize,
}

/// Per scenario figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    pub scenario: Scenario,
    pub class: Class,
    pub description: &'static str,
    pub runs: usize,
    pub jobs: usize,
    /// Runs with a `TrainingSuspected` about them.
    pub flagged: usize,
    /// Runs with any alert about them.
    pub flagged_any: usize,
    /// flagged / runs: recall for positives, false-alarm share for negatives.
    pub flagged_share: f64,
    pub detected_within_target: usize,
    pub detect_minutes: Stats,
    pub score: Stats,
    /// |central / truth - 1|.
    pub abs_estimate_error: Stats,
    /// Signed median of central / truth - 1.
    pub median_signed_error: Option<f64>,
    pub band_contains_share: Option<f64>,
    /// |ETA error| in hours over projections whose threshold the run really crosses.
    pub abs_eta_error_h: Stats,
    pub projections_never_crossed: usize,
    /// Runs by telemetry: (telemetry, runs, flagged).
    pub by_telemetry: Vec<(&'static str, usize, usize)>,
}

/// False alarms on negative work.
#[derive(Debug, Clone, Serialize)]
pub struct FalseAlarms {
    pub negative_jobs: usize,
    /// Negative jobs with a job-level `TrainingSuspected`.
    pub training_suspected_jobs: usize,
    pub training_suspected_per_1000: f64,
    /// Negative jobs with any job-level alert (compute projections included).
    pub any_alert_jobs: usize,
    pub any_alert_per_1000: f64,
    /// Job-level alerts on negative jobs by alert name.
    pub by_alert: BTreeMap<&'static str, usize>,
    /// Tenants with no positive run, and those with a tenant-level alert.
    pub negative_tenants: usize,
    pub tenant_alerts: usize,
    pub tenant_alert_names: Vec<String>,
}

/// One target of the evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub value: String,
    pub pass: bool,
}

/// The Llama 3 405B cross-check.
#[derive(Debug, Clone, Serialize)]
pub struct Llama3 {
    pub h100_hours: f64,
    pub published_flop: f64,
    /// Utilisation the published figures imply.
    pub implied_utilisation: f64,
    /// Without tensor activity: the configured utilisation band.
    pub utilisation_band: FlopEstimate,
    /// With tensor activity at the simulator's mean tensor/MFU bias: the configured relative band
    /// around the published figure times the bias.
    pub tensor_route: FlopEstimate,
    pub tensor_bias: f64,
}

/// Everything the report shows.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub mix: Mix,
    pub seed: u64,
    pub command: String,
    pub events: u64,
    pub pipelines: usize,
    pub runs: Vec<RunOutcome>,
    pub scenarios: Vec<ScenarioSummary>,
    pub false_alarms: FalseAlarms,
    pub precision: Option<f64>,
    pub targets: Vec<Target>,
    pub llama3: Llama3,
    /// Highest score per job, by class (score histogram).
    pub scores_positive: Vec<f64>,
    pub scores_negative: Vec<f64>,
    pub real: Option<RealTraces>,
    /// Detection settings that bound what can be detected: a job is suspected only once it has
    /// reported for `detection.duration.high` seconds with at least `detection.accelerators.high`
    /// accelerators.
    pub min_duration_s: f64,
    pub min_accelerators: f64,
    /// The targets on other seeds of the same mix (`--check-seeds`).
    pub other_seeds: Vec<SeedTargets>,
    /// The detection and estimate settings the mix ran with.
    #[serde(skip)]
    pub config: crate::config::Config,
}

/// The targets of one more seed of the mix.
#[derive(Debug, Clone, Serialize)]
pub struct SeedTargets {
    pub seed: u64,
    pub events: u64,
    pub targets: Vec<Target>,
}

fn first_alerts(run: &Run, alerts: &[&AlertRecord]) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for a in alerts {
        if a.status != Status::Firing || !touches(run, &scope(a)) {
            continue;
        }
        let m = (a.time_ms - run.start_ms) as f64 / MINUTE_MS;
        let e = out.entry(a.alertname.as_str()).or_insert(m);
        *e = e.min(m);
    }
    out
}

fn projections(run: &Run, alerts: &[&AlertRecord]) -> Vec<EtaOutcome> {
    let mut first: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    for a in alerts {
        if a.alertname != AlertName::ComputeThresholdProjected
            || a.status != Status::Firing
            || !covers(run, &scope(a))
        {
            continue;
        }
        let (Some(t), Some(eta)) = (a.threshold, a.eta.as_deref().and_then(parse_rfc3339_ms))
        else {
            continue;
        };
        let e = first.entry(t.to_bits()).or_insert((a.time_ms, eta));
        if a.time_ms < e.0 {
            *e = (a.time_ms, eta);
        }
    }
    let h = |ms: i64| (ms - run.start_ms) as f64 / HOUR_MS;
    first
        .into_iter()
        .map(|(bits, (at, eta))| {
            let threshold = f64::from_bits(bits);
            let truth = run.true_crossing_ms(threshold).map(h);
            EtaOutcome {
                threshold,
                projected_at_h: h(at),
                eta_h: h(eta),
                true_crossing_h: truth,
                error_h: truth.map(|t| h(eta) - t),
            }
        })
        .collect()
}

fn outcome(run: &Run, alerts: &[&AlertRecord], result: &GroupResult) -> RunOutcome {
    let first = first_alerts(run, alerts);
    let mut estimate = FlopEstimate::default();
    for j in &result.jobs {
        if run
            .members
            .iter()
            .any(|(t, n)| *t == j.tenant && *n == j.job)
        {
            estimate.add(&j.estimated_flop);
        }
    }
    let max_score = run
        .members
        .iter()
        .filter_map(|m| result.max_scores.get(m))
        .fold(0.0f64, |a, b| a.max(*b));
    let true_flop = run.true_flop_until(run.sim_end_ms);
    let positive = run.class == Class::Positive && true_flop > 0.0;
    RunOutcome {
        name: run.name.clone(),
        scenario: run.scenario,
        class: run.class,
        telemetry: run.telemetry.name(),
        accelerator: run.accelerator.clone(),
        accelerators: run.accelerators,
        jobs: run.members.len(),
        planned_hours: (run.planned_end_ms - run.start_ms) as f64 / HOUR_MS,
        simulated_hours: (run.sim_end_ms - run.start_ms) as f64 / HOUR_MS,
        detect_minutes: first.get(AlertName::TrainingSuspected.as_str()).copied(),
        first_alert_minutes: first,
        max_score,
        true_flop,
        estimated_flop: estimate,
        estimate_error: positive.then(|| estimate.central / true_flop - 1.0),
        band_contains_truth: positive
            .then_some(estimate.low <= true_flop && true_flop <= estimate.high),
        projections: if run.class == Class::Positive {
            projections(run, alerts)
        } else {
            Vec::new()
        },
        resolved_while_running: alerts
            .iter()
            .filter(|a| {
                a.alertname == AlertName::TrainingSuspected
                    && a.status == Status::Resolved
                    && touches(run, &scope(a))
                    // Still reporting in the minute before: the resolution is not the run's end,
                    // pause or outage (those resolve once no sample came for job_end_after).
                    && run
                        .workloads
                        .iter()
                        .any(|w| w.active_at(a.time_ms - MINUTE_MS as i64))
            })
            .count(),
    }
}

fn summarise(s: Scenario, runs: &[&RunOutcome]) -> ScenarioSummary {
    let flagged = runs.iter().filter(|r| r.detect_minutes.is_some()).count();
    let errors: Vec<f64> = runs.iter().filter_map(|r| r.estimate_error).collect();
    let bands: Vec<bool> = runs.iter().filter_map(|r| r.band_contains_truth).collect();
    let etas: Vec<&EtaOutcome> = runs.iter().flat_map(|r| &r.projections).collect();
    let mut telemetry: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for r in runs {
        let e = telemetry.entry(r.telemetry).or_default();
        e.0 += 1;
        e.1 += r.detect_minutes.is_some() as usize;
    }
    ScenarioSummary {
        scenario: s,
        class: s.class(),
        description: s.describe(),
        runs: runs.len(),
        jobs: runs.iter().map(|r| r.jobs).sum(),
        flagged,
        flagged_any: runs
            .iter()
            .filter(|r| !r.first_alert_minutes.is_empty())
            .count(),
        flagged_share: flagged as f64 / runs.len().max(1) as f64,
        detected_within_target: runs
            .iter()
            .filter(|r| r.detect_minutes.is_some_and(|m| m <= DETECT_WITHIN_MIN))
            .count(),
        detect_minutes: Stats::of(runs.iter().filter_map(|r| r.detect_minutes).collect()),
        score: Stats::of(runs.iter().map(|r| r.max_score).collect()),
        abs_estimate_error: Stats::of(errors.iter().map(|e| e.abs()).collect()),
        median_signed_error: Stats::of(errors.clone()).median,
        band_contains_share: (!bands.is_empty())
            .then(|| bands.iter().filter(|b| **b).count() as f64 / bands.len() as f64),
        abs_eta_error_h: Stats::of(
            etas.iter()
                .filter_map(|e| e.error_h.map(f64::abs))
                .collect(),
        ),
        projections_never_crossed: etas.iter().filter(|e| e.true_crossing_h.is_none()).count(),
        by_telemetry: telemetry.into_iter().map(|(k, (n, f))| (k, n, f)).collect(),
    }
}

fn false_alarms(runs: &[Run], alerts: &[&AlertRecord]) -> FalseAlarms {
    let mut negative_jobs: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut positive_tenants: BTreeSet<&str> = BTreeSet::new();
    let mut all_tenants: BTreeSet<&str> = BTreeSet::new();
    for r in runs {
        for (t, j) in &r.members {
            all_tenants.insert(t);
            match r.class {
                Class::Negative => negative_jobs.insert((t, j)),
                Class::Positive => positive_tenants.insert(t),
            };
        }
    }
    let mut suspected: BTreeSet<(String, String)> = BTreeSet::new();
    let mut any: BTreeSet<(String, String)> = BTreeSet::new();
    let mut by_alert: BTreeMap<&'static str, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut tenants: BTreeSet<String> = BTreeSet::new();
    for a in alerts.iter().filter(|a| a.status == Status::Firing) {
        match scope(a) {
            Scope::Job { tenant, job } => {
                if !negative_jobs.contains(&(tenant.as_str(), job.as_str())) {
                    continue;
                }
                let k = (tenant, job);
                if a.alertname == AlertName::TrainingSuspected {
                    suspected.insert(k.clone());
                }
                by_alert
                    .entry(a.alertname.as_str())
                    .or_default()
                    .insert(k.clone());
                any.insert(k);
            }
            Scope::Tenant(t) | Scope::Org(t) => {
                if !positive_tenants.contains(t.as_str()) {
                    tenants.insert(t);
                }
            }
        }
    }
    let n = negative_jobs.len();
    let per_1000 = |k: usize| k as f64 * 1000.0 / n.max(1) as f64;
    FalseAlarms {
        negative_jobs: n,
        training_suspected_jobs: suspected.len(),
        training_suspected_per_1000: per_1000(suspected.len()),
        any_alert_jobs: any.len(),
        any_alert_per_1000: per_1000(any.len()),
        by_alert: by_alert.into_iter().map(|(k, v)| (k, v.len())).collect(),
        negative_tenants: all_tenants.len() - positive_tenants.len(),
        tenant_alerts: tenants.len(),
        tenant_alert_names: tenants.into_iter().collect(),
    }
}

fn llama3(opts: &EvalOptions) -> Llama3 {
    let est = Estimator::new(&opts.config.estimate);
    let u = est.sample_usage(
        LLAMA3_H100_HOURS,
        3600.0,
        H100_PEAK,
        &crate::decode::Activity::default(),
    );
    let bias = (crate::scenario::calibration::TENSOR_OVER_MFU.0
        + crate::scenario::calibration::TENSOR_OVER_MFU.1)
        / 2.0;
    // The tensor route measures tensor activity x peak: the published FLOP times the bias.
    let implied = LLAMA3_FLOP / (LLAMA3_H100_HOURS * 3600.0 * H100_PEAK);
    let t = est.sample_usage(
        LLAMA3_H100_HOURS,
        3600.0,
        H100_PEAK,
        &crate::decode::Activity {
            tensor_active: Some(implied * bias),
            ..Default::default()
        },
    );
    Llama3 {
        h100_hours: LLAMA3_H100_HOURS,
        published_flop: LLAMA3_FLOP,
        implied_utilisation: implied,
        utilisation_band: est.flop(&u),
        tensor_route: est.flop(&t),
        tensor_bias: bias,
    }
}

fn pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

fn targets(
    runs: &[RunOutcome],
    scenarios: &[ScenarioSummary],
    fa: &FalseAlarms,
    llama: &Llama3,
) -> Vec<Target> {
    let mut out = Vec::new();
    let eligible: Vec<&RunOutcome> = runs
        .iter()
        .filter(|r| r.class == Class::Positive && r.accelerators >= 256.0 && r.planned_hours >= 6.0)
        .collect();
    let within = eligible
        .iter()
        .filter(|r| r.detect_minutes.is_some_and(|m| m <= DETECT_WITHIN_MIN))
        .count();
    let share = within as f64 / eligible.len().max(1) as f64;
    out.push(Target {
        name: "recall, runs >= 256 accelerators lasting >= 6 h, detected within 30 min of start"
            .into(),
        target: format!(">= {}", pct(RECALL_TARGET)),
        value: format!("{} ({within} of {})", pct(share), eligible.len()),
        pass: !eligible.is_empty() && share >= RECALL_TARGET,
    });
    let any = eligible
        .iter()
        .filter(|r| r.detect_minutes.is_some())
        .count();
    let share_any = any as f64 / eligible.len().max(1) as f64;
    out.push(Target {
        name: "recall of the same runs at any time in the simulated hours".into(),
        target: format!(">= {}", pct(RECALL_TARGET)),
        value: format!("{} ({any} of {})", pct(share_any), eligible.len()),
        pass: !eligible.is_empty() && share_any >= RECALL_TARGET,
    });
    let positives: Vec<&RunOutcome> = runs.iter().filter(|r| r.class == Class::Positive).collect();
    let flapping: usize = positives.iter().map(|r| r.resolved_while_running).sum();
    let flapping_runs = positives
        .iter()
        .filter(|r| r.resolved_while_running > 0)
        .count();
    out.push(Target {
        name: "TrainingSuspected on positive runs resolved while the run was still reporting"
            .into(),
        target: "none".into(),
        value: format!("{flapping} in {flapping_runs} of {} runs", positives.len()),
        pass: flapping == 0,
    });
    out.push(Target {
        name: "false alarms (TrainingSuspected) per 1,000 negative jobs".into(),
        target: format!("<= {FALSE_ALARMS_PER_1000_TARGET}"),
        value: format!(
            "{:.2} ({} of {} jobs)",
            fa.training_suspected_per_1000, fa.training_suspected_jobs, fa.negative_jobs
        ),
        pass: fa.training_suspected_per_1000 <= FALSE_ALARMS_PER_1000_TARGET,
    });
    out.push(Target {
        name: "false alarms of any alert kind per 1,000 negative jobs".into(),
        target: format!("<= {FALSE_ALARMS_PER_1000_TARGET}"),
        value: format!(
            "{:.2} ({} of {} jobs)",
            fa.any_alert_per_1000, fa.any_alert_jobs, fa.negative_jobs
        ),
        pass: fa.any_alert_per_1000 <= FALSE_ALARMS_PER_1000_TARGET,
    });
    for s in scenarios
        .iter()
        .filter(|s| matches!(s.scenario, Scenario::BatchInference | Scenario::HpcFp64))
    {
        out.push(Target {
            name: format!("{}: jobs with TrainingSuspected", s.scenario.name()),
            target: "none".into(),
            value: format!("{} of {}", s.flagged, s.jobs),
            pass: s.flagged == 0,
        });
    }
    if let Some(dense) = scenarios
        .iter()
        .find(|s| s.scenario == Scenario::DensePretraining)
    {
        let errs: Vec<f64> = runs
            .iter()
            .filter(|r| r.scenario == Scenario::DensePretraining)
            .filter_map(|r| r.estimate_error)
            .collect();
        let ok = errs
            .iter()
            .filter(|e| e.abs() <= ESTIMATE_TOLERANCE)
            .count();
        let share = ok as f64 / errs.len().max(1) as f64;
        out.push(Target {
            name: "dense pretraining: central estimate within 25 % of the truth".into(),
            target: format!(">= {} of runs", pct(ESTIMATE_SHARE_TARGET)),
            value: format!(
                "{} ({ok} of {}; median abs. error {})",
                pct(share),
                errs.len(),
                dense.abs_estimate_error.median.map_or("-".into(), pct)
            ),
            pass: !errs.is_empty() && share >= ESTIMATE_SHARE_TARGET,
        });
        let band = dense.band_contains_share.unwrap_or(0.0);
        out.push(Target {
            name: "dense pretraining: low..high band contains the truth".into(),
            target: format!(">= {} of runs", pct(ESTIMATE_SHARE_TARGET)),
            value: pct(band),
            pass: band >= ESTIMATE_SHARE_TARGET,
        });
    }
    let b = &llama.utilisation_band;
    out.push(Target {
        name: "Llama 3 405B: 30.84M H100-hours, band contains 3.8e25 FLOP".into(),
        target: "low <= 3.8e25 <= high".into(),
        value: format!(
            "{:.2e} .. {:.2e} (central {:.2e})",
            b.low, b.high, b.central
        ),
        pass: b.low <= LLAMA3_FLOP && LLAMA3_FLOP <= b.high,
    });
    out
}

/// Scores every run and summarises.
pub fn evaluate(
    opts: &EvalOptions,
    runs: &[Run],
    groups: &[Vec<usize>],
    results: &[GroupResult],
    real: Option<RealTraces>,
) -> Evaluation {
    let mut outcomes: Vec<Option<RunOutcome>> = vec![None; runs.len()];
    let mut all_alerts: Vec<&AlertRecord> = Vec::new();
    let mut scores: HashMap<(String, String), f64> = HashMap::new();
    for (g, result) in groups.iter().zip(results) {
        let alerts: Vec<&AlertRecord> = result.alerts.iter().collect();
        for i in g {
            outcomes[*i] = Some(outcome(&runs[*i], &alerts, result));
        }
        all_alerts.extend(alerts);
        scores.extend(result.max_scores.iter().map(|(k, v)| (k.clone(), *v)));
    }
    let outcomes: Vec<RunOutcome> = outcomes
        .into_iter()
        .map(|o| o.expect("every run is in a group"))
        .collect();
    let scenarios: Vec<ScenarioSummary> = Scenario::ALL
        .into_iter()
        .filter_map(|s| {
            let rs: Vec<&RunOutcome> = outcomes.iter().filter(|r| r.scenario == s).collect();
            (!rs.is_empty()).then(|| summarise(s, &rs))
        })
        .collect();
    let fa = false_alarms(runs, &all_alerts);
    let tp = outcomes
        .iter()
        .filter(|r| r.class == Class::Positive && r.detect_minutes.is_some())
        .count();
    let precision = (tp + fa.training_suspected_jobs > 0)
        .then(|| tp as f64 / (tp + fa.training_suspected_jobs) as f64);
    let mut scores_positive = Vec::new();
    let mut scores_negative = Vec::new();
    for r in runs {
        for m in &r.members {
            let s = scores.get(m).copied().unwrap_or(0.0);
            match r.class {
                Class::Positive => scores_positive.push(s),
                Class::Negative => scores_negative.push(s),
            }
        }
    }
    let llama = llama3(opts);
    Evaluation {
        mix: opts.mix.clone(),
        seed: opts.seed,
        other_seeds: Vec::new(),
        config: opts.config.clone(),
        command: opts.command.clone(),
        events: results.iter().map(|r| r.events).sum(),
        pipelines: results.len(),
        targets: targets(&outcomes, &scenarios, &fa, &llama),
        runs: outcomes,
        scenarios,
        false_alarms: fa,
        precision,
        llama3: llama,
        scores_positive,
        scores_negative,
        real,
        min_duration_s: opts.config.detection.duration.high,
        min_accelerators: opts.config.detection.accelerators.high,
    }
}
