//! Telemetry models: what one accelerator of a scenario workload reports at each sample, and the
//! true model-FLOP utilisation behind it.
//!
//! A [`Model`] has a deterministic *truth* (true MFU as a function of time since start, the same
//! for every rank of a gang) and produces *observations* of it: DCGM-style fractions with a per-run
//! bias, a per-device factor and per-sample noise, masked down to the fields the fleet exports
//! ([`Telemetry`]). The estimate error the evaluation reports is the gap between the two.

use serde::Serialize;

use super::calibration::{
    inverse_cdf, quantile_points, ACME_BUSY_FB_USED, ACME_BUSY_GPU_UTIL, ACME_BUSY_POWER_OF_TDP,
    STRAGGLER_SLOWDOWN,
};
use crate::decode::{Activity, UsageSample};
use crate::sim::{SplitMix64, Workload};

const DAY_MS: i64 = 86_400_000;

/// Which DCGM fields a fleet exports (DOMAIN.md: dcgm-exporter's defaults carry tensor, engine and
/// DRAM activity but not SM activity; many fleets export only GPU_UTIL and memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Telemetry {
    /// Tensor, SM and DRAM activity, GPU_UTIL, power, memory, NVLink.
    Profiling,
    /// dcgm-exporter defaults: tensor and DRAM activity, GPU_UTIL, power, memory.
    DcgmDefault,
    /// GPU_UTIL, power and memory only.
    UtilOnly,
    /// Allocation records only (GPUs held per interval), no device telemetry.
    Allocation,
}

impl Telemetry {
    pub fn name(self) -> &'static str {
        match self {
            Telemetry::Profiling => "profiling",
            Telemetry::DcgmDefault => "dcgm-default",
            Telemetry::UtilOnly => "util-only",
            Telemetry::Allocation => "allocation",
        }
    }

    /// Draws a fleet's telemetry: 30 % full profiling, 50 % dcgm-exporter defaults, 20 % GPU_UTIL
    /// only (an assumption; DOMAIN.md only says "many fleets").
    pub fn draw(rng: &mut SplitMix64) -> Telemetry {
        let u = rng.uniform();
        if u < 0.3 {
            Telemetry::Profiling
        } else if u < 0.8 {
            Telemetry::DcgmDefault
        } else {
            Telemetry::UtilOnly
        }
    }
}

/// A training gang's dynamics.
#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    /// Steady-state true model-FLOP utilisation of the run (after stragglers and duty cycling).
    pub mfu: f64,
    /// Observed tensor activity over true MFU (per-run bias, see calibration::TENSOR_OVER_MFU).
    pub tensor_over_mfu: f64,
    /// SM activity over tensor activity (sets SM_ACTIVE in AcmeTrace's busy range).
    pub sm_over_tensor: f64,
    /// Relative spread of per-rank activity (Alibaba mini-batch CV).
    pub rank_cv: f64,
    /// Index of a straggler node, whose ranks compute while the others wait at the all-reduce.
    pub straggler_node: Option<usize>,
    pub checkpoint_every_ms: i64,
    pub dip_ms: i64,
    /// MFU during a checkpoint dip, relative to `mfu`.
    pub dip_level: f64,
    /// RL: (period, share of the period spent generating rollouts, MFU while generating).
    pub rollout: Option<(i64, f64, f64)>,
    /// Power, memory and GPU_UTIL draw quantile level of this run (0..1).
    pub level: f64,
}

impl Training {
    /// Whether `since` (ms after the start) falls in a checkpoint dip: the first checkpoint is
    /// written one period after the start.
    pub fn in_dip(&self, since: i64) -> bool {
        since > self.checkpoint_every_ms && since.rem_euclid(self.checkpoint_every_ms) < self.dip_ms
    }
}

/// What a workload's devices do.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Training(Training),
    /// Online inference: each replica (node) busy with a probability following a daily curve.
    Serving {
        busy_min: f64,
        busy_max: f64,
        /// Tensor activity of a busy replica.
        tensor_busy: f64,
        /// Offset of the daily curve (time zones of the users).
        phase_ms: i64,
    },
    /// Offline batch inference: independent replicas at high, steady activity, memory-bound decode.
    BatchInference {
        tensor: f64,
        dram: f64,
        replica_cv: f64,
    },
    /// Scientific simulation: FP64 on the CUDA cores (high SM activity, little tensor activity),
    /// synchronised output steps.
    Hpc {
        sm: f64,
        tensor: f64,
        output_every_ms: i64,
        output_ms: i64,
    },
    /// Mining-like constant integer load: flat, no tensor activity, power capped.
    Mining {
        sm: f64,
        power_cap: f64,
    },
    /// Rendering / transcoding: independent frames, moderate SM, little tensor activity.
    Render {
        sm: f64,
    },
    /// Interactive notebooks and small everyday jobs: busy a share of the time, in bursts.
    Bursty {
        busy: f64,
        tensor_busy: f64,
        burst_ms: i64,
    },
    /// Short compute-bound jobs (evaluation runs, small fine-tunes) at steady activity.
    Steady {
        tensor: f64,
    },
    /// Reserved and unused.
    Idle,
}

/// The model behind one simulated workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub kind: Kind,
    pub telemetry: Telemetry,
    /// Peak dense FLOP/s of one device.
    pub peak_flops: f64,
    pub tdp_w: f64,
    pub memory_bytes: f64,
    /// GPUs each sample of a device stands for (fractional GPU sharing), normally 1.
    pub share: f64,
    /// Offsets from the workload start during which it reports nothing: failures with restarts,
    /// pauses. Sorted, disjoint, `(from, len)`.
    pub gaps: Vec<(i64, i64)>,
    /// Seed of the per-device factors.
    pub seed: u64,
}

/// SplitMix64 output for a key: a cheap, stateless per-device draw.
fn hash_normal(seed: u64, key: u64) -> f64 {
    SplitMix64::new(seed ^ key.wrapping_mul(0x2545_F491_4F6C_DD1D)).normal()
}

fn hash_uniform(seed: u64, key: u64) -> f64 {
    SplitMix64::new(seed ^ key.wrapping_mul(0x2545_F491_4F6C_DD1D)).uniform()
}

impl Model {
    /// Whether `since` (ms after the start) falls in a gap.
    pub fn in_gap(&self, since: i64) -> bool {
        // Gaps are sorted and disjoint: only the last one starting before `since` can hold it.
        let i = self.gaps.partition_point(|(from, _)| *from < since);
        i > 0 && since <= self.gaps[i - 1].0 + self.gaps[i - 1].1
    }

    /// True model-FLOP utilisation of every device at `since` ms after the start (0 in a gap and
    /// for workloads that do no training).
    pub fn true_mfu(&self, since: i64) -> f64 {
        let Kind::Training(t) = &self.kind else {
            return 0.0;
        };
        if self.in_gap(since) {
            return 0.0;
        }
        if t.in_dip(since) {
            return t.mfu * t.dip_level;
        }
        if let Some((period, share, rollout_mfu)) = t.rollout {
            if (since.rem_euclid(period) as f64) < share * period as f64 {
                return rollout_mfu;
            }
        }
        t.mfu
    }

    /// One device's sample ending at `t_ms`.
    pub fn sample(
        &self,
        w: &Workload,
        t_ms: i64,
        node_index: usize,
        node: &str,
        gpu: usize,
        rng: &mut SplitMix64,
    ) -> UsageSample {
        let since = t_ms - w.start_ms;
        let device = (node_index * w.gpus_per_node + gpu) as u64;
        let mut s = UsageSample::new(t_ms, w.tenant.clone(), self.share, w.interval_s as f64)
            .job(w.job.clone())
            .accelerator(w.accelerator.clone());
        if self.telemetry == Telemetry::Allocation {
            return s;
        }
        s = s.device(node.to_string(), gpu.to_string());
        let o = self.observe(since, t_ms, node_index as u64, device, rng);
        let power = |frac: f64| (self.tdp_w * frac).max(0.09 * self.tdp_w);
        s.activity = Activity {
            tensor_active: match self.telemetry {
                Telemetry::Profiling | Telemetry::DcgmDefault => Some(o.tensor),
                _ => None,
            },
            sm_active: (self.telemetry == Telemetry::Profiling).then_some(o.sm),
            gpu_util: Some(o.util),
            dram_active: match self.telemetry {
                Telemetry::Profiling | Telemetry::DcgmDefault => Some(o.dram),
                _ => None,
            },
        };
        s.power_w = Some(power(o.power_frac));
        s.fb_used_bytes = Some(o.fb_frac * self.memory_bytes);
        if self.telemetry == Telemetry::Profiling {
            let bytes = o.nvlink_gbs * 1e9 * w.interval_s as f64;
            s.nvlink_tx_bytes = Some(bytes.round());
            s.nvlink_rx_bytes = Some(bytes.round());
        }
        s
    }

    fn observe(
        &self,
        since: i64,
        t_ms: i64,
        node: u64,
        device: u64,
        rng: &mut SplitMix64,
    ) -> Observation {
        let clamp = |v: f64| v.clamp(0.0, 1.0);
        let from_quantiles = |q: &[f64; 5], u: f64| inverse_cdf(&quantile_points(q), u);
        match &self.kind {
            Kind::Training(t) => {
                let mfu = self.true_mfu(since);
                let in_dip = t.in_dip(since);
                // Per-rank factor: fixed per device, plus the straggler node, which computes while
                // the others wait.
                let mut rank = 1.0 + t.rank_cv * hash_normal(self.seed, device);
                if t.straggler_node == Some(node as usize) {
                    rank *= STRAGGLER_SLOWDOWN;
                }
                let noise = 1.0 + 0.03 * rng.normal();
                let tensor = clamp(mfu * t.tensor_over_mfu * rank * noise);
                let busy = !in_dip;
                let util = if busy {
                    from_quantiles(&ACME_BUSY_GPU_UTIL, 0.2 + 0.8 * rng.uniform())
                } else {
                    0.25 + 0.2 * rng.uniform()
                };
                Observation {
                    tensor,
                    sm: clamp(tensor * t.sm_over_tensor).min(0.97),
                    util: clamp(util),
                    dram: clamp(tensor * 0.9 + 0.05 * rng.uniform()),
                    power_frac: if busy {
                        from_quantiles(&ACME_BUSY_POWER_OF_TDP, t.level)
                            * (0.97 + 0.06 * rng.uniform())
                    } else {
                        0.35
                    },
                    fb_frac: from_quantiles(&ACME_BUSY_FB_USED, t.level),
                    nvlink_gbs: if busy { 120.0 * tensor / 0.45 } else { 2.0 },
                }
            }
            Kind::Serving {
                busy_min,
                busy_max,
                tensor_busy,
                phase_ms,
            } => {
                let phase = ((t_ms + phase_ms).rem_euclid(DAY_MS) as f64 / DAY_MS as f64 - 0.25)
                    * std::f64::consts::TAU;
                let p = busy_min + (busy_max - busy_min) * 0.5 * (1.0 + phase.sin());
                // A replica is a tensor-parallel node: its devices are busy together.
                let busy_share = if rng.uniform() < p {
                    0.3 + 0.7 * rng.uniform()
                } else {
                    0.02 * rng.uniform()
                };
                let tensor = clamp(tensor_busy * busy_share * (1.0 + 0.2 * rng.normal()));
                Observation {
                    tensor,
                    sm: clamp(busy_share * 0.7),
                    util: clamp(busy_share * 1.05),
                    dram: clamp(busy_share * 0.55),
                    power_frac: 0.2 + 0.6 * busy_share,
                    fb_frac: 0.85,
                    nvlink_gbs: 5.0 * busy_share,
                }
            }
            Kind::BatchInference {
                tensor,
                dram,
                replica_cv,
            } => {
                // Replicas differ by model shard, batch mix and sequence lengths; each pauses on
                // its own to load the next shard of input (about 3 min every 1-3 h).
                let replica = (1.0 + replica_cv * hash_normal(self.seed, node)).max(0.2);
                let period = 3_600_000 + (hash_uniform(self.seed ^ 1, node) * 7_200_000.0) as i64;
                let offset = (hash_uniform(self.seed ^ 2, node) * period as f64) as i64;
                let loading = (since + offset).rem_euclid(period) < 180_000;
                let level = if loading { 0.05 } else { 1.0 };
                let noise = 1.0 + 0.08 * rng.normal();
                let tensor = clamp(tensor * replica * level * noise);
                Observation {
                    tensor,
                    sm: clamp((0.55 + 0.35 * replica) * level),
                    util: if loading {
                        0.2
                    } else {
                        from_quantiles(&ACME_BUSY_GPU_UTIL, 0.2 + 0.8 * rng.uniform())
                    },
                    dram: clamp(dram * level * (1.0 + 0.05 * rng.normal())),
                    power_frac: if loading { 0.3 } else { 0.7 + 0.2 * tensor },
                    fb_frac: 0.9,
                    nvlink_gbs: 10.0 * level,
                }
            }
            Kind::Hpc {
                sm,
                tensor,
                output_every_ms,
                output_ms,
            } => {
                let output = since.rem_euclid(*output_every_ms) < *output_ms;
                let level = if output { 0.08 } else { 1.0 };
                let rank = 1.0 + 0.02 * hash_normal(self.seed, device);
                let noise = 1.0 + 0.02 * rng.normal();
                Observation {
                    tensor: clamp(tensor * level * noise),
                    sm: clamp(sm * level * rank * noise),
                    util: if output { 0.3 } else { 0.99 },
                    dram: clamp(0.55 * level * rank),
                    power_frac: if output { 0.3 } else { 0.85 },
                    fb_frac: 0.7,
                    nvlink_gbs: 40.0 * level,
                }
            }
            Kind::Mining { sm, power_cap } => Observation {
                tensor: 0.0,
                sm: clamp(sm * (1.0 + 0.005 * rng.normal())),
                util: 1.0,
                dram: clamp(0.85 + 0.01 * rng.normal()),
                power_frac: *power_cap,
                fb_frac: 0.06,
                nvlink_gbs: 0.0,
            },
            Kind::Render { sm } => {
                let frame = rng.uniform();
                let busy = if frame < 0.15 { 0.3 } else { 1.0 };
                Observation {
                    tensor: clamp(0.03 * busy * rng.uniform()),
                    sm: clamp(sm * busy * (1.0 + 0.15 * rng.normal())),
                    util: clamp(0.95 * busy),
                    dram: clamp(0.35 * busy),
                    power_frac: 0.3 + 0.5 * busy * sm,
                    fb_frac: 0.4,
                    nvlink_gbs: 0.0,
                }
            }
            Kind::Bursty {
                busy,
                tensor_busy,
                burst_ms,
            } => {
                // Bursts are slots of `burst_ms`; each is busy with probability `busy`.
                let slot = since.div_euclid(*burst_ms) as u64;
                let on = hash_uniform(self.seed, slot.wrapping_mul(131) ^ device) < *busy;
                let level = if on { 0.5 + 0.5 * rng.uniform() } else { 0.0 };
                Observation {
                    tensor: clamp(tensor_busy * level),
                    sm: clamp(0.8 * level),
                    util: clamp(level * 1.1),
                    dram: clamp(0.4 * level),
                    power_frac: 0.15 + 0.6 * level,
                    fb_frac: 0.3,
                    nvlink_gbs: 0.0,
                }
            }
            Kind::Steady { tensor } => {
                let noise = 1.0 + 0.05 * rng.normal();
                Observation {
                    tensor: clamp(tensor * noise),
                    sm: clamp(tensor * 1.6 * noise),
                    util: from_quantiles(&ACME_BUSY_GPU_UTIL, rng.uniform()),
                    dram: clamp(tensor * 0.8),
                    power_frac: 0.5 + 0.6 * tensor,
                    fb_frac: 0.5,
                    nvlink_gbs: 0.0,
                }
            }
            Kind::Idle => Observation {
                tensor: 0.0,
                sm: 0.0,
                util: 0.0,
                dram: 0.0,
                power_frac: 0.09,
                fb_frac: 0.006,
                nvlink_gbs: 0.0,
            },
        }
    }
}

/// One device's observed fractions at one sample, before masking to the exported fields.
struct Observation {
    tensor: f64,
    sm: f64,
    util: f64,
    dram: f64,
    power_frac: f64,
    fb_frac: f64,
    nvlink_gbs: f64,
}
