//! Scenario library: labelled workloads for the simulator and the evaluation harness.
//!
//! A [`Scenario`] builds [`Run`]s: a run is one labelled piece of work (a training run, an
//! inference fleet, a notebook) with its members (tenant, job), its size and timing, the
//! [`Workload`]s that produce its telemetry, and its ground truth: the FLOP it really performed
//! up to any time ([`Run::true_flop_until`]). Telemetry is an observation of that truth through
//! the biases and noise of [`model`]; constants come from real traces ([`calibration`]).
//! Deterministic for a seed; what each scenario models and why is in docs/scenarios.md.

pub mod calibration;
pub mod model;

use std::sync::Arc;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::sim::{Profile, SplitMix64, Workload};
use calibration::{
    inverse_cdf, inverse_cdf_log, quantile_points, ACME_BUSY_SM_ACTIVE, MINIBATCH_CV_P10,
    MINIBATCH_CV_P50, OPENB_GPU_COUNTS, OPENB_GPU_MILLI, OPENB_LIFETIME_H, PUBLISHED_MFU,
    STRAGGLER_PROBABILITY, TENSOR_OVER_MFU,
};
use model::{Kind, Model, Telemetry, Training};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Unexpected interruptions per GPU-day of a large run: Llama 3 saw 419 unexpected interruptions
/// in a 54-day snapshot on 16,384 H100s (Llama 3 paper, sec. 3.3.4): 419 / 54 / 16,384.
const FAILURES_PER_GPU_DAY: f64 = 4.7e-4;

/// What a run is, for scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Large AI training: should be detected.
    Positive,
    /// Anything else: an alert on it is a false alarm.
    Negative,
}

/// The scenario library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    DensePretraining,
    FinetuneRl,
    PauseResume,
    Throttled,
    SplitJobs,
    SplitTenants,
    InferenceServing,
    BatchInference,
    EvalSweep,
    NotebookDev,
    HpcFp64,
    RenderTranscode,
    Mining,
    IdleReserved,
    EverydayFleet,
}

impl Scenario {
    pub const ALL: [Scenario; 15] = [
        Scenario::DensePretraining,
        Scenario::FinetuneRl,
        Scenario::PauseResume,
        Scenario::Throttled,
        Scenario::SplitJobs,
        Scenario::SplitTenants,
        Scenario::InferenceServing,
        Scenario::BatchInference,
        Scenario::EvalSweep,
        Scenario::NotebookDev,
        Scenario::HpcFp64,
        Scenario::RenderTranscode,
        Scenario::Mining,
        Scenario::IdleReserved,
        Scenario::EverydayFleet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::DensePretraining => "dense-pretraining",
            Scenario::FinetuneRl => "finetune-rl",
            Scenario::PauseResume => "pause-resume",
            Scenario::Throttled => "throttled",
            Scenario::SplitJobs => "split-jobs",
            Scenario::SplitTenants => "split-tenants",
            Scenario::InferenceServing => "inference-serving",
            Scenario::BatchInference => "batch-inference",
            Scenario::EvalSweep => "eval-sweep",
            Scenario::NotebookDev => "notebook-dev",
            Scenario::HpcFp64 => "hpc-fp64",
            Scenario::RenderTranscode => "render-transcode",
            Scenario::Mining => "mining",
            Scenario::IdleReserved => "idle-reserved",
            Scenario::EverydayFleet => "everyday-fleet",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn class(self) -> Class {
        match self {
            Scenario::DensePretraining
            | Scenario::FinetuneRl
            | Scenario::PauseResume
            | Scenario::Throttled
            | Scenario::SplitJobs
            | Scenario::SplitTenants => Class::Positive,
            _ => Class::Negative,
        }
    }

    /// One line for listings and the report.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::DensePretraining => {
                "dense LLM pretraining, 256-16,384 accelerators (H100/H200/B200/A100/MI300X/TPU v5p), \
                 planned 3-120 days, checkpoint dips, failures and restarts"
            }
            Scenario::FinetuneRl => {
                "large fine-tuning (steady) or RL (alternating rollout generation and training), \
                 256-1,024 GPUs, 1-10 days"
            }
            Scenario::PauseResume => "dense run of 512-1,024 GPUs that pauses 2-5 h and resumes as the same job",
            Scenario::Throttled => {
                "run duty-cycled to 30-45 % to stay under the radar (tensor activity 0.11-0.17), \
                 256-1,024 GPUs, 30-90 days"
            }
            Scenario::SplitJobs => "one synchronous run of 256-2,048 GPUs split across 8 jobs of one tenant",
            Scenario::SplitTenants => {
                "one run of 512-2,048 GPUs split across 4 tenant accounts of one organisation"
            }
            Scenario::InferenceServing => {
                "online inference, 64-512 GPUs, busy share following a daily request curve"
            }
            Scenario::BatchInference => {
                "offline batch inference, 128-768 GPUs at high steady activity, independent \
                 replicas, memory-bound decode"
            }
            Scenario::EvalSweep => "evaluation sweep: 40 short jobs of 1-8 GPUs, 10-90 min each",
            Scenario::NotebookDev => "20 notebooks / dev boxes of 1-2 GPUs, bursty, 1-8 h",
            Scenario::HpcFp64 => {
                "HPC simulation, 64-512 GPUs: FP64 on CUDA cores (high SM, little tensor activity), \
                 synchronised output steps"
            }
            Scenario::RenderTranscode => "rendering / transcoding, 8-128 GPUs, independent frames",
            Scenario::Mining => "mining-like constant integer load, 16-256 GPUs, flat, no tensor activity",
            Scenario::IdleReserved => "reserved capacity, 64-512 GPUs, idle",
            Scenario::EverydayFleet => {
                "everyday shared-GPU fleet: pods with Alibaba openb sizes, GPU shares and lifetimes"
            }
        }
    }
}

/// One labelled piece of work and the workloads that produce its telemetry.
#[derive(Debug, Clone)]
pub struct Run {
    /// Unique within a mix.
    pub name: String,
    pub scenario: Scenario,
    pub class: Class,
    pub org: Option<String>,
    /// (tenant, job) of every job the run uses.
    pub members: Vec<(String, String)>,
    /// Devices (for allocation pods, GPUs held).
    pub accelerators: f64,
    pub accelerator: String,
    pub telemetry: Telemetry,
    pub start_ms: i64,
    pub planned_end_ms: i64,
    /// Telemetry stops here (the simulated horizon, at most the planned end).
    pub sim_end_ms: i64,
    pub workloads: Vec<Workload>,
}

impl Run {
    fn models(&self) -> impl Iterator<Item = (&Workload, &Model)> {
        self.workloads.iter().filter_map(|w| match &w.profile {
            Profile::Modelled(m) => Some((w, m.as_ref())),
            _ => None,
        })
    }

    /// FLOP the run really performed in samples ending at or before `until_ms` (within its planned
    /// life): for every sample interval, devices x share x interval x peak x true MFU.
    pub fn true_flop_until(&self, until_ms: i64) -> f64 {
        let mut total = 0.0;
        for (w, m) in self.models() {
            let step = w.interval_s as i64 * 1000;
            let per_interval = w.devices() as f64 * m.share * w.interval_s as f64 * m.peak_flops;
            let end = until_ms.min(self.planned_end_ms);
            let mut t = w.start_ms + step;
            while t <= end {
                total += per_interval * m.true_mfu(t - w.start_ms);
                t += step;
            }
        }
        total
    }

    /// When the true FLOP reaches `threshold`, if it does within the planned life.
    pub fn true_crossing_ms(&self, threshold: f64) -> Option<i64> {
        let models: Vec<(&Workload, &Model)> = self.models().collect();
        let step = models
            .iter()
            .map(|(w, _)| w.interval_s as i64 * 1000)
            .max()?;
        let mut total = 0.0;
        let mut t = self.start_ms;
        while t < self.planned_end_ms {
            let next = t + step;
            for (w, m) in &models {
                let s = w.interval_s as i64 * 1000;
                let per = w.devices() as f64 * m.share * w.interval_s as f64 * m.peak_flops;
                // Grid points of this workload in (t, next].
                let mut g = (t - w.start_ms).div_euclid(s) * s + w.start_ms + s;
                while g <= next && g <= self.planned_end_ms {
                    if g > w.start_ms {
                        total += per * m.true_mfu(g - w.start_ms);
                    }
                    g += s;
                }
            }
            if total >= threshold {
                return Some(next);
            }
            t = next;
        }
        None
    }

    /// Every (tenant) the run uses, sorted and unique.
    pub fn tenants(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.members.iter().map(|(t, _)| t.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// How long scenario runs are simulated and where the clock starts.
#[derive(Debug, Clone, Copy)]
pub struct Horizon {
    /// Epoch ms of the simulation start.
    pub t0_ms: i64,
    /// Telemetry of positive runs is simulated for this long after each run's start (plus any
    /// pause), enough for detection, the early estimate and a projection.
    pub positive_ms: i64,
    /// Negative workloads are simulated over this long (a whole day shows the serving curve).
    pub negative_ms: i64,
    /// Pods per everyday-fleet instance.
    pub fleet_pods: usize,
}

/// An accelerator a scenario can use: dcgm-exporter modelName, TDP, memory, devices per node.
struct Accel {
    name: &'static str,
    tdp_w: f64,
    memory_bytes: f64,
    per_node: usize,
}

const H100: Accel = Accel {
    name: "NVIDIA H100 80GB HBM3",
    tdp_w: 700.0,
    memory_bytes: 80e9,
    per_node: 8,
};
const H200: Accel = Accel {
    name: "NVIDIA H200",
    tdp_w: 700.0,
    memory_bytes: 141e9,
    per_node: 8,
};
const B200: Accel = Accel {
    name: "NVIDIA B200",
    tdp_w: 1000.0,
    memory_bytes: 192e9,
    per_node: 8,
};
const A100: Accel = Accel {
    name: "NVIDIA A100-SXM4-80GB",
    tdp_w: 400.0,
    memory_bytes: 80e9,
    per_node: 8,
};
const MI300X: Accel = Accel {
    name: "AMD Instinct MI300X",
    tdp_w: 750.0,
    memory_bytes: 192e9,
    per_node: 8,
};
const TPU_V5P: Accel = Accel {
    name: "tpu-v5p",
    tdp_w: 450.0,
    memory_bytes: 95e9,
    per_node: 4,
};
const L40S: Accel = Accel {
    name: "NVIDIA L40S",
    tdp_w: 350.0,
    memory_bytes: 48e9,
    per_node: 8,
};
const V100: Accel = Accel {
    name: "Tesla V100-SXM2-32GB",
    tdp_w: 300.0,
    memory_bytes: 32e9,
    per_node: 8,
};
const T4: Accel = Accel {
    name: "Tesla T4",
    tdp_w: 70.0,
    memory_bytes: 16e9,
    per_node: 8,
};
const A10: Accel = Accel {
    name: "NVIDIA A10",
    tdp_w: 150.0,
    memory_bytes: 24e9,
    per_node: 8,
};

fn peak_flops(name: &str) -> f64 {
    Catalog::new(&[], 989.0).resolve(Some(name)).flops
}

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[(rng.uniform() * items.len() as f64) as usize % items.len()]
}

fn between(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.uniform()
}

fn log_between(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    (lo.ln() + (hi.ln() - lo.ln()) * rng.uniform()).exp()
}

fn minute(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS) * MINUTE_MS
}

/// Failures with restarts over a run's planned life: a Poisson process at
/// [`FAILURES_PER_GPU_DAY`], each outage 10-40 min; plus any extra gaps (pauses), merged.
fn gaps(
    rng: &mut SplitMix64,
    devices: usize,
    life_ms: i64,
    extra: &[(i64, i64)],
) -> Vec<(i64, i64)> {
    let rate_per_ms = FAILURES_PER_GPU_DAY * devices as f64 / DAY_MS as f64;
    let mut out: Vec<(i64, i64)> = extra.to_vec();
    let mut t = 0i64;
    loop {
        let wait = -(1.0 - rng.uniform()).ln() / rate_per_ms;
        t += wait as i64;
        if t >= life_ms {
            break;
        }
        let len = minute((between(rng, 10.0, 40.0) * MINUTE_MS as f64) as i64);
        out.push((minute(t), len));
        t += len;
    }
    out.sort_unstable();
    // Overlapping gaps merge: a failure during a pause is no extra outage.
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (from, len) in out {
        match merged.last_mut() {
            Some((f, l)) if from <= *f + *l => *l = (*l).max(from + len - *f),
            _ => merged.push((from, len)),
        }
    }
    merged
}

/// Node names of one job.
fn node_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-n{i:04}")).collect()
}

/// Parameters of a training gang.
struct Gang<'a> {
    accel: &'a Accel,
    devices: usize,
    mfu: f64,
    level: (f64, f64),
    rollout: Option<(i64, f64, f64)>,
    extra_gaps: Vec<(i64, i64)>,
    life_ms: i64,
}

fn training_model(rng: &mut SplitMix64, g: &Gang, telemetry: Telemetry) -> Arc<Model> {
    let bias = between(rng, TENSOR_OVER_MFU.0, TENSOR_OVER_MFU.1);
    let sm_target = inverse_cdf(
        &quantile_points(&ACME_BUSY_SM_ACTIVE),
        between(rng, 0.3, 0.95),
    );
    let nodes = g.devices / g.accel.per_node;
    let t = Training {
        mfu: g.mfu,
        tensor_over_mfu: bias,
        sm_over_tensor: (sm_target / (g.mfu * bias)).max(1.0),
        rank_cv: log_between(rng, MINIBATCH_CV_P10, MINIBATCH_CV_P50),
        straggler_node: (rng.uniform() < STRAGGLER_PROBABILITY)
            .then(|| (rng.uniform() * nodes as f64) as usize % nodes.max(1)),
        checkpoint_every_ms: minute((between(rng, 30.0, 120.0) * MINUTE_MS as f64) as i64),
        dip_ms: minute((between(rng, 2.0, 8.0) * MINUTE_MS as f64) as i64).max(MINUTE_MS),
        dip_level: 0.05,
        rollout: g.rollout,
        level: between(rng, g.level.0, g.level.1),
    };
    Arc::new(Model {
        kind: Kind::Training(t),
        telemetry,
        peak_flops: peak_flops(g.accel.name),
        tdp_w: g.accel.tdp_w,
        memory_bytes: g.accel.memory_bytes,
        share: 1.0,
        gaps: gaps(rng, g.devices, g.life_ms, &g.extra_gaps),
        seed: rng.next_u64(),
    })
}

fn interval_for(devices: usize) -> u32 {
    if devices >= 64 {
        60
    } else {
        30
    }
}

struct RunSpec {
    name: String,
    scenario: Scenario,
    org: Option<String>,
    accel: &'static Accel,
    telemetry: Telemetry,
    start_ms: i64,
    planned_end_ms: i64,
    sim_end_ms: i64,
    /// (tenant, job, devices) per member.
    members: Vec<(String, String, usize)>,
    share: f64,
}

fn assemble(spec: RunSpec, model: Arc<Model>) -> Run {
    let total: usize = spec.members.iter().map(|m| m.2).sum();
    let interval = interval_for(total.max(spec.members[0].2));
    let workloads = spec
        .members
        .iter()
        .map(|(tenant, job, devices)| {
            let per_node = spec.accel.per_node.min(*devices).max(1);
            Workload {
                tenant: tenant.clone(),
                job: job.clone(),
                accelerator: spec.accel.name.to_string(),
                nodes: node_names(&format!("{tenant}-{job}"), devices.div_ceil(per_node)),
                gpus_per_node: per_node,
                start_ms: spec.start_ms,
                end_ms: spec.sim_end_ms,
                interval_s: interval,
                profile: Profile::Modelled(model.clone()),
            }
        })
        .collect();
    Run {
        name: spec.name,
        scenario: spec.scenario,
        class: spec.scenario.class(),
        org: spec.org,
        members: spec
            .members
            .iter()
            .map(|(t, j, _)| (t.clone(), j.clone()))
            .collect(),
        accelerators: total as f64 * spec.share,
        accelerator: spec.accel.name.to_string(),
        telemetry: spec.telemetry,
        start_ms: spec.start_ms,
        planned_end_ms: spec.planned_end_ms,
        sim_end_ms: spec.sim_end_ms,
        workloads,
    }
}

fn simple_model(
    rng: &mut SplitMix64,
    kind: Kind,
    accel: &Accel,
    telemetry: Telemetry,
) -> Arc<Model> {
    Arc::new(Model {
        kind,
        telemetry,
        peak_flops: peak_flops(accel.name),
        tdp_w: accel.tdp_w,
        memory_bytes: accel.memory_bytes,
        share: 1.0,
        gaps: Vec::new(),
        seed: rng.next_u64(),
    })
}

impl Scenario {
    /// Builds instance `index` of this scenario (one run, or for the fleet-like scenarios a set of
    /// runs, one per job) from `rng`. Sizes cycle through the scenario's list by `index` so that a
    /// mix covers the whole range; everything else is drawn.
    pub fn build(self, index: usize, rng: &mut SplitMix64, h: &Horizon) -> Vec<Run> {
        let name = format!("{}-{index:03}", self.name());
        let start = minute(h.t0_ms + (rng.uniform() * HOUR_MS as f64) as i64);
        let telemetry = Telemetry::draw(rng);
        let neg_end = |planned: i64| planned.min(start + h.negative_ms);
        let cycle = |sizes: &[usize]| sizes[index % sizes.len()];
        let spec = |org: Option<String>,
                    accel: &'static Accel,
                    planned: i64,
                    sim_end: i64,
                    members: Vec<(String, String, usize)>| RunSpec {
            name: name.clone(),
            scenario: self,
            org,
            accel,
            telemetry,
            start_ms: start,
            planned_end_ms: planned,
            sim_end_ms: sim_end,
            members,
            share: 1.0,
        };
        // A negative run of one job in its own tenant, simulated until the mix's negative horizon.
        let negative = |tenant: String,
                        job: &str,
                        devices: usize,
                        accel: &'static Accel,
                        planned: i64,
                        model: Arc<Model>| {
            assemble(
                spec(
                    None,
                    accel,
                    planned,
                    neg_end(planned),
                    vec![(tenant, job.into(), devices)],
                ),
                model,
            )
        };
        match self {
            Scenario::DensePretraining => {
                let devices = cycle(&[
                    256, 512, 1024, 2048, 4096, 256, 512, 1024, 8192, 16384, 256, 512, 1024, 2048,
                    256, 512,
                ]);
                let accel = *pick(rng, &[&H100, &H100, &H200, &B200, &A100, &MI300X, &TPU_V5P]);
                let life = (log_between(rng, 3.0, 120.0) * DAY_MS as f64) as i64;
                let mfu =
                    (pick(rng, &PUBLISHED_MFU) * (1.0 + 0.05 * rng.normal())).clamp(0.15, 0.6);
                let g = Gang {
                    accel,
                    devices,
                    mfu,
                    level: (0.5, 0.95),
                    rollout: None,
                    extra_gaps: Vec::new(),
                    life_ms: life,
                };
                let m = training_model(rng, &g, telemetry);
                let t = format!("lab-{index:03}");
                vec![assemble(
                    spec(
                        None,
                        accel,
                        start + life,
                        start + h.positive_ms,
                        vec![(t, "pretrain".into(), devices)],
                    ),
                    m,
                )]
            }
            Scenario::FinetuneRl => {
                let devices = cycle(&[256, 512, 1024, 512]);
                let accel = *pick(rng, &[&H100, &H200, &B200]);
                let life = (log_between(rng, 1.0, 10.0) * DAY_MS as f64) as i64;
                let rl = index % 2 == 1;
                let (mfu, rollout, job) = if rl {
                    let period = minute((between(rng, 8.0, 20.0) * MINUTE_MS as f64) as i64);
                    (
                        between(rng, 0.30, 0.40),
                        Some((period, between(rng, 0.4, 0.7), between(rng, 0.04, 0.10))),
                        "rl-policy",
                    )
                } else {
                    (between(rng, 0.25, 0.40), None, "sft")
                };
                let g = Gang {
                    accel,
                    devices,
                    mfu,
                    level: (0.4, 0.9),
                    rollout,
                    extra_gaps: Vec::new(),
                    life_ms: life,
                };
                let m = training_model(rng, &g, telemetry);
                vec![assemble(
                    spec(
                        None,
                        accel,
                        start + life,
                        start + h.positive_ms,
                        vec![(format!("tune-{index:03}"), job.into(), devices)],
                    ),
                    m,
                )]
            }
            Scenario::PauseResume => {
                let devices = cycle(&[512, 1024]);
                let accel = *pick(rng, &[&H100, &H200, &A100]);
                let life = (log_between(rng, 7.0, 60.0) * DAY_MS as f64) as i64;
                let pause_at = minute((between(rng, 1.5, 3.0) * HOUR_MS as f64) as i64);
                let pause_len = minute((between(rng, 2.0, 5.0) * HOUR_MS as f64) as i64);
                let g = Gang {
                    accel,
                    devices,
                    mfu: between(rng, 0.33, 0.43),
                    level: (0.5, 0.95),
                    rollout: None,
                    extra_gaps: vec![(pause_at, pause_len)],
                    life_ms: life,
                };
                let m = training_model(rng, &g, telemetry);
                vec![assemble(
                    spec(
                        None,
                        accel,
                        start + life,
                        start + h.positive_ms + pause_len,
                        vec![(format!("pause-{index:03}"), "pretrain".into(), devices)],
                    ),
                    m,
                )]
            }
            Scenario::Throttled => {
                let devices = cycle(&[256, 512, 1024, 512]);
                let accel = *pick(rng, &[&H100, &H200, &A100]);
                let life = (log_between(rng, 30.0, 90.0) * DAY_MS as f64) as i64;
                let duty = between(rng, 0.30, 0.45);
                let g = Gang {
                    accel,
                    devices,
                    mfu: 0.38 * duty,
                    level: (0.1, 0.3),
                    rollout: None,
                    extra_gaps: Vec::new(),
                    life_ms: life,
                };
                let m = training_model(rng, &g, telemetry);
                vec![assemble(
                    spec(
                        None,
                        accel,
                        start + life,
                        start + h.positive_ms,
                        vec![(format!("quiet-{index:03}"), "train".into(), devices)],
                    ),
                    m,
                )]
            }
            Scenario::SplitJobs => {
                let devices = cycle(&[256, 512, 1024, 2048]);
                let accel = *pick(rng, &[&H100, &H200, &B200]);
                let life = (log_between(rng, 7.0, 60.0) * DAY_MS as f64) as i64;
                let g = Gang {
                    accel,
                    devices,
                    mfu: between(rng, 0.30, 0.43),
                    level: (0.5, 0.95),
                    rollout: None,
                    extra_gaps: Vec::new(),
                    life_ms: life,
                };
                let m = training_model(rng, &g, telemetry);
                let tenant = format!("multi-{index:03}");
                let members = (0..8)
                    .map(|j| (tenant.clone(), format!("shard-{j}"), devices / 8))
                    .collect();
                vec![assemble(
                    spec(None, accel, start + life, start + h.positive_ms, members),
                    m,
                )]
            }
            Scenario::SplitTenants => {
                let devices = cycle(&[512, 1024, 2048]);
                let accel = *pick(rng, &[&H100, &H200, &B200]);
                let life = (log_between(rng, 7.0, 60.0) * DAY_MS as f64) as i64;
                let g = Gang {
                    accel,
                    devices,
                    mfu: between(rng, 0.30, 0.43),
                    level: (0.5, 0.95),
                    rollout: None,
                    extra_gaps: Vec::new(),
                    life_ms: life,
                };
                let m = training_model(rng, &g, telemetry);
                let org = format!("org-{index:03}");
                let members = ["a", "b", "c", "d"]
                    .iter()
                    .map(|s| (format!("{org}-{s}"), "train".to_string(), devices / 4))
                    .collect();
                vec![assemble(
                    spec(
                        Some(org),
                        accel,
                        start + life,
                        start + h.positive_ms,
                        members,
                    ),
                    m,
                )]
            }
            Scenario::InferenceServing => {
                let devices = cycle(&[64, 128, 256, 512]);
                let accel = *pick(rng, &[&H100, &A100, &H200, &L40S]);
                let kind = Kind::Serving {
                    busy_min: between(rng, 0.02, 0.10),
                    busy_max: between(rng, 0.4, 0.9),
                    tensor_busy: between(rng, 0.2, 0.5),
                    phase_ms: (rng.uniform() * DAY_MS as f64) as i64,
                };
                let m = simple_model(rng, kind, accel, telemetry);
                let planned = start + 90 * DAY_MS;
                vec![negative(
                    format!("serve-{index:03}"),
                    "api",
                    devices,
                    accel,
                    planned,
                    m,
                )]
            }
            Scenario::BatchInference => {
                let devices = cycle(&[128, 256, 384, 512, 768]);
                let accel = *pick(rng, &[&H100, &A100, &H200]);
                let kind = Kind::BatchInference {
                    tensor: between(rng, 0.12, 0.40),
                    dram: between(rng, 0.6, 0.85),
                    replica_cv: between(rng, 0.08, 0.25),
                };
                let m = simple_model(rng, kind, accel, telemetry);
                let planned = start + (between(rng, 12.0, 72.0) * HOUR_MS as f64) as i64;
                vec![negative(
                    format!("batch-{index:03}"),
                    "bulk-infer",
                    devices,
                    accel,
                    planned,
                    m,
                )]
            }
            Scenario::HpcFp64 => {
                let devices = cycle(&[64, 128, 256, 512]);
                let accel = *pick(rng, &[&H100, &A100]);
                let kind = Kind::Hpc {
                    sm: between(rng, 0.75, 0.95),
                    tensor: between(rng, 0.0, 0.06),
                    output_every_ms: minute((between(rng, 30.0, 90.0) * MINUTE_MS as f64) as i64),
                    output_ms: minute((between(rng, 3.0, 8.0) * MINUTE_MS as f64) as i64),
                };
                let m = simple_model(rng, kind, accel, telemetry);
                let planned = start + (between(rng, 6.0, 72.0) * HOUR_MS as f64) as i64;
                vec![negative(
                    format!("sim-{index:03}"),
                    "cfd",
                    devices,
                    accel,
                    planned,
                    m,
                )]
            }
            Scenario::RenderTranscode => {
                let devices = cycle(&[8, 16, 32, 64, 128]);
                let accel = *pick(rng, &[&L40S, &A10, &T4]);
                let kind = Kind::Render {
                    sm: between(rng, 0.4, 0.8),
                };
                let m = simple_model(rng, kind, accel, telemetry);
                let planned = start + (between(rng, 2.0, 12.0) * HOUR_MS as f64) as i64;
                vec![negative(
                    format!("render-{index:03}"),
                    "frames",
                    devices,
                    accel,
                    planned,
                    m,
                )]
            }
            Scenario::Mining => {
                let devices = cycle(&[16, 32, 64, 128, 256]);
                let accel = *pick(rng, &[&A100, &H100, &L40S]);
                let kind = Kind::Mining {
                    sm: between(rng, 0.9, 1.0),
                    power_cap: between(rng, 0.6, 0.75),
                };
                let m = simple_model(rng, kind, accel, telemetry);
                let planned = start + 30 * DAY_MS;
                vec![negative(
                    format!("hash-{index:03}"),
                    "worker",
                    devices,
                    accel,
                    planned,
                    m,
                )]
            }
            Scenario::IdleReserved => {
                let devices = cycle(&[64, 128, 256, 512]);
                let accel = *pick(rng, &[&H100, &B200]);
                let m = simple_model(rng, Kind::Idle, accel, telemetry);
                let planned = start + 30 * DAY_MS;
                vec![negative(
                    format!("reserve-{index:03}"),
                    "hold",
                    devices,
                    accel,
                    planned,
                    m,
                )]
            }
            Scenario::EvalSweep => {
                let tenant = format!("evals-{index:03}");
                (0..40)
                    .map(|j| {
                        let devices = *pick(rng, &[1usize, 2, 4, 8]);
                        let accel = *pick(rng, &[&H100, &A100]);
                        let s =
                            minute(h.t0_ms + (rng.uniform() * h.negative_ms as f64 * 0.9) as i64);
                        let len = (between(rng, 10.0, 90.0) * MINUTE_MS as f64) as i64;
                        let kind = Kind::Steady {
                            tensor: between(rng, 0.15, 0.45),
                        };
                        let m = simple_model(rng, kind, accel, telemetry);
                        let mut r = spec(
                            None,
                            accel,
                            s + len,
                            (s + len).min(h.t0_ms + h.negative_ms),
                            vec![(tenant.clone(), format!("eval-{j:02}"), devices)],
                        );
                        r.name = format!("{name}-{j:02}");
                        r.start_ms = s;
                        assemble(r, m)
                    })
                    .collect()
            }
            Scenario::NotebookDev => {
                let tenant = format!("research-{index:03}");
                (0..20)
                    .map(|j| {
                        let devices = *pick(rng, &[1usize, 1, 2]);
                        let accel = *pick(rng, &[&H100, &A100, &L40S]);
                        let s =
                            minute(h.t0_ms + (rng.uniform() * h.negative_ms as f64 * 0.8) as i64);
                        let len = (between(rng, 1.0, 8.0) * HOUR_MS as f64) as i64;
                        let kind = Kind::Bursty {
                            busy: between(rng, 0.05, 0.3),
                            tensor_busy: between(rng, 0.1, 0.4),
                            burst_ms: minute((between(rng, 5.0, 20.0) * MINUTE_MS as f64) as i64),
                        };
                        let m = simple_model(rng, kind, accel, telemetry);
                        let mut r = spec(
                            None,
                            accel,
                            s + len,
                            (s + len).min(h.t0_ms + h.negative_ms),
                            vec![(tenant.clone(), format!("nb-{j:02}"), devices)],
                        );
                        r.name = format!("{name}-{j:02}");
                        r.start_ms = s;
                        assemble(r, m)
                    })
                    .collect()
            }
            Scenario::EverydayFleet => {
                let total: u32 = OPENB_GPU_COUNTS.iter().map(|(_, c)| c).sum();
                (0..h.fleet_pods)
                    .map(|j| {
                        let tenant = format!("team-{index:03}-{}", j % 6);
                        let mut u = rng.uniform() * total as f64;
                        let mut devices = 1usize;
                        for (n, c) in OPENB_GPU_COUNTS {
                            if u < c as f64 {
                                devices = n as usize;
                                break;
                            }
                            u -= c as f64;
                        }
                        let share = if devices == 1 {
                            inverse_cdf(&OPENB_GPU_MILLI, rng.uniform()) / 1000.0
                        } else {
                            1.0
                        };
                        let accel = *pick(rng, &[&V100, &T4, &A10, &V100]);
                        let s = minute(h.t0_ms + (rng.uniform() * h.negative_ms as f64) as i64);
                        let life_h = inverse_cdf_log(&OPENB_LIFETIME_H, rng.uniform());
                        let len = ((life_h * HOUR_MS as f64) as i64).max(MINUTE_MS);
                        let u = rng.uniform();
                        let kind = if u < 0.5 {
                            Kind::Bursty {
                                busy: between(rng, 0.05, 0.5),
                                tensor_busy: between(rng, 0.05, 0.4),
                                burst_ms: 5 * MINUTE_MS,
                            }
                        } else if u < 0.8 {
                            Kind::Steady {
                                tensor: between(rng, 0.15, 0.5),
                            }
                        } else {
                            Kind::Idle
                        };
                        let pod_telemetry = Telemetry::draw(rng);
                        let m = Arc::new(Model {
                            share,
                            ..(*simple_model(rng, kind, accel, pod_telemetry)).clone()
                        });
                        let mut r = spec(
                            None,
                            accel,
                            s + len,
                            (s + len).min(h.t0_ms + h.negative_ms),
                            vec![(tenant, format!("pod-{j:04}"), devices)],
                        );
                        r.name = format!("{name}-{j:04}");
                        r.start_ms = s;
                        r.share = share;
                        r.telemetry = pod_telemetry;
                        assemble(r, m)
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests;
