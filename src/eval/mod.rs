//! `trainspotter eval`: a mix of labelled scenarios through the real pipeline, scored.
//!
//! The mix ([`Mix`]) is built into runs ([`crate::scenario`]); runs of one organisation or tenant
//! share a pipeline (so tenant- and organisation-level alerts see all of their work), independent
//! groups run in parallel threads, each with its own [`Pipeline`] fed native JSON events exactly as
//! `replay` and the daemon are. Alerts, sampled job scores and the final job reports come back;
//! [`score`] turns them into the report's figures, [`report`] into markdown and plots, and
//! [`real`] adds what the pipeline finds in the real traces of `--data`.

pub mod real;
pub mod report;
pub mod score;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::alert::AlertRecord;
use crate::config::{Config, ConfigError};
use crate::decode::DecodeLimits;
use crate::engine::JobReport;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Shard};
use crate::scenario::{Horizon, Run, Scenario};
use crate::sim::{Fleet, SplitMix64};

const HOUR_MS: i64 = 3_600_000;
/// The simulated clock starts here (2025-01-06T00:00:00Z, a Monday), whatever the wall clock says.
pub const EPOCH_MS: i64 = 1_736_121_600_000;
/// Simulation step: every workload reports on a 30 s or 60 s grid.
const STEP_MS: i64 = 30_000;
/// Job scores are read from the pipeline this often (event time) to find each job's maximum.
const SCORE_EVERY_MS: i64 = 600_000;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("mix file {path}: {message}")]
    Mix { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Output {
        path: String,
        source: std::io::Error,
    },
    #[error("organisation membership of the mix: {0}")]
    Registry(String),
}

/// Which scenarios, how many instances of each, and how long they are simulated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Name shown in the report.
    pub name: String,
    /// Hours of telemetry simulated after each positive run's start (a pause adds its length).
    pub positive_hours: f64,
    /// Hours of telemetry simulated for negative workloads.
    pub negative_hours: f64,
    /// Pods per everyday-fleet instance.
    pub fleet_pods: usize,
    /// Instances per scenario name.
    pub scenarios: BTreeMap<String, usize>,
}

impl Mix {
    /// The evaluation mix of docs/evaluation.md: 40 positive runs, about 3,500 negative jobs.
    pub fn default_mix() -> Mix {
        Mix {
            name: "default".into(),
            positive_hours: 6.0,
            negative_hours: 24.0,
            fleet_pods: 300,
            scenarios: [
                ("dense-pretraining", 16),
                ("finetune-rl", 8),
                ("pause-resume", 4),
                ("throttled", 4),
                ("split-jobs", 4),
                ("split-tenants", 4),
                ("inference-serving", 8),
                ("batch-inference", 10),
                ("eval-sweep", 20),
                ("notebook-dev", 10),
                ("hpc-fp64", 8),
                ("render-transcode", 6),
                ("mining", 6),
                ("idle-reserved", 4),
                ("everyday-fleet", 8),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }

    /// A small mix for tests: every kind of outcome, small gangs, two hours.
    pub fn quick() -> Mix {
        Mix {
            name: "quick".into(),
            positive_hours: 1.5,
            negative_hours: 2.0,
            fleet_pods: 40,
            scenarios: [
                ("dense-pretraining", 2),
                ("split-jobs", 1),
                ("throttled", 1),
                ("batch-inference", 1),
                ("hpc-fp64", 1),
                ("inference-serving", 1),
                ("eval-sweep", 1),
                ("everyday-fleet", 1),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }

    /// `default`, `quick`, or a TOML file with the fields of [`Mix`].
    pub fn load(spec: &str) -> Result<Mix, EvalError> {
        let mix = match spec {
            "default" => Mix::default_mix(),
            "quick" => Mix::quick(),
            path => {
                let err = |message: String| EvalError::Mix {
                    path: path.to_string(),
                    message,
                };
                let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
                toml::from_str(&text).map_err(|e| err(e.to_string()))?
            }
        };
        for name in mix.scenarios.keys() {
            if Scenario::parse(name).is_none() {
                return Err(EvalError::Mix {
                    path: spec.to_string(),
                    message: format!("unknown scenario {name:?}"),
                });
            }
        }
        Ok(mix)
    }

    pub fn horizon(&self) -> Horizon {
        Horizon {
            t0_ms: EPOCH_MS,
            positive_ms: (self.positive_hours * HOUR_MS as f64) as i64,
            negative_ms: (self.negative_hours * HOUR_MS as f64) as i64,
            fleet_pods: self.fleet_pods,
        }
    }

    /// Every run of the mix, in scenario order then instance order; deterministic for a seed.
    pub fn build(&self, seed: u64) -> Vec<Run> {
        let h = self.horizon();
        let mut runs = Vec::new();
        for s in Scenario::ALL {
            let n = self.scenarios.get(s.name()).copied().unwrap_or(0);
            for i in 0..n {
                let mut rng = SplitMix64::new(
                    seed ^ ((s as u64 + 1) << 32 | i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                runs.extend(s.build(i, &mut rng, &h));
            }
        }
        runs
    }
}

/// How an evaluation is run.
#[derive(Clone)]
pub struct EvalOptions {
    pub mix: Mix,
    pub seed: u64,
    pub config: Config,
    /// The shared real traces (`--data`); their section is skipped when absent.
    pub data: Option<PathBuf>,
    pub threads: usize,
    /// The command line that reproduces the report, quoted at its top.
    pub command: String,
    /// More seeds of the same mix whose targets are checked too (held out from any tuning).
    pub check_seeds: Vec<u64>,
}

/// What one pipeline saw of its group of runs.
#[derive(Debug, Default)]
pub struct GroupResult {
    pub alerts: Vec<AlertRecord>,
    /// Highest training score each (tenant, job) reached.
    pub max_scores: HashMap<(String, String), f64>,
    pub jobs: Vec<JobReport>,
    pub events: u64,
}

/// Runs `runs` (indices into `all`) through one fresh pipeline.
fn simulate_group(
    cfg: &Config,
    all: &[Run],
    runs: &[usize],
    seed: u64,
) -> Result<GroupResult, EvalError> {
    let mut pipeline = Pipeline::new(cfg, Arc::new(Metrics::new()))?;
    // The tenant registry knows which tenants belong to an organisation (as a provider's KYC
    // records would), so a run split across an organisation's accounts can be seen whole.
    let membership: Vec<crate::registry_topic::Update> = runs
        .iter()
        .filter_map(|i| all[*i].org.as_ref().map(|o| (o, &all[*i].members)))
        .flat_map(|(org, members)| {
            members
                .iter()
                .map(move |(tenant, _)| crate::registry_topic::Update {
                    tenant: tenant.clone(),
                    value: Some(
                        serde_json::json!({ "organisation": org })
                            .to_string()
                            .into_bytes(),
                    ),
                })
        })
        .collect();
    if let Some(e) = pipeline
        .apply_registry_updates(&membership)
        .into_iter()
        .next()
    {
        return Err(EvalError::Registry(e.to_string()));
    }
    let shard = Shard::local();
    let workloads = runs
        .iter()
        .flat_map(|i| all[*i].workloads.iter().cloned())
        .collect();
    let mut fleet = Fleet::new(workloads, seed);
    let from = runs
        .iter()
        .map(|i| all[*i].start_ms)
        .min()
        .unwrap_or(0)
        .div_euclid(STEP_MS)
        * STEP_MS;
    let to = runs.iter().map(|i| all[*i].sim_end_ms).max().unwrap_or(0);
    let mut out = GroupResult::default();
    let mut samples = Vec::new();
    let mut payloads: Vec<String> = Vec::new();
    let mut next_score = from + SCORE_EVERY_MS;
    let mut t = from;
    while t <= to {
        samples.clear();
        fleet.samples_at(t, &mut samples);
        if !samples.is_empty() {
            payloads.clear();
            payloads.extend(samples.iter().map(|s| s.to_json()));
            pipeline.process(
                &shard,
                payloads.iter().map(|p| Some(p.as_bytes())),
                DecodeLimits::OPEN,
            );
            out.events += payloads.len() as u64;
            out.alerts.extend(pipeline.drain_alerts());
        }
        if t >= next_score {
            record_scores(&pipeline, &mut out.max_scores);
            next_score += SCORE_EVERY_MS;
        }
        t += STEP_MS;
    }
    pipeline.finish();
    out.alerts.extend(pipeline.drain_alerts());
    record_scores(&pipeline, &mut out.max_scores);
    out.jobs = pipeline.job_reports();
    Ok(out)
}

fn record_scores(p: &Pipeline, max: &mut HashMap<(String, String), f64>) {
    for j in p.job_reports() {
        let e = max.entry((j.tenant, j.job)).or_insert(0.0);
        *e = e.max(j.training_score);
    }
}

/// Groups runs that must share a pipeline: one organisation, or one tenant.
fn groups(runs: &[Run]) -> Vec<Vec<usize>> {
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        let key = match &r.org {
            Some(o) => format!("org:{o}"),
            None => format!("tenant:{}", r.members[0].0),
        };
        by_key.entry(key).or_default().push(i);
    }
    by_key.into_values().collect()
}

/// Expected events of a group, to schedule the biggest first.
fn cost(runs: &[Run], group: &[usize]) -> f64 {
    group
        .iter()
        .map(|i| {
            let r = &runs[*i];
            r.workloads
                .iter()
                .map(|w| {
                    w.devices() as f64 * (r.sim_end_ms - r.start_ms) as f64
                        / (w.interval_s as f64 * 1000.0)
                })
                .sum::<f64>()
        })
        .sum()
}

/// Simulates every group on `threads` threads; results come back in group order whatever the
/// scheduling, so the output is the same for a seed.
pub fn simulate(
    opts: &EvalOptions,
    runs: &[Run],
) -> Result<(Vec<Vec<usize>>, Vec<GroupResult>), EvalError> {
    let groups = groups(runs);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|a, b| cost(runs, &groups[*b]).total_cmp(&cost(runs, &groups[*a])));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<GroupResult, EvalError>>>> =
        Mutex::new((0..groups.len()).map(|_| None).collect());
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..opts.threads.max(1) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&g) = order.get(k) else { break };
                let seed = opts.seed ^ (g as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
                let r = simulate_group(&opts.config, runs, &groups[g], seed);
                results
                    .lock()
                    .expect("no thread panics while holding the lock")[g] = Some(r);
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 25 == 0 || n == groups.len() {
                    tracing::info!(
                        done = n,
                        groups = groups.len(),
                        elapsed_s = started.elapsed().as_secs(),
                        "eval progress"
                    );
                }
            });
        }
    });
    let results = results
        .into_inner()
        .expect("no thread panics while holding the lock")
        .into_iter()
        .map(|r| r.expect("every group was simulated"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((groups, results))
}

/// Runs the whole evaluation and writes `evaluation.md`, `eval.json` and the plots under `out`
/// (plots in `out/eval/`).
pub fn run(opts: &EvalOptions, out: &Path) -> Result<score::Evaluation, EvalError> {
    let runs = opts.mix.build(opts.seed);
    let (groups, results) = simulate(opts, &runs)?;
    let real = opts
        .data
        .as_deref()
        .filter(|d| d.is_dir())
        .map(|d| real::evaluate(&opts.config, d))
        .transpose()?;
    let mut evaluation = score::evaluate(opts, &runs, &groups, &results, real);
    for &seed in &opts.check_seeds {
        let other = EvalOptions {
            seed,
            check_seeds: Vec::new(),
            data: None,
            ..opts.clone()
        };
        let runs = other.mix.build(seed);
        let (groups, results) = simulate(&other, &runs)?;
        let e = score::evaluate(&other, &runs, &groups, &results, None);
        evaluation.other_seeds.push(score::SeedTargets {
            seed,
            events: e.events,
            targets: e.targets,
        });
    }
    report::write(&evaluation, out)?;
    Ok(evaluation)
}
