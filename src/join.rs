//! Joining metric-per-message telemetry into usage samples.
//!
//! Exporters such as dcgm-exporter publish one metric per message (through the Prometheus Kafka
//! adapter, the OpenTelemetry Collector or Vector): a GPU's tensor activity, SM activity,
//! utilisation, power and memory at one scrape arrive as separate readings. The join buffer
//! collects the readings of one device at one scrape time and emits them as one [`UsageSample`]:
//! one accelerator for one scrape interval, with every field that arrived.
//!
//! A scrape is complete when event time has moved `timeout` past it (the newest reading seen in
//! this buffer is later than the scrape by more than the timeout). Readings of a scrape already
//! emitted start a new entry that is emitted in its turn; the windows then drop it as a duplicate
//! of the first (same tenant, job, node, gpu and timestamp), so a straggler never counts twice.
//! The buffer is bounded: past `max_pending` scrapes the oldest are emitted early. It is part of
//! the engine's state, so it is checkpointed with the offsets that fed it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{Activity, RejectReason, Rejection, UsageSample};
use crate::labels::LabelMap;

/// The DCGM fields trainspotter reads, by their exporter names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    TensorActive,
    SmActive,
    GpuUtil,
    DramActive,
    PowerW,
    FbUsedBytes,
    NvlinkTxBytes,
    NvlinkRxBytes,
}

impl Field {
    /// The field a DCGM metric name carries, if trainspotter uses it.
    pub fn from_metric(name: &str) -> Option<Field> {
        Some(match name {
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE" => Field::TensorActive,
            "DCGM_FI_PROF_SM_ACTIVE" => Field::SmActive,
            "DCGM_FI_DEV_GPU_UTIL" => Field::GpuUtil,
            "DCGM_FI_PROF_DRAM_ACTIVE" => Field::DramActive,
            "DCGM_FI_DEV_POWER_USAGE" => Field::PowerW,
            "DCGM_FI_DEV_FB_USED" => Field::FbUsedBytes,
            "DCGM_FI_PROF_NVLINK_TX_BYTES" => Field::NvlinkTxBytes,
            "DCGM_FI_PROF_NVLINK_RX_BYTES" => Field::NvlinkRxBytes,
            _ => return None,
        })
    }

    /// The exported value in the unit of the usage sample: utilisation is exported in percent
    /// (0 to 100) and becomes a fraction; framebuffer use is exported in MiB and becomes bytes.
    /// `None` when the converted value is outside the field's range (the reading is dropped).
    pub fn normalise(self, exported: f64) -> Option<f64> {
        let v = match self {
            Field::GpuUtil => exported / 100.0,
            Field::FbUsedBytes => exported * 1_048_576.0,
            _ => exported,
        };
        let fraction = matches!(
            self,
            Field::TensorActive | Field::SmActive | Field::GpuUtil | Field::DramActive
        );
        let ok = v.is_finite() && v >= 0.0 && (!fraction || v <= 1.0);
        ok.then_some(v)
    }
}

/// The reading one exported value of `metric` makes, for the exporter formats: `Ok(None)` when
/// trainspotter does not use the metric, the value is NaN (no data at this scrape) or no tenant
/// label names the GPU's holder; a rejection when the value is outside the field's range.
pub fn reading<'a>(
    labels: &LabelMap,
    metric: &str,
    ts_ms: i64,
    exported: f64,
    label: impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<Reading>, Rejection> {
    let Some(field) = Field::from_metric(metric) else {
        return Ok(None);
    };
    if exported.is_nan() {
        return Ok(None);
    }
    let Some(value) = field.normalise(exported) else {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("{metric} = {exported} is outside its range"),
        ));
    };
    Ok(labels.device(label).map(|(device, accelerator)| Reading {
        device,
        accelerator,
        ts_ms,
        field,
        value,
    }))
}

/// Which device a reading is about, as the label mapping resolved it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Device {
    pub tenant: String,
    pub job: Option<String>,
    pub node: Option<String>,
    pub gpu: Option<String>,
}

/// One metric value of one device at one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: Device,
    pub accelerator: Option<String>,
    /// Scrape time, epoch milliseconds.
    pub ts_ms: i64,
    pub field: Field,
    /// Already normalised ([`Field::normalise`]).
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Partial {
    accelerator: Option<String>,
    tensor_active: Option<f64>,
    sm_active: Option<f64>,
    gpu_util: Option<f64>,
    dram_active: Option<f64>,
    power_w: Option<f64>,
    fb_used_bytes: Option<f64>,
    nvlink_tx_bytes: Option<f64>,
    nvlink_rx_bytes: Option<f64>,
}

/// Pending scrapes, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinBuffer {
    pending: BTreeMap<(i64, Device), Partial>,
    newest_ms: Option<i64>,
    /// Scrapes emitted before their timeout because the buffer was full.
    forced: u64,
}

/// How scrapes are completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinSettings {
    /// The exporter's scrape interval: the time one emitted sample covers.
    pub interval_ms: i64,
    /// A scrape is emitted once event time is this far past it.
    pub timeout_ms: i64,
    /// Most scrapes held at once.
    pub max_pending: usize,
}

impl JoinBuffer {
    /// Adds a reading; a later value of the same field of the same scrape replaces the earlier.
    pub fn add(&mut self, r: Reading) {
        self.newest_ms = Some(self.newest_ms.map_or(r.ts_ms, |n| n.max(r.ts_ms)));
        let p = self.pending.entry((r.ts_ms, r.device)).or_default();
        if r.accelerator.is_some() {
            p.accelerator = r.accelerator;
        }
        let slot = match r.field {
            Field::TensorActive => &mut p.tensor_active,
            Field::SmActive => &mut p.sm_active,
            Field::GpuUtil => &mut p.gpu_util,
            Field::DramActive => &mut p.dram_active,
            Field::PowerW => &mut p.power_w,
            Field::FbUsedBytes => &mut p.fb_used_bytes,
            Field::NvlinkTxBytes => &mut p.nvlink_tx_bytes,
            Field::NvlinkRxBytes => &mut p.nvlink_rx_bytes,
        };
        *slot = Some(r.value);
    }

    /// Emits, oldest first, every scrape that event time has moved `timeout_ms` past, and the
    /// oldest ones beyond `max_pending`.
    pub fn emit_ready(&mut self, s: JoinSettings, out: &mut Vec<UsageSample>) {
        let Some(newest) = self.newest_ms else {
            return;
        };
        let horizon = newest.saturating_sub(s.timeout_ms);
        while let Some(entry) = self.pending.first_entry() {
            let due = entry.key().0 < horizon;
            let full = self.pending.len() > s.max_pending;
            if !due && !full {
                break;
            }
            if !due {
                self.forced += 1;
            }
            let ((ts, device), p) = self.pending.pop_first().expect("an entry");
            out.push(sample(ts, device, p, s.interval_ms));
        }
    }

    /// Emits every pending scrape (end of a finite input).
    pub fn emit_all(&mut self, s: JoinSettings, out: &mut Vec<UsageSample>) {
        while let Some(((ts, device), p)) = self.pending.pop_first() {
            out.push(sample(ts, device, p, s.interval_ms));
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Scrapes emitted early because the buffer was full.
    pub fn forced(&self) -> u64 {
        self.forced
    }
}

fn sample(ts_ms: i64, d: Device, p: Partial, interval_ms: i64) -> UsageSample {
    UsageSample {
        ts_ms,
        tenant: d.tenant,
        job: d.job,
        node: d.node,
        gpu: d.gpu,
        accelerator: p.accelerator,
        gpus: 1.0,
        interval_s: interval_ms as f64 / 1000.0,
        activity: Activity {
            tensor_active: p.tensor_active,
            sm_active: p.sm_active,
            gpu_util: p.gpu_util,
            dram_active: p.dram_active,
        },
        power_w: p.power_w,
        fb_used_bytes: p.fb_used_bytes,
        nvlink_tx_bytes: p.nvlink_tx_bytes,
        nvlink_rx_bytes: p.nvlink_rx_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_714_564_830_000;
    const S: JoinSettings = JoinSettings {
        interval_ms: 30_000,
        timeout_ms: 60_000,
        max_pending: 1000,
    };

    fn reading(gpu: &str, ts_ms: i64, metric: &str, exported: f64) -> Reading {
        let field = Field::from_metric(metric).unwrap();
        Reading {
            device: Device {
                tenant: "tenant-a".into(),
                job: Some("trainer".into()),
                node: Some("node-17".into()),
                gpu: Some(gpu.into()),
            },
            accelerator: Some("NVIDIA H100 80GB HBM3".into()),
            ts_ms,
            field,
            value: field.normalise(exported).unwrap(),
        }
    }

    #[test]
    fn the_fields_of_one_scrape_become_one_sample_once_event_time_has_moved_past_it() {
        let mut b = JoinBuffer::default();
        let mut out = Vec::new();
        b.add(reading(
            "GPU-1",
            T0,
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
            0.45,
        ));
        b.add(reading("GPU-1", T0, "DCGM_FI_DEV_GPU_UTIL", 97.0));
        b.add(reading("GPU-1", T0, "DCGM_FI_DEV_FB_USED", 2.0));
        b.add(reading("GPU-2", T0, "DCGM_FI_DEV_POWER_USAGE", 650.5));
        b.emit_ready(S, &mut out);
        assert!(
            out.is_empty(),
            "too early: the scrape may still be incomplete"
        );
        b.add(reading("GPU-1", T0 + 90_000, "DCGM_FI_DEV_GPU_UTIL", 10.0));
        b.emit_ready(S, &mut out);
        assert_eq!(out.len(), 2, "both devices of the first scrape");
        let g1 = out
            .iter()
            .find(|s| s.gpu.as_deref() == Some("GPU-1"))
            .unwrap();
        assert_eq!((g1.gpus, g1.interval_s, g1.ts_ms), (1.0, 30.0, T0));
        assert_eq!(g1.activity.tensor_active, Some(0.45));
        assert_eq!(
            g1.activity.gpu_util,
            Some(0.97),
            "percent becomes a fraction"
        );
        assert_eq!(
            g1.fb_used_bytes,
            Some(2.0 * 1_048_576.0),
            "MiB become bytes"
        );
        assert_eq!(g1.tenant, "tenant-a");
        assert_eq!(b.pending(), 1);
        b.emit_all(S, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn out_of_range_values_are_dropped_and_unknown_metrics_ignored() {
        assert_eq!(Field::from_metric("DCGM_FI_DEV_SM_CLOCK"), None);
        assert_eq!(Field::GpuUtil.normalise(140.0), None);
        assert_eq!(Field::TensorActive.normalise(f64::NAN), None);
        assert_eq!(Field::PowerW.normalise(-1.0), None);
        assert_eq!(Field::PowerW.normalise(700.0), Some(700.0));
    }

    #[test]
    fn a_full_buffer_emits_its_oldest_scrapes_early_and_counts_them() {
        let mut b = JoinBuffer::default();
        let mut out = Vec::new();
        let small = JoinSettings {
            max_pending: 2,
            ..S
        };
        for i in 0..5 {
            b.add(reading(
                &format!("GPU-{i}"),
                T0,
                "DCGM_FI_DEV_GPU_UTIL",
                50.0,
            ));
        }
        b.emit_ready(small, &mut out);
        assert_eq!((out.len(), b.pending(), b.forced()), (3, 2, 3));
    }
}
