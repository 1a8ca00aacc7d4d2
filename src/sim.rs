//! Fleet simulator: workloads that produce realistic per-accelerator telemetry, in event-time order.
//!
//! Each [`Workload`] is a gang of devices on named nodes with an activity profile. The profiles follow
//! what real clusters show (DOMAIN.md): large pretraining keeps every rank busy with low spread and
//! dips for checkpoints; inference serving is mostly idle and follows a daily request curve; small
//! fine-tuning is busy on one node; reserved capacity sits idle. Deterministic for a given seed.

use std::sync::Arc;

use crate::decode::{Activity, UsageSample};
use crate::scenario::model::Model;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// How a workload's devices behave.
#[derive(Debug, Clone, PartialEq)]
pub enum Profile {
    /// Data/tensor-parallel training: tensor activity near `tensor` on every rank, a checkpoint dip
    /// of `dip_ms` every `checkpoint_every_ms`, and optionally one outage (failure and restart).
    Training {
        tensor: f64,
        checkpoint_every_ms: i64,
        dip_ms: i64,
        outage: Option<(i64, i64)>,
    },
    /// Request serving: each replica is busy with a probability following a daily curve between
    /// `busy_min` and `busy_max`; when busy its activity is uniform in 0.1..0.6.
    Serving { busy_min: f64, busy_max: f64 },
    /// Reserved but unused.
    Idle,
    /// A scenario workload (see [`crate::scenario`]): telemetry observed from a true utilisation
    /// curve through per-run bias and noise, masked to the fields the fleet exports.
    Modelled(Arc<Model>),
}

/// One simulated job.
#[derive(Debug, Clone)]
pub struct Workload {
    pub tenant: String,
    pub job: String,
    pub accelerator: String,
    pub nodes: Vec<String>,
    pub gpus_per_node: usize,
    pub start_ms: i64,
    pub end_ms: i64,
    pub interval_s: u32,
    pub profile: Profile,
}

impl Workload {
    pub fn devices(&self) -> usize {
        self.nodes.len() * self.gpus_per_node
    }

    /// Whether the workload reports a sample ending at `t`.
    pub fn active_at(&self, t: i64) -> bool {
        if t <= self.start_ms || t > self.end_ms {
            return false;
        }
        match self.profile {
            Profile::Training {
                outage: Some((from, len)),
                ..
            } => {
                let o = self.start_ms + from;
                !(t > o && t <= o + len)
            }
            Profile::Modelled(ref m) => !m.in_gap(t - self.start_ms),
            _ => true,
        }
    }
}

/// A set of workloads sampled on a common clock.
pub struct Fleet {
    pub workloads: Vec<Workload>,
    rng: SplitMix64,
}

/// SplitMix64: a tiny generator with the same output on every platform and version, so simulated
/// traces (and the golden files made from them) are reproducible.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

fn nodes(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

impl Fleet {
    pub fn new(workloads: Vec<Workload>, seed: u64) -> Fleet {
        Fleet {
            workloads,
            rng: SplitMix64::new(seed),
        }
    }

    /// The demo fleet over `[start, start + hours)`: a 512-GPU H100 pretraining run from hour 1 with
    /// one failure and restart, a 96-GPU inference fleet, an 8-GPU fine-tuning job and 32 idle GPUs.
    pub fn demo(start_ms: i64, hours: u32, seed: u64) -> Fleet {
        let end = start_ms + hours as i64 * HOUR_MS;
        let workloads = vec![
            Workload {
                tenant: "frontier-labs".into(),
                job: "pretrain-70b".into(),
                accelerator: "NVIDIA H100 80GB HBM3".into(),
                nodes: nodes("h100-a", 64),
                gpus_per_node: 8,
                start_ms: start_ms + HOUR_MS,
                end_ms: end,
                interval_s: 60,
                profile: Profile::Training {
                    tensor: 0.42,
                    checkpoint_every_ms: 2 * HOUR_MS,
                    dip_ms: 3 * 60_000,
                    outage: Some((20 * HOUR_MS, 25 * 60_000)),
                },
            },
            Workload {
                tenant: "chatco".into(),
                job: "llm-serving".into(),
                accelerator: "NVIDIA H100 80GB HBM3".into(),
                nodes: nodes("h100-b", 12),
                gpus_per_node: 8,
                start_ms,
                end_ms: end,
                interval_s: 60,
                profile: Profile::Serving {
                    busy_min: 0.03,
                    busy_max: 0.55,
                },
            },
            Workload {
                tenant: "biotech-co".into(),
                job: "finetune-7b".into(),
                accelerator: "NVIDIA A100-SXM4-80GB".into(),
                nodes: nodes("a100-c", 1),
                gpus_per_node: 8,
                start_ms: start_ms + 3 * HOUR_MS,
                end_ms: (start_ms + 7 * HOUR_MS).min(end),
                interval_s: 60,
                profile: Profile::Training {
                    tensor: 0.5,
                    checkpoint_every_ms: HOUR_MS,
                    dip_ms: 60_000,
                    outage: None,
                },
            },
            Workload {
                tenant: "reserved-co".into(),
                job: "capacity-hold".into(),
                accelerator: "NVIDIA H100 80GB HBM3".into(),
                nodes: nodes("h100-d", 4),
                gpus_per_node: 8,
                start_ms,
                end_ms: end,
                interval_s: 60,
                profile: Profile::Idle,
            },
        ];
        Fleet::new(workloads, seed)
    }

    /// Appends every sample whose interval ends at `t_ms` (workloads report on their interval grid).
    pub fn samples_at(&mut self, t_ms: i64, out: &mut Vec<UsageSample>) {
        for w in &self.workloads {
            let step = w.interval_s as i64 * 1000;
            if t_ms.rem_euclid(step) != 0 || !w.active_at(t_ms) {
                continue;
            }
            let since = t_ms - w.start_ms;
            for (n, node) in w.nodes.iter().enumerate() {
                // A per-node factor models slower hosts: ranks of one job still move together.
                let node_factor = 1.0 + 0.02 * (((n * 7919) % 13) as f64 / 13.0 - 0.5);
                for g in 0..w.gpus_per_node {
                    if let Profile::Modelled(m) = &w.profile {
                        out.push(m.sample(w, t_ms, n, node, g, &mut self.rng));
                        continue;
                    }
                    let activity = match &w.profile {
                        Profile::Training {
                            tensor,
                            checkpoint_every_ms,
                            dip_ms,
                            ..
                        } => {
                            let in_dip = since % checkpoint_every_ms < *dip_ms;
                            let base = if in_dip { 0.03 } else { *tensor * node_factor };
                            let t = (base * (1.0 + 0.03 * self.rng.normal())).clamp(0.0, 1.0);
                            Activity {
                                tensor_active: Some(t),
                                sm_active: Some((t * 1.7).min(0.95)),
                                gpu_util: Some(if in_dip { 0.35 } else { 0.99 }),
                                dram_active: Some((t * 0.8).min(1.0)),
                            }
                        }
                        Profile::Serving { busy_min, busy_max } => {
                            let phase = ((t_ms.rem_euclid(DAY_MS)) as f64 / DAY_MS as f64 - 0.25)
                                * std::f64::consts::TAU;
                            let p = busy_min + (busy_max - busy_min) * 0.5 * (1.0 + phase.sin());
                            let busy = self.rng.uniform() < p;
                            let t = if busy {
                                0.1 + 0.5 * self.rng.uniform()
                            } else {
                                0.0
                            };
                            Activity {
                                tensor_active: Some(t),
                                sm_active: Some((t * 1.5).min(1.0)),
                                gpu_util: Some(if busy { 0.9 } else { 0.0 }),
                                dram_active: Some(t * 0.6),
                            }
                        }
                        Profile::Idle | Profile::Modelled(_) => Activity {
                            tensor_active: Some(0.0),
                            sm_active: Some(0.0),
                            gpu_util: Some(0.0),
                            dram_active: Some(0.0),
                        },
                    };
                    let busy = activity.gpu_util.unwrap_or(0.0);
                    let mut s = UsageSample::new(t_ms, w.tenant.clone(), 1.0, w.interval_s as f64)
                        .job(w.job.clone())
                        .device(node.clone(), g.to_string())
                        .accelerator(w.accelerator.clone());
                    s.activity = activity;
                    s.power_w = Some(
                        70.0 + 620.0 * busy * activity.tensor_active.unwrap_or(0.0).max(0.3 * busy),
                    );
                    s.fb_used_bytes = Some(if busy > 0.0 { 7.0e10 } else { 5.0e8 });
                    out.push(s);
                }
            }
        }
    }
}

/// Writes `hours` of the demo fleet, ending at `end_ms` (rounded down to the minute), as native
/// events, one JSON object per line, in time order; returns how many were written.
pub fn write_demo_ndjson(
    out: &mut (impl std::io::Write + ?Sized),
    hours: u32,
    seed: u64,
    end_ms: i64,
) -> std::io::Result<u64> {
    demo_samples(hours, seed, end_ms, |s| writeln!(out, "{}", s.to_json()))
}

/// Feeds `hours` of the demo fleet, ending at `end_ms` (rounded down to the minute), to `emit` in
/// time order; returns how many samples.
pub fn demo_samples<E>(
    hours: u32,
    seed: u64,
    end_ms: i64,
    mut emit: impl FnMut(&UsageSample) -> Result<(), E>,
) -> Result<u64, E> {
    const MINUTE_MS: i64 = 60_000;
    let end_ms = end_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
    let start_ms = end_ms - hours as i64 * HOUR_MS;
    let mut fleet = Fleet::demo(start_ms, hours, seed);
    let mut samples = Vec::new();
    let mut written = 0;
    let mut t = start_ms;
    while t <= end_ms {
        samples.clear();
        fleet.samples_at(t, &mut samples);
        for s in &samples {
            emit(s)?;
        }
        written += samples.len() as u64;
        t += MINUTE_MS;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_fleet_reports_every_device_once_per_interval() {
        let start = 1_714_521_600_000;
        let mut f = Fleet::demo(start, 4, 7);
        let mut out = Vec::new();
        f.samples_at(start + 2 * HOUR_MS, &mut out);
        // pretraining 512 + serving 96 + idle 32 (fine-tuning starts at hour 3)
        assert_eq!(out.len(), 512 + 96 + 32);
        out.clear();
        f.samples_at(start + 2 * HOUR_MS + 30_000, &mut out);
        assert!(out.is_empty(), "60 s interval grid");
    }

    #[test]
    fn training_outage_removes_samples() {
        let start = 1_714_521_600_000;
        let f = Fleet::demo(start, 30, 7);
        let w = &f.workloads[0];
        assert!(w.active_at(w.start_ms + 20 * HOUR_MS));
        assert!(!w.active_at(w.start_ms + 20 * HOUR_MS + 60_000));
        assert!(w.active_at(w.start_ms + 20 * HOUR_MS + 26 * 60_000));
    }
}
