//! Detection: activity features of one job over recent event time, and its training-likeness score.
//!
//! Features come from compact per-job panes ([`DetectPane`], one per detection slide) and from
//! per-device statistics ([`DeviceStat`]). Each feature scores 0..1 on a configured ramp; the score
//! is the weighted mean of the features available. A job can only be suspected when it is a large
//! gang (`accelerators`), has run long enough (`duration`) and reports enough activity: a score alone
//! never accuses a customer. Pure code: no I/O, no clock.
//!
//! The features and what they separate:
//! - `activity`: mean activity of the best signal (tensor > SM > GPU_UTIL). Training keeps the
//!   tensor pipes busy; serving, notebooks and idle capacity do not; FP64 simulation and mining
//!   keep SMs busy without tensor work.
//! - `temporal_variation`: robust variation of the gang's activity over the window. Training is
//!   flat apart from short checkpoint dips, which the median ignores; serving follows requests.
//! - `rank_spread`: robust spread of activity across the devices. Ranks of a synchronous job wait
//!   for each other, so they read alike.
//! - `gang_synchrony`: how much of the devices' variation over time they share. Ranks of one
//!   training job stall and dip together (collectives, checkpoints); independent replicas of an
//!   inference fleet vary on their own, so the gang average is much smoother than each device.
//!   Computed as variance over time of the gang mean / mean variance over time of each device:
//!   near 1 for a gang in lockstep, near 1/N for N independent devices. A gang too steady for the
//!   ratio to mean anything (relative standard deviation below `synchrony_min_variation`) has no
//!   value, and the feature is left out rather than guessed.

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

impl DetectPane {
    /// Adds another job's pane of the same slide (for a group of jobs).
    pub fn add(&mut self, o: &DetectPane) {
        self.accelerators += o.accelerators;
        for (a, b) in self.activity.iter_mut().zip(&o.activity) {
            a.weight += b.weight;
            a.sum += b.sum;
        }
    }
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
    /// Variance over time of the gang mean / mean per-device variance (needs 3 slides, 2 devices
    /// and variation above the configured minimum).
    pub gang_synchrony: Option<f64>,
    /// Mean per-device standard deviation over time, relative to the mean activity.
    pub device_variation: Option<f64>,
    /// Devices that reported recently.
    pub devices: usize,
}

/// What detection keeps per device: smoothed activity of the job's best signal and its variance
/// over time (exponentially weighted over about one detection window).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceStat {
    pub activity: f64,
    pub variance: f64,
}

/// Computes features from the panes of the observed span, oldest first, and the devices that
/// reported recently. `min_variation`: see [`Features::gang_synchrony`].
pub fn features(
    panes: &[DetectPane],
    devices: &[DeviceStat],
    duration_s: f64,
    min_variation: f64,
) -> Features {
    let mut f = Features {
        duration_s,
        devices: devices.len(),
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
        f.temporal_variation = relative_mad(per_pane.clone());
        let mean = s / w;
        if !devices.is_empty() && mean > 0.0 {
            let device_var = devices.iter().map(|d| d.variance.max(0.0)).sum::<f64>()
                / devices.len() as f64;
            let variation = device_var.sqrt() / mean;
            f.device_variation = Some(variation);
            if per_pane.len() >= 3 && devices.len() >= 2 && variation >= min_variation {
                f.gang_synchrony = Some((population_variance(&per_pane) / device_var).min(1.0));
            }
        }
    }
    f.rank_spread = relative_mad(devices.iter().map(|d| d.activity).collect());
    f
}

fn population_variance(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n
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
    /// What the value measures, for the analyst reading the evidence.
    pub meaning: &'static str,
    pub value: Option<f64>,
    /// Value scoring 0 and value scoring 1.
    pub low: f64,
    pub high: f64,
    pub score: Option<f64>,
    /// Weight of the score in the weighted mean.
    pub weight: f64,
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

fn ramp(
    (name, meaning): (&'static str, &'static str),
    value: Option<f64>,
    r: Ramp,
    weight: f64,
    required: bool,
) -> FeatureScore {
    let score = value.map(|v| ((v - r.low) / (r.high - r.low)).clamp(0.0, 1.0));
    FeatureScore {
        name,
        meaning,
        value,
        low: r.low,
        high: r.high,
        score,
        weight,
        fired: score == Some(1.0),
        required,
    }
}

/// Feature names and meanings, in evidence order.
pub const FEATURES: [(&str, &str); 6] = [
    (
        "accelerators",
        "median concurrent accelerators over the window",
    ),
    ("duration_seconds", "event time since the job's first sample"),
    (
        "activity",
        "accelerator-time-weighted mean of the best activity signal over the window",
    ),
    (
        "temporal_variation",
        "median absolute deviation / median of the gang's per-slide activity",
    ),
    (
        "rank_spread",
        "median absolute deviation / median of the devices' smoothed activity",
    ),
    (
        "gang_synchrony",
        "variance over time of the gang mean / mean per-device variance over time (1 = lockstep)",
    ),
];

impl Verdict {
    /// One sentence per feature: its value, the threshold it is measured against and whether it
    /// fired, so an analyst can check the decision by hand.
    pub fn reasons(&self) -> Vec<String> {
        self.features
            .iter()
            .map(|f| {
                let role = if f.required {
                    "required gate"
                } else {
                    "score only"
                };
                match (f.value, f.score) {
                    (Some(v), Some(s)) => format!(
                        "{} = {} ({}): scores {:.2} on the ramp {} -> {} ({role}, weight {}){}",
                        f.name,
                        fmt_value(v),
                        f.meaning,
                        s,
                        fmt_value(f.low),
                        fmt_value(f.high),
                        f.weight,
                        if f.fired {
                            "; reached"
                        } else {
                            "; not reached"
                        }
                    ),
                    _ => format!(
                        "{}: no value ({}), left out of the score ({role})",
                        f.name, f.meaning
                    ),
                }
            })
            .collect()
    }
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Scores features against the configured ramps.
pub fn score(f: &Features, cfg: &DetectionConfig) -> Verdict {
    let activity_ramp = match f.signal {
        Some(Signal::TensorActive) | None => cfg.tensor_active,
        Some(Signal::SmActive) => cfg.sm_active,
        Some(Signal::GpuUtil) => cfg.gpu_util,
    };
    let w = &cfg.weights;
    let features = vec![
        ramp(
            FEATURES[0],
            Some(f.accelerators),
            cfg.accelerators,
            w.accelerators,
            true,
        ),
        ramp(
            FEATURES[1],
            Some(f.duration_s),
            cfg.duration,
            w.duration,
            true,
        ),
        ramp(FEATURES[2], f.activity, activity_ramp, w.activity, true),
        ramp(
            FEATURES[3],
            f.temporal_variation,
            cfg.temporal_variation,
            w.temporal_variation,
            false,
        ),
        ramp(
            FEATURES[4],
            f.rank_spread,
            cfg.rank_spread,
            w.rank_spread,
            false,
        ),
        ramp(
            FEATURES[5],
            f.gang_synchrony,
            cfg.gang_synchrony,
            w.gang_synchrony,
            false,
        ),
    ];
    let (weighted, weights) = features
        .iter()
        .filter_map(|x| x.score.map(|s| (s * x.weight, x.weight)))
        .fold((0.0, 0.0), |(a, b), (s, w)| (a + s, b + w));
    let score = if weights > 0.0 { weighted / weights } else { 0.0 };
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

    fn devs(activity: &[f64]) -> Vec<DeviceStat> {
        activity
            .iter()
            .map(|&a| DeviceStat {
                activity: a,
                variance: 0.0,
            })
            .collect()
    }

    const MIN_VARIATION: f64 = 0.05;

    #[test]
    fn steady_large_gang_scores_as_training() {
        let panes: Vec<_> = (0..60)
            .map(|i| pane(512.0, 0, if i % 20 == 0 { 0.1 } else { 0.45 }))
            .collect();
        let devices = devs(&[0.45; 512]);
        let f = features(&panes, &devices, 7200.0, MIN_VARIATION);
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
        let activity: Vec<f64> = (0..256).map(|i| (i % 10) as f64 / 20.0).collect();
        let v = score(
            &features(&panes, &devs(&activity), 86_400.0, MIN_VARIATION),
            &DetectionConfig::default(),
        );
        assert!(v.score < 0.75, "{v:?}");
    }

    #[test]
    fn small_jobs_never_pass_the_gates() {
        let panes: Vec<_> = (0..60).map(|_| pane(8.0, 0, 0.6)).collect();
        let v = score(
            &features(&panes, &devs(&[0.6; 8]), 86_400.0, MIN_VARIATION),
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
        let f = features(&panes, &[], 86_400.0, MIN_VARIATION);
        assert_eq!(f.signal, None);
        let v = score(&f, &DetectionConfig::default());
        assert!(!v.gates_passed);
    }

    #[test]
    fn weaker_signals_use_their_own_ramps() {
        let panes: Vec<_> = (0..60).map(|_| pane(128.0, 2, 0.97)).collect();
        let f = features(&panes, &devs(&[0.97; 16]), 7200.0, MIN_VARIATION);
        assert_eq!(f.signal, Some(Signal::GpuUtil));
        let v = score(&f, &DetectionConfig::default());
        assert!(v.features[2].fired);
    }

    /// Per-slide gang means alternating between `hi` and `lo` (a dip every other slide), and
    /// devices whose own variance over time is `device_var`.
    fn dipping_gang(device_var: f64) -> (Vec<DetectPane>, Vec<DeviceStat>) {
        let panes: Vec<_> = (0..60)
            .map(|i| pane(256.0, 0, if i % 2 == 0 { 0.5 } else { 0.3 }))
            .collect();
        let devices = (0..256)
            .map(|_| DeviceStat {
                activity: 0.4,
                variance: device_var,
            })
            .collect();
        (panes, devices)
    }

    #[test]
    fn devices_that_move_together_are_in_lockstep() {
        // The gang mean varies by +-0.1 (variance 0.01), as much as each device does.
        let (panes, devices) = dipping_gang(0.01);
        let f = features(&panes, &devices, 7200.0, MIN_VARIATION);
        let s = f.gang_synchrony.unwrap();
        assert!((s - 1.0).abs() < 1e-3, "{s}");
        let v = score(&f, &DetectionConfig::default());
        assert!(v.features[5].fired, "{v:?}");
    }

    #[test]
    fn independent_replicas_are_not_in_lockstep() {
        // Each device varies 25 times more than the gang mean does: they average each other out.
        let (panes, devices) = dipping_gang(0.25);
        let f = features(&panes, &devices, 7200.0, MIN_VARIATION);
        let s = f.gang_synchrony.unwrap();
        assert!((s - 0.04).abs() < 1e-3, "{s}");
        let v = score(&f, &DetectionConfig::default());
        assert_eq!(v.features[5].score, Some(0.0), "{v:?}");
    }

    #[test]
    fn a_gang_too_steady_to_tell_has_no_synchrony_value() {
        let (panes, devices) = dipping_gang(1e-6);
        let f = features(&panes, &devices, 7200.0, MIN_VARIATION);
        assert!(f.device_variation.unwrap() < MIN_VARIATION);
        assert_eq!(f.gang_synchrony, None);
        let v = score(&f, &DetectionConfig::default());
        assert_eq!(v.features[5].score, None, "left out of the mean");
    }

    #[test]
    fn score_is_the_weighted_mean_of_the_available_features() {
        let (panes, devices) = dipping_gang(0.25);
        let f = features(&panes, &devices, 7200.0, MIN_VARIATION);
        let mut cfg = DetectionConfig::default();
        let v = score(&f, &cfg);
        let (ws, w) = v
            .features
            .iter()
            .filter_map(|x| x.score.map(|s| (s * x.weight, x.weight)))
            .fold((0.0, 0.0), |(a, b), (s, w)| (a + s, b + w));
        assert!((v.score - ws / w).abs() < 1e-12);
        // Weighting synchrony (which scores 0 here) alone gives a score of 0.
        cfg.weights = crate::config::FeatureWeights {
            accelerators: 0.0,
            duration: 0.0,
            activity: 0.0,
            temporal_variation: 0.0,
            rank_spread: 0.0,
            gang_synchrony: 1.0,
        };
        assert_eq!(score(&f, &cfg).score, 0.0);
    }
}
