//! The real traces through the pipeline: Helios accounting exactness and the openb fleet.
//!
//! Helios rows become one allocation sample per virtual cluster and minute (as
//! tests/helios_accounting.rs does); every tenant's lifetime and window totals are compared with
//! plain sums over the rows. openb pods become hourly allocation records (GPUs x share held, on
//! the clock hour, partial first and last hours), the way an allocation exporter such as OpenCost
//! reports them; what alerts the pipeline raises on this ordinary fleet is reported.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::EvalError;
use crate::config::Config;
use crate::decode::{DecodeLimits, UsageSample};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Shard};
use crate::traces::{read_helios, read_openb_pods, OpenbPod};

const BATCH: usize = 4096;
const HOUR_MS: i64 = 3_600_000;
/// openb times are seconds from the trace start; the trace is placed at 2023-01-01T00:00:00Z.
const OPENB_EPOCH_MS: i64 = 1_672_531_200_000;

/// Helios totals of one virtual cluster.
#[derive(Debug, Clone, Serialize)]
pub struct HeliosTenant {
    pub tenant: String,
    pub rows: usize,
    pub expected_gpu_seconds: u64,
    pub pipeline_gpu_seconds: f64,
    /// Every sliding window equals the plain sum over the rows it covers.
    pub windows_exact: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Helios {
    pub events: u64,
    pub tenants: Vec<HeliosTenant>,
    pub exact: bool,
    /// Distinct alerts (dedup keys) that fired, by name (allocation data carries no activity
    /// signal, so only compute alerts can fire).
    pub alerts: BTreeMap<&'static str, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Openb {
    pub pods: usize,
    pub events: u64,
    pub expected_gpu_hours: f64,
    pub pipeline_gpu_hours: f64,
    /// (scope, alert name) of every alert that fired, with how many records (re-sends included).
    pub alerts: Vec<(String, &'static str, usize)>,
    pub training_suspected: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RealTraces {
    pub helios: Option<Helios>,
    pub openb: Option<Openb>,
}

fn feed(p: &mut Pipeline, lines: &[String]) {
    p.process(
        &Shard::local(),
        lines.iter().map(|l| Some(l.as_bytes())),
        DecodeLimits::OPEN,
    );
}

fn helios(cfg: &Config, dir: &Path) -> Result<Option<Helios>, EvalError> {
    let dir = dir.join("helios-earth-vcs");
    if !dir.is_dir() {
        return Ok(None);
    }
    let vcs = match read_helios(&dir) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "helios trace skipped");
            return Ok(None);
        }
    };
    let events = crate::traces::helios_samples(&vcs);
    let mut p = Pipeline::new(cfg, Arc::new(Metrics::new()))?;
    let mut fired: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let mut note = |recs: Vec<crate::alert::AlertRecord>| {
        for a in recs {
            fired
                .entry(a.alertname.as_str())
                .or_default()
                .insert(a.dedup_key);
        }
    };
    for chunk in events.chunks(BATCH) {
        let lines: Vec<String> = chunk
            .iter()
            .map(|(ts, i, gpus)| {
                UsageSample::new(*ts, vcs[*i].0.clone(), *gpus as f64, 60.0).to_json()
            })
            .collect();
        feed(&mut p, &lines);
        note(p.drain_alerts());
    }
    p.finish();
    note(p.drain_alerts());
    let alerts = fired.into_iter().map(|(k, v)| (k, v.len())).collect();
    let latest = events.iter().map(|e| e.0).max().unwrap_or(0);
    let specs = cfg.validate()?.windows;
    let reports = p.tenant_reports();
    let tenants: Vec<HeliosTenant> = vcs
        .iter()
        .map(|(name, rows)| {
            let report = reports.iter().find(|t| &t.tenant == name);
            let expected: u64 = rows.iter().map(|r| r.gpus * 60).sum();
            let windows_exact = report.is_some_and(|t| {
                specs.iter().enumerate().all(|(i, w)| {
                    let end = w.end_after(latest);
                    let sum: u64 = rows
                        .iter()
                        .filter(|r| r.ts_ms >= end - w.width_ms() && r.ts_ms < end)
                        .map(|r| r.gpus * 60)
                        .sum();
                    t.windows.0.get(i).is_some_and(|(_, v)| *v == sum as f64)
                })
            });
            HeliosTenant {
                tenant: name.clone(),
                rows: rows.len(),
                expected_gpu_seconds: expected,
                pipeline_gpu_seconds: report.map_or(0.0, |t| t.accelerator_seconds),
                windows_exact,
            }
        })
        .collect();
    Ok(Some(Helios {
        events: events.len() as u64,
        exact: tenants
            .iter()
            .all(|t| t.windows_exact && t.pipeline_gpu_seconds == t.expected_gpu_seconds as f64),
        tenants,
        alerts,
    }))
}

/// The hourly allocation records of one pod: (end ms, seconds covered).
fn pod_records(p: &OpenbPod) -> impl Iterator<Item = (i64, f64)> + '_ {
    let start = OPENB_EPOCH_MS + p.scheduled_s * 1000;
    let end = OPENB_EPOCH_MS + p.deletion_s * 1000;
    let mut from = start;
    std::iter::from_fn(move || {
        if from >= end {
            return None;
        }
        let to = ((from.div_euclid(HOUR_MS) + 1) * HOUR_MS).min(end);
        let rec = (to, (to - from) as f64 / 1000.0);
        from = to;
        Some(rec)
    })
}

fn openb(cfg: &Config, dir: &Path) -> Result<Option<Openb>, EvalError> {
    let path = dir.join("alibaba-gpu-v2023-openb/openb_pod_list_default.csv");
    if !path.is_file() {
        return Ok(None);
    }
    let pods = match read_openb_pods(&path) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "openb trace skipped");
            return Ok(None);
        }
    };
    let tenant = |p: &OpenbPod| format!("openb-{}", p.qos);
    // Merge the pods' record streams in time order.
    let mut iters: Vec<_> = pods.iter().map(pod_records).collect();
    let mut heap = BinaryHeap::new();
    for (i, it) in iters.iter_mut().enumerate() {
        if let Some(r) = it.next() {
            heap.push(Reverse((r.0, i, r.1.to_bits())));
        }
    }
    let mut p = Pipeline::new(cfg, Arc::new(Metrics::new()))?;
    let mut alerts: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    let mut lines = Vec::with_capacity(BATCH);
    let mut events = 0u64;
    let mut note = |recs: Vec<crate::alert::AlertRecord>| {
        for a in recs {
            let who = match &a.job {
                Some(j) => format!("job {j} of {}", a.tenant),
                None => format!("tenant {}", a.tenant),
            };
            *alerts.entry((who, a.alertname.as_str())).or_default() += 1;
        }
    };
    while let Some(Reverse((ts, i, secs))) = heap.pop() {
        let pod = &pods[i];
        let s = UsageSample::new(ts, tenant(pod), pod.gpus(), f64::from_bits(secs))
            .job(pod.name.clone());
        lines.push(s.to_json());
        if let Some(r) = iters[i].next() {
            heap.push(Reverse((r.0, i, r.1.to_bits())));
        }
        if lines.len() == BATCH {
            feed(&mut p, &lines);
            events += lines.len() as u64;
            lines.clear();
            note(p.drain_alerts());
        }
    }
    feed(&mut p, &lines);
    events += lines.len() as u64;
    p.finish();
    note(p.drain_alerts());
    let expected: f64 = pods
        .iter()
        .map(|p| p.gpus() * (p.deletion_s - p.scheduled_s) as f64)
        .sum::<f64>()
        / 3600.0;
    let pipeline: f64 = p
        .tenant_reports()
        .iter()
        .map(|t| t.accelerator_seconds)
        .sum::<f64>()
        / 3600.0;
    Ok(Some(Openb {
        pods: pods.len(),
        events,
        expected_gpu_hours: expected,
        pipeline_gpu_hours: pipeline,
        training_suspected: alerts
            .iter()
            .filter(|((_, n), _)| *n == "TrainingSuspected")
            .count(),
        alerts: alerts.into_iter().map(|((w, n), c)| (w, n, c)).collect(),
    }))
}

/// Both real-trace checks over the data folder (each skipped when its files are missing).
pub fn evaluate(cfg: &Config, data: &Path) -> Result<RealTraces, EvalError> {
    Ok(RealTraces {
        helios: helios(cfg, data)?,
        openb: openb(cfg, data)?,
    })
}
