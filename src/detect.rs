//! Detection: activity features of one job over recent event time, and its training-likeness score.
//!
//! Features come from compact per-job panes ([`DetectPane`], one per detection slide) and from the
//! recent activity of each device of the job. Each feature scores 0..1 on a configured ramp; the
//! score is the mean of the features available. A job can only be suspected when it is a large gang
//! (`accelerators`), has run long enough (`duration`) and reports some activity signal: a score alone
//! never accuses a customer. Pure code: no I/O, no clock.

use serde::{Deserialize, Serialize};
use statrs::statistics::{Data, Median};

use crate::config::{DetectionConfig, Ramp};
use crate::decode::Activity;

/// Activity signals, best first: tensor-pipe activity separates training from other busy work best;
/// GPU_UTIL is near 100% for almost any busy job and is the weakest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    TensorActive,
    SmActive,
    GpuUtil,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::TensorActive, Signal::SmActive, Signal::GpuUtil];

    pub fn name(self) -> &'static str {
        match self {
            Signal::TensorActive => "tensor_active",
            Signal::SmActive => "sm_active",
            Signal::GpuUtil => "gpu_util",
        }
    }

    /// The best signal a sample carries, with its value.
    pub fn best(a: &Activity) -> Option<(Signal, f64)> {
        a.tensor_active
            .map(|v| (Signal::TensorActive, v))
            .or(a.sm_active.map(|v| (Signal::SmActive, v)))
            .or(a.gpu_util.map(|v| (Signal::GpuUtil, v)))
    }
}

/// Accelerator-time-weighted activity sum of one signal.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Moments {
    /// Accelerator-seconds that reported this signal.
    pub weight: f32,
    /// Sum of activity * accelerator-seconds.
    pub sum: f32,
}

/// One detection slide of one job.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct DetectPane {
    /// Accelerators active in this slide (each device counted once per slide it covers).
    pub accelerators: f32,
    /// Per signal, indexed like [`Signal::ALL`].
    pub activity: [Moments; 3],
}

/// The features of one job at one evaluation time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    /// Median concurrent accelerators over the observed part of the window.
    pub accelerators: f64,
    /// Event time since the job's first sample, seconds.
    pub duration_s: f64,
    /// The best signal seen in the window.
    pub signal: Option<Signal>,
    /// Mean activity of that signal over the window.
    pub activity: Option<f64>,
    /// MAD / median of per-slide activity (needs 3 slides).
    pub temporal_variation: Option<f64>,
    /// MAD / median of per-device activity (needs 3 devices).
    pub rank_spread: Option<f64>,
    /// Devices that reported recently.
    pub devices: usize,
}

/// Computes features from the panes of the observed span, oldest first, and recent device activity.
pub fn features(panes: &[DetectPane], device_activity: &[f64], duration_s: f64) -> Features {
    let mut f = Features {
        duration_s,
        devices: device_activity.len(),
        ..Features::default()
    };
    if panes.is_empty() {
        return f;
    }
    f.accelerators = median(panes.iter().map(|p| p.accelerators as f64).collect());
    let chosen = Signal::ALL
        .iter()
        .enumerate()
        .find(|(i, _)| panes.iter().any(|p| p.activity[*i].weight > 0.0));
    if let Some((i, signal)) = chosen {
        let (w, s) = panes.iter().fold((0.0f64, 0.0f64), |(w, s), p| {
            (
                w + p.activity[i].weight as f64,
                s + p.activity[i].sum as f64,
            )
        });
        f.signal = Some(*signal);
        f.activity = Some(s / w);
        let per_pane: Vec<f64> = panes
            .iter()
            .filter(|p| p.activity[i].weight > 0.0)
            .map(|p| (p.activity[i].sum / p.activity[i].weight) as f64)
            .collect();
        f.temporal_variation = relative_mad(per_pane);
    }
    f.rank_spread = relative_mad(device_activity.to_vec());
    f
}

fn median(v: Vec<f64>) -> f64 {
    Data::new(v).median()
}

/// Median absolute deviation relative to the median: a spread robust to checkpoint dips and a few
/// stragglers. `None` with fewer than 3 values; 1.0 (maximal) when the median is zero.
fn relative_mad(v: Vec<f64>) -> Option<f64> {
    if v.len() < 3 {
        return None;
    }
    let m = median(v.clone());
    let mad = median(v.into_iter().map(|x| (x - m).abs()).collect());
    Some(if m > 0.0 { mad / m } else { 1.0 })
}

/// One feature's contribution, as shown in alert evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureScore {
    pub name: &'static str,
    pub value: Option<f64>,
    /// Value scoring 0 and value scoring 1.
    pub low: f64,
    pub high: f64,
    pub score: Option<f64>,
    /// The value reached `high`.
    pub fired: bool,
    /// The job cannot be suspected unless this feature fired.
    pub required: bool,
}

/// The outcome of scoring one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub score: f64,
    /// The activity signal the `activity` feature was computed from.
    pub signal: Option<Signal>,
    pub features: Vec<FeatureScore>,
    /// Every required feature fired.
    pub gates_passed: bool,
}

fn ramp(name: &'static str, value: Option<f64>, r: Ramp, required: bool) -> FeatureScore {
    let score = value.map(|v| ((v - r.low) / (r.high - r.low)).clamp(0.0, 1.0));
    FeatureScore {
        name,
        value,
        low: r.low,
        high: r.high,
        score,
        fired: score == Some(1.0),
        required,
    }
}

/// Scores features against the configured ramps.
pub fn score(f: &Features, cfg: &DetectionConfig) -> Verdict {
    let activity_ramp = match f.signal {
        Some(Signal::TensorActive) | None => cfg.tensor_active,
        Some(Signal::SmActive) => cfg.sm_active,
        Some(Signal::GpuUtil) => cfg.gpu_util,
    };
    let features = vec![
        ramp("accelerators", Some(f.accelerators), cfg.accelerators, true),
        ramp("duration_seconds", Some(f.duration_s), cfg.duration, true),
        ramp("activity", f.activity, activity_ramp, true),
        ramp(
            "temporal_variation",
            f.temporal_variation,
            cfg.temporal_variation,
            false,
        ),
        ramp("rank_spread", f.rank_spread, cfg.rank_spread, false),
    ];
    let scored: Vec<f64> = features.iter().filter_map(|x| x.score).collect();
    let score = scored.iter().sum::<f64>() / scored.len() as f64;
    let gates_passed = features.iter().all(|x| !x.required || x.fired);
    Verdict {
        score,
        signal: f.signal,
        features,
        gates_passed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pane(accelerators: f32, signal: usize, activity: f32) -> DetectPane {
        let mut p = DetectPane {
            accelerators,
            ..DetectPane::default()
        };
        p.activity[signal] = Moments {
            weight: accelerators * 60.0,
            sum: activity * accelerators * 60.0,
        };
        p
    }

    #[test]
    fn steady_large_gang_scores_as_training() {
        let panes: Vec<_> = (0..60)
            .map(|i| pane(512.0, 0, if i % 20 == 0 { 0.1 } else { 0.45 }))
            .collect();
        let devices = vec![0.45; 512];
        let f = features(&panes, &devices, 7200.0);
        assert_eq!(f.accelerators, 512.0);
        assert_eq!(f.signal, Some(Signal::TensorActive));
        assert!(
            f.temporal_variation.unwrap() < 0.01,
            "checkpoint dips do not move the median"
        );
        let v = score(&f, &DetectionConfig::default());
        assert!(v.gates_passed);
        assert!(v.score > 0.95, "{v:?}");
    }

    #[test]
    fn bursty_serving_scores_low_even_when_large() {
        let panes: Vec<_> = (0..60)
            .map(|i| pane(256.0, 0, 0.02 + 0.3 * ((i % 7) as f32 / 7.0)))
            .collect();
        let devices: Vec<f64> = (0..256).map(|i| (i % 10) as f64 / 20.0).collect();
        let v = score(
            &features(&panes, &devices, 86_400.0),
            &DetectionConfig::default(),
        );
        assert!(v.score < 0.75, "{v:?}");
    }

    #[test]
    fn small_jobs_never_pass_the_gates() {
        let panes: Vec<_> = (0..60).map(|_| pane(8.0, 0, 0.6)).collect();
        let v = score(
            &features(&panes, &[0.6; 8], 86_400.0),
            &DetectionConfig::default(),
        );
        assert!(!v.gates_passed);
        assert!(!v.features[0].fired);
    }

    #[test]
    fn without_any_activity_signal_a_job_cannot_be_suspected() {
        let panes: Vec<_> = (0..60)
            .map(|_| DetectPane {
                accelerators: 512.0,
                ..Default::default()
            })
            .collect();
        let f = features(&panes, &[], 86_400.0);
        assert_eq!(f.signal, None);
        let v = score(&f, &DetectionConfig::default());
        assert!(!v.gates_passed);
    }

    #[test]
    fn weaker_signals_use_their_own_ramps() {
        let panes: Vec<_> = (0..60).map(|_| pane(128.0, 2, 0.97)).collect();
        let f = features(&panes, &[0.97; 16], 7200.0);
        assert_eq!(f.signal, Some(Signal::GpuUtil));
        let v = score(&f, &DetectionConfig::default());
        assert!(v.features[2].fired);
    }
}
