//! Detection: activity features of one job over recent event time, and its training-likeness score.
//!
//! Features come from compact per-job panes ([`DetectPane`], one per detection slide) and from
//! per-device statistics ([`DeviceStat`]). Each feature scores 0..1 on a configured ramp; the score
//! is the weighted mean of the features available. A job can only be suspected when it is a large
//! gang (`accelerators`), has run long enough (`duration`) and reports enough activity: a score alone
//! never accuses a customer. Pure code: no I/O, no clock.
//!
//! The features and what they separate:
//! - `activity`: upper quartile of the gang's per-slide activity of the best signal (tensor > SM >
//!   GPU_UTIL), so checkpoint dips do not lower it. Training keeps the
//!   tensor pipes busy; serving, notebooks and idle capacity do not; FP64 simulation and mining
//!   keep SMs busy without tensor work.
//! - `temporal_variation`: robust variation of the gang's activity over the window. Training is
//!   flat apart from short checkpoint dips, which the median ignores; serving follows requests.
//! - `rank_spread`: robust spread of activity across the devices. Ranks of a synchronous job wait
//!   for each other, so they read alike.
//! - `memory_gib`: device memory in use. Training holds weights, optimizer state and activations
//!   and fills most of the device's memory (AcmeTrace LLM clusters: median 63 % of 80 GB);
//!   mining-like load and many small tools use a few GiB.
//! - `gang_synchrony`: how much of the devices' variation over time they share. Ranks of one
//!   training job stall and dip together (collectives, checkpoints); independent replicas of an
//!   inference fleet vary on their own, so the gang average is much smoother than each device.
//!   Computed as the variance over time of the per-slide gang mean / the mean variance over time
//!   of each device, both over the same span of slides (the current and the previous half of the
//!   detection window), so a dip counts in both while it is in the span and in neither after.
//!   Static differences between devices do not count: each device's variance is about its own
//!   mean. Near 1 for a gang in lockstep, near 1/N for N independent devices. A gang too steady for the ratio to mean anything (relative standard deviation below `synchrony_min_variation`) has no
//!   value, and the feature is left out rather than guessed. When it has a value it is a gate:
//!   a gang whose devices vary on their own is not suspected, whatever else it looks like.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::config::{DetectionConfig, Ramp};
use crate::decode::Activity;

/// The quantile of the per-slide gang activity that the `activity` feature reports.
pub const ACTIVITY_QUANTILE: f64 = 0.75;

/// Activity signals, best first: tensor-pipe activity separates training from other busy work best;
/// GPU_UTIL is near 100% for almost any busy job and is the weakest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// Accelerator-time-weighted sum of one signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Accelerator-seconds that reported this signal.
    pub weight: f32,
    /// Sum of activity * accelerator-seconds.
    pub sum: f32,
}

impl Moments {
    pub fn add(&mut self, value: f32, weight: f32) {
        self.weight += weight;
        self.sum += value * weight;
    }

    fn merge(&mut self, o: &Moments) {
        self.weight += o.weight;
        self.sum += o.sum;
    }
}

/// Count, sum and sum of squares of one device's readings (its variance over time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub n: f32,
    pub sum: f32,
    pub sq: f32,
}

impl Spread {
    pub fn add(&mut self, v: f32) {
        self.n += 1.0;
        self.sum += v;
        self.sq += v * v;
    }

    pub fn merged(&self, o: &Spread) -> Spread {
        Spread {
            n: self.n + o.n,
            sum: self.sum + o.sum,
            sq: self.sq + o.sq,
        }
    }

    /// Population variance; `None` with fewer than 2 readings.
    pub fn variance(&self) -> Option<f64> {
        (self.n >= 2.0).then(|| {
            let m = (self.sum / self.n) as f64;
            ((self.sq / self.n) as f64 - m * m).max(0.0)
        })
    }
}

/// One detection slide of one job (24 bytes).
///
/// A sample brings only its best signal ([`Signal::best`]), and the features read only the best
/// signal that any slide of the window received. So a slide keeps the moments of the best signal
/// it received and drops a worse one's, remembering only that it came: in a window whose best
/// signal a slide did not receive, that slide is one without the signal, as it was when the
/// slide kept every signal's moments. The features come out the same, bit for bit (tested
/// against slides that keep all three).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DetectPane {
    /// Accelerators active in this slide (each device counted once per slide it covers).
    pub accelerators: f32,
    /// The moments of the best signal received (the lowest bit of `signals`).
    activity: Moments,
    /// Device memory in use, GiB (weighted by accelerator-seconds, per accelerator).
    pub memory: Moments,
    /// The signals received with a weight, bit `i` for [`Signal::ALL`]`[i]`.
    signals: u8,
}

impl DetectPane {
    /// Adds a reading of `signal` weighing `weight` accelerator-seconds. A reading of no weight
    /// adds nothing.
    pub fn add_activity(&mut self, signal: Signal, value: f32, weight: f32) {
        if weight.is_nan() || weight <= 0.0 {
            return;
        }
        let i = signal as u32;
        match i.cmp(&self.best_index()) {
            Ordering::Less => {
                self.activity = Moments::default();
                self.activity.add(value, weight);
            }
            Ordering::Equal => self.activity.add(value, weight),
            Ordering::Greater => {}
        }
        self.signals |= 1 << i;
    }

    /// Adds another job's pane of the same slide (for a group of jobs).
    pub fn add(&mut self, o: &DetectPane) {
        self.accelerators += o.accelerators;
        match o.best_index().cmp(&self.best_index()) {
            Ordering::Less => {
                self.activity = Moments::default();
                self.activity.merge(&o.activity);
            }
            Ordering::Equal => self.activity.merge(&o.activity),
            Ordering::Greater => {}
        }
        self.signals |= o.signals;
        self.memory.merge(&o.memory);
    }

    /// Whether a reading of `signal` with a weight came in this slide.
    pub fn received(&self, signal: Signal) -> bool {
        self.signals & (1 << signal as u32) != 0
    }

    /// The moments of `signal` when it is the best this slide received; `None` when it is not
    /// (when it did not come, or a better one did).
    pub fn activity(&self, signal: Signal) -> Option<&Moments> {
        (signal as u32 == self.best_index()).then_some(&self.activity)
    }

    /// Index in [`Signal::ALL`] of the best signal received, 8 with none.
    fn best_index(&self) -> u32 {
        self.signals.trailing_zeros()
    }

    /// The slide as the bit patterns of its five numbers (accelerators, the best signal's weight
    /// and sum, memory's weight and sum) and its signals byte: what [`crate::slide_archive`]
    /// encodes.
    pub(crate) fn to_parts(self) -> ([u32; 5], u8) {
        let words = [
            self.accelerators,
            self.activity.weight,
            self.activity.sum,
            self.memory.weight,
            self.memory.sum,
        ]
        .map(f32::to_bits);
        (words, self.signals)
    }

    /// The slide of [`DetectPane::to_parts`]; `None` if the signals byte names a signal that
    /// does not exist.
    pub(crate) fn from_parts(words: [u32; 5], signals: u8) -> Option<DetectPane> {
        if signals >> Signal::ALL.len() != 0 {
            return None;
        }
        let [accelerators, weight, sum, memory_weight, memory_sum] = words.map(f32::from_bits);
        Some(DetectPane {
            accelerators,
            activity: Moments { weight, sum },
            memory: Moments {
                weight: memory_weight,
                sum: memory_sum,
            },
            signals,
        })
    }

    /// A pane of the checkpoint formats before 11, which kept every signal's moments.
    fn from_every_signal(accelerators: f32, activity: [Moments; 3], memory: Moments) -> DetectPane {
        let mut p = DetectPane {
            accelerators,
            memory,
            ..DetectPane::default()
        };
        for (signal, m) in Signal::ALL.into_iter().zip(activity).rev() {
            if m.weight > 0.0 {
                p.signals |= 1 << signal as u32;
                p.activity = m;
            }
        }
        p
    }
}

impl<'de> Deserialize<'de> for DetectPane {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if crate::checkpoint::format_read() < crate::checkpoint::BEST_SIGNAL_PANES {
            let (accelerators, activity, memory) = <(f32, [Moments; 3], Moments)>::deserialize(d)?;
            return Ok(DetectPane::from_every_signal(
                accelerators,
                activity,
                memory,
            ));
        }
        let (accelerators, activity, memory, signals) =
            <(f32, Moments, Moments, u8)>::deserialize(d)?;
        let numbers = [
            accelerators,
            activity.weight,
            activity.sum,
            memory.weight,
            memory.sum,
        ];
        DetectPane::from_parts(numbers.map(f32::to_bits), signals).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "a detection pane's signals {signals:#b} name a signal that does not exist"
            ))
        })
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
    /// Upper quartile of the per-slide gang activity of that signal over the window.
    pub activity: Option<f64>,
    /// MAD / median of per-slide activity (needs 3 slides).
    pub temporal_variation: Option<f64>,
    /// MAD / median of per-device activity (needs 3 devices).
    pub rank_spread: Option<f64>,
    /// Variance over time of the gang mean / mean per-device variance (needs 3 slides, 2 devices
    /// and variation above the configured minimum).
    pub gang_synchrony: Option<f64>,
    /// Mean standard deviation of each device over the synchrony span, relative to the mean
    /// activity.
    pub device_variation: Option<f64>,
    /// Mean device memory in use per accelerator over the window, GiB (when reported).
    pub memory_gib: Option<f64>,
    /// Devices that reported recently.
    pub devices: usize,
}

/// What detection keeps per device: the smoothed activity of the job's best signal, and its
/// variance over the synchrony span (see [`features`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceStat {
    pub activity: f64,
    pub variance: Option<f64>,
}

/// Computes features from the panes of the observed span, oldest first, and the devices that
/// reported recently. Gang synchrony compares the variance of the per-slide gang means of
/// `sync_panes` with the devices' own variance over the same slides (the caller takes both over
/// the same span). `min_variation`: see [`Features::gang_synchrony`].
pub fn features(
    panes: &[DetectPane],
    devices: &[DeviceStat],
    duration_s: f64,
    min_variation: f64,
    sync_panes: &[DetectPane],
) -> Features {
    let mut f = Features {
        duration_s,
        devices: devices.len(),
        ..Features::default()
    };
    if panes.is_empty() {
        return f;
    }
    let mut values = Values::new();
    let accelerators = values.fill(panes.len(), panes.iter().map(|p| p.accelerators as f64));
    f.accelerators = Sorted::new(accelerators).median();
    let (mw, ms) = panes.iter().fold((0.0f64, 0.0f64), |(w, s), p| {
        (w + p.memory.weight as f64, s + p.memory.sum as f64)
    });
    f.memory_gib = (mw > 0.0).then(|| ms / mw);
    let chosen = Signal::ALL
        .into_iter()
        .find(|s| panes.iter().any(|p| p.received(*s)));
    if let Some(signal) = chosen {
        // No slide holds a better signal than the window's best: each that received it holds
        // its moments.
        let (w, s) = panes
            .iter()
            .filter_map(|p| p.activity(signal))
            .fold((0.0f64, 0.0f64), |(w, s), m| {
                (w + m.weight as f64, s + m.sum as f64)
            });
        f.signal = Some(signal);
        let slide_mean = |m: &Moments| (m.sum / m.weight) as f64;
        let working = panes.iter().filter_map(|p| p.activity(signal));
        let activity = values.fill(panes.len(), working.map(slide_mean));
        // How busy the gang is while it works: checkpoint dips and pauses shorter than a quarter
        // of the window do not lower it, and a run that alternates work and idle minutes to stay
        // under the radar still shows its working level.
        let sorted = Sorted::new(activity);
        f.activity = Some(sorted.quantile(ACTIVITY_QUANTILE));
        f.temporal_variation = sorted.relative_mad();
        let working = sync_panes.iter().filter_map(|p| p.activity(signal));
        let synced = values.fill(sync_panes.len(), working.map(slide_mean));
        let (var_sum, var_count) = devices
            .iter()
            .filter_map(|d| d.variance)
            .fold((0.0f64, 0usize), |(s, n), v| (s + v, n + 1));
        let mean = s / w;
        if var_count > 0 && mean > 0.0 {
            let device_var = var_sum / var_count as f64;
            let variation = device_var.sqrt() / mean;
            f.device_variation = Some(variation);
            if synced.len() >= 3 && var_count >= 2 && variation >= min_variation {
                f.gang_synchrony = Some((population_variance(synced) / device_var).min(1.0));
            }
        }
    }
    let activity = values.fill(devices.len(), devices.iter().map(|d| d.activity));
    f.rank_spread = Sorted::new(activity).relative_mad();
    f
}

/// Values of the panes or devices of one job, taken in turn: on the stack up to 64 (an hour of
/// one-minute slides), else on the heap.
struct Values {
    stack: [f64; 64],
    heap: Vec<f64>,
}

impl Values {
    fn new() -> Values {
        Values {
            stack: [0.0; 64],
            heap: Vec::new(),
        }
    }

    /// The values `values` yields, at most `max`, in place of those before. Written into a
    /// plain slice: extending a growable vector by a filtered iterator checks its capacity at
    /// every value.
    fn fill(&mut self, max: usize, values: impl Iterator<Item = f64>) -> &mut [f64] {
        let room = match max <= self.stack.len() {
            true => &mut self.stack[..max],
            false => {
                self.heap.resize(max, 0.0);
                &mut self.heap[..]
            }
        };
        let mut n = 0;
        for (slot, v) in room.iter_mut().zip(values) {
            *slot = v;
            n += 1;
        }
        &mut room[..n]
    }
}

fn population_variance(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n
}

/// Values in ascending order, for their order statistics: one sort serves every statistic of
/// the same values, where a selection per statistic (statrs' `OrderStatistics`) scans them again
/// for each. The statistics are statrs' definitions, so they give the same results.
struct Sorted<'a>(&'a [f64]);

impl<'a> Sorted<'a> {
    /// Sorts `v` (finite values: pane and device figures are sums and ratios of finite readings).
    fn new(v: &'a mut [f64]) -> Sorted<'a> {
        v.sort_unstable_by(f64::total_cmp);
        Sorted(v)
    }

    /// The middle value, or the mean of the two middle values (NaN when there are none).
    fn median(&self) -> f64 {
        let (v, k) = (self.0, self.0.len() / 2);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[k],
            _ => (v[k - 1] + v[k]) / 2.0,
        }
    }

    /// The `tau` quantile by the R-8 estimator (statrs' `quantile`: median-unbiased,
    /// interpolating between the two order statistics around rank `(n + 1/3) tau + 1/3`).
    fn quantile(&self, tau: f64) -> f64 {
        let v = self.0;
        if !(0.0..=1.0).contains(&tau) || v.is_empty() {
            return f64::NAN;
        }
        let h = (v.len() as f64 + 1.0 / 3.0) * tau + 1.0 / 3.0;
        let hf = h as i64;
        if hf <= 0 || tau == 0.0 {
            return v[0];
        }
        if hf >= v.len() as i64 || tau == 1.0 {
            return v[v.len() - 1];
        }
        let (a, b) = (v[hf as usize - 1], v[hf as usize]);
        a + (h - hf as f64) * (b - a)
    }

    /// Median absolute deviation relative to the median: a spread robust to checkpoint dips and
    /// a few stragglers. `None` with fewer than 3 values; 1.0 (maximal) when the median is zero.
    ///
    /// The deviations below the median grow from it downwards and those above it upwards, so
    /// the smallest half of them is taken by merging the two runs outwards from the median, with
    /// no second sort.
    fn relative_mad(&self) -> Option<f64> {
        let v = self.0;
        if v.len() < 3 {
            return None;
        }
        let m = self.median();
        let split = v.partition_point(|&x| x < m);
        let (mut below, mut above) = (split, split);
        let (mut previous, mut deviation) = (0.0, 0.0);
        for _ in 0..=v.len() / 2 {
            let down = below.checked_sub(1).map(|i| (v[i] - m).abs());
            let up = v.get(above).map(|&x| (x - m).abs());
            previous = deviation;
            deviation = match (down, up) {
                (Some(d), Some(u)) if d <= u => {
                    below -= 1;
                    d
                }
                (Some(d), None) => {
                    below -= 1;
                    d
                }
                (_, Some(u)) => {
                    above += 1;
                    u
                }
                (None, None) => unreachable!("half of at least 3 values is taken"),
            };
        }
        let mad = match v.len() % 2 {
            1 => deviation,
            _ => (previous + deviation) / 2.0,
        };
        Some(if m > 0.0 { mad / m } else { 1.0 })
    }
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
    pub features: [FeatureScore; 7],
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
pub const FEATURES: [(&str, &str); 7] = [
    (
        "accelerators",
        "median concurrent accelerators over the window",
    ),
    ("duration_seconds", "event time since the job's first sample"),
    (
        "activity",
        "upper quartile of the gang's per-slide mean of the best activity signal over the window",
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
        "variance of the gang's per-slide mean / mean variance of each device over the same span (1 = lockstep)",
    ),
    (
        "memory_gib",
        "mean device memory in use per accelerator over the window, GiB",
    ),
];

impl Verdict {
    /// Whether this verdict makes the job (or group) suspected. A new suspicion needs every gate
    /// and the score threshold; one already `held` stays while the gang is still large enough and
    /// the score has not fallen below `resolve_below`, so phases of a run that look less like
    /// training (checkpoint restores, rollouts, evaluation) do not make its alert flap.
    pub fn suspects(&self, threshold: f64, resolve_below: f64, held: bool) -> bool {
        let fresh = self.gates_passed && self.score >= threshold;
        let kept = held && self.features[0].fired && self.score >= resolve_below;
        fresh || kept
    }

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
    // GPU_UTIL is busy for almost any work: a job that reports nothing better must be a larger
    // gang before it can be suspected.
    let accelerators_ramp = match f.signal {
        Some(Signal::GpuUtil) => cfg.accelerators_gpu_util,
        _ => cfg.accelerators,
    };
    let w = &cfg.weights;
    let features = [
        ramp(
            FEATURES[0],
            Some(f.accelerators),
            accelerators_ramp,
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
        // Measured, synchrony is required: devices that vary independently of each other are
        // replicas, not one synchronous job. Too steady to measure, it cannot clear anyone.
        ramp(
            FEATURES[5],
            f.gang_synchrony,
            cfg.gang_synchrony,
            w.gang_synchrony,
            f.gang_synchrony.is_some(),
        ),
        ramp(
            FEATURES[6],
            f.memory_gib,
            cfg.memory_gib,
            w.memory_gib,
            false,
        ),
    ];
    let (weighted, weights) = features
        .iter()
        .filter_map(|x| x.score.map(|s| (s * x.weight, x.weight)))
        .fold((0.0, 0.0), |(a, b), (s, w)| (a + s, b + w));
    let score = if weights > 0.0 {
        weighted / weights
    } else {
        0.0
    };
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
    use proptest::prelude::*;

    use super::*;

    fn pane(accelerators: f32, signal: usize, activity: f32) -> DetectPane {
        let mut p = DetectPane {
            accelerators,
            ..DetectPane::default()
        };
        p.add_activity(Signal::ALL[signal], activity, accelerators * 60.0);
        p
    }

    fn devs(activity: &[f64]) -> Vec<DeviceStat> {
        activity
            .iter()
            .map(|&a| DeviceStat {
                activity: a,
                variance: None,
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
        let f = features(&panes, &devices, 7200.0, MIN_VARIATION, &panes);
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
            &features(&panes, &devs(&activity), 86_400.0, MIN_VARIATION, &panes),
            &DetectionConfig::default(),
        );
        assert!(v.score < 0.75, "{v:?}");
    }

    #[test]
    fn small_jobs_never_pass_the_gates() {
        let panes: Vec<_> = (0..60).map(|_| pane(8.0, 0, 0.6)).collect();
        let v = score(
            &features(&panes, &devs(&[0.6; 8]), 86_400.0, MIN_VARIATION, &panes),
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
        let f = features(&panes, &[], 86_400.0, MIN_VARIATION, &panes);
        assert_eq!(f.signal, None);
        let v = score(&f, &DetectionConfig::default());
        assert!(!v.gates_passed);
    }

    #[test]
    fn weaker_signals_use_their_own_ramps() {
        let panes: Vec<_> = (0..60).map(|_| pane(128.0, 2, 0.97)).collect();
        let f = features(&panes, &devs(&[0.97; 16]), 7200.0, MIN_VARIATION, &panes);
        assert_eq!(f.signal, Some(Signal::GpuUtil));
        let v = score(&f, &DetectionConfig::default());
        assert!(v.features[2].fired);
    }

    /// 256 devices whose per-slide gang mean alternates by +-`swing` around 0.4, each device
    /// varying over time with standard deviation `own`.
    fn gang(swing: f32, own: f64) -> (Vec<DetectPane>, Vec<DeviceStat>) {
        let panes: Vec<_> = (0..60)
            .map(|i| pane(256.0, 0, if i % 2 == 0 { 0.4 + swing } else { 0.4 - swing }))
            .collect();
        let devices = (0..256)
            .map(|_| DeviceStat {
                activity: 0.4,
                variance: Some(own * own),
            })
            .collect();
        (panes, devices)
    }

    #[test]
    fn devices_that_move_together_are_in_lockstep() {
        // The gang dips and recovers as one: each device varies exactly as the gang mean does.
        let (panes, devices) = gang(0.1, 0.1);
        let f = features(&panes, &devices, 7200.0, MIN_VARIATION, &panes);
        let s = f.gang_synchrony.unwrap();
        assert!((s - 1.0).abs() < 1e-3, "{s}");
        let v = score(&f, &DetectionConfig::default());
        assert!(v.features[5].fired && v.features[5].required, "{v:?}");
        assert!(v.gates_passed);
    }

    #[test]
    fn independent_replicas_are_not_in_lockstep_and_cannot_be_suspected() {
        // Each device varies by 0.2 over time; the gang mean moves by only 0.04.
        let (panes, devices) = gang(0.04, 0.2);
        let f = features(&panes, &devices, 7200.0, MIN_VARIATION, &panes);
        let s = f.gang_synchrony.unwrap();
        let expected = 0.04f64.powi(2) / 0.2f64.powi(2);
        assert!((s - expected).abs() < 1e-3, "{s} vs {expected}");
        let v = score(&f, &DetectionConfig::default());
        assert_eq!(v.features[5].score, Some(0.0), "{v:?}");
        assert!(!v.gates_passed, "measured synchrony is a gate");
    }

    #[test]
    fn a_gang_too_steady_to_tell_has_no_synchrony_value() {
        let (panes, devices) = gang(0.001, 0.001);
        let f = features(&panes, &devices, 7200.0, MIN_VARIATION, &panes);
        assert!(f.device_variation.unwrap() < MIN_VARIATION);
        assert_eq!(f.gang_synchrony, None);
        let v = score(&f, &DetectionConfig::default());
        assert_eq!(v.features[5].score, None, "left out of the mean");
        assert!(!v.features[5].required, "and it cannot block");
        assert!(v.gates_passed);
    }

    #[test]
    fn score_is_the_weighted_mean_of_the_available_features() {
        let (panes, devices) = gang(0.04, 0.2);
        let f = features(&panes, &devices, 7200.0, MIN_VARIATION, &panes);
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
            memory_gib: 0.0,
        };
        assert_eq!(score(&f, &cfg).score, 0.0);
    }

    #[test]
    fn a_held_suspicion_survives_a_phase_that_fails_a_gate_but_not_a_shrunken_gang() {
        let (panes, devices) = gang(0.04, 0.2);
        let cfg = DetectionConfig::default();
        let v = score(
            &features(&panes, &devices, 7200.0, MIN_VARIATION, &panes),
            &cfg,
        );
        assert!(!v.gates_passed && v.score >= cfg.resolve_below, "{v:?}");
        assert!(!v.suspects(cfg.score_threshold, cfg.resolve_below, false));
        assert!(v.suspects(cfg.score_threshold, cfg.resolve_below, true));
        let small: Vec<_> = (0..60).map(|_| pane(8.0, 0, 0.6)).collect();
        let v = score(
            &features(&small, &devs(&[0.6; 8]), 7200.0, MIN_VARIATION, &small),
            &cfg,
        );
        assert!(!v.suspects(cfg.score_threshold, cfg.resolve_below, true));
    }

    /// A slide as the formats before 11 kept it: the moments of every signal.
    #[derive(Default, Clone, Copy)]
    struct EverySignal {
        accelerators: f32,
        activity: [Moments; 3],
        memory: Moments,
    }

    /// What comes into a slide: a reading, or another job's slide of the same time.
    #[derive(Debug, Clone)]
    enum Step {
        Reading {
            signal: usize,
            value: f32,
            weight: f32,
        },
        Devices(f32),
        Memory(f32, f32),
        Merge(Vec<(usize, f32, f32)>),
    }

    fn step() -> impl Strategy<Value = Step> {
        let reading = (
            0usize..3,
            0u32..=100,
            prop_oneof![Just(0.0f32), 0.5f32..600.0],
        );
        prop_oneof![
            4 => reading.clone().prop_map(|(signal, v, weight)| Step::Reading {
                signal,
                value: v as f32 / 100.0,
                weight,
            }),
            1 => (1u32..64).prop_map(|n| Step::Devices(n as f32)),
            1 => (0.0f32..80.0, 1.0f32..600.0).prop_map(|(g, w)| Step::Memory(g, w)),
            1 => proptest::collection::vec(reading, 0..4).prop_map(|r| {
                Step::Merge(r.into_iter().map(|(s, v, w)| (s, v as f32 / 100.0, w)).collect())
            }),
        ]
    }

    /// Applies `steps` to a slide of both forms, the merged slides built the same way.
    fn slides(steps: &[Step]) -> (DetectPane, EverySignal) {
        let (mut pane, mut every) = (DetectPane::default(), EverySignal::default());
        for step in steps {
            match step {
                Step::Reading {
                    signal,
                    value,
                    weight,
                } => {
                    pane.add_activity(Signal::ALL[*signal], *value, *weight);
                    every.activity[*signal].add(*value, *weight);
                }
                Step::Devices(n) => {
                    pane.accelerators += n;
                    every.accelerators += n;
                }
                Step::Memory(g, w) => {
                    pane.memory.add(*g, *w);
                    every.memory.add(*g, *w);
                }
                Step::Merge(readings) => {
                    let steps: Vec<_> = readings
                        .iter()
                        .map(|&(signal, value, weight)| Step::Reading {
                            signal,
                            value,
                            weight,
                        })
                        .collect();
                    let (p, e) = slides(&steps);
                    pane.add(&p);
                    every.accelerators += e.accelerators;
                    for (a, b) in every.activity.iter_mut().zip(&e.activity) {
                        a.merge(b);
                    }
                    every.memory.merge(&e.memory);
                }
            }
        }
        (pane, every)
    }

    #[test]
    fn a_slide_is_24_bytes() {
        assert_eq!(std::mem::size_of::<DetectPane>(), 24);
    }

    proptest::proptest! {
        /// A slide keeping its best signal's moments is, bit for bit, the slide keeping every
        /// signal's read the new way (which is how a checkpoint of an earlier format is read):
        /// the same signals received, the best one's moments, none for the others.
        #[test]
        fn a_slide_keeps_its_best_signal_as_the_slide_of_every_signal_holds_it(
            steps in proptest::collection::vec(step(), 0..24),
        ) {
            let (pane, every) = slides(&steps);
            let best = (0..3).find(|&i| every.activity[i].weight > 0.0);
            for (i, signal) in Signal::ALL.into_iter().enumerate() {
                prop_assert_eq!(pane.received(signal), every.activity[i].weight > 0.0);
                let expected = (best == Some(i)).then_some(&every.activity[i]);
                prop_assert_eq!(pane.activity(signal), expected);
            }
            let read = DetectPane::from_every_signal(every.accelerators, every.activity, every.memory);
            prop_assert_eq!(read, pane);
        }

        /// The features of a window of such slides are those of the slides keeping every
        /// signal, read for the window's best signal as the features read them.
        #[test]
        fn features_of_best_signal_slides_are_those_of_every_signal_slides(
            window in proptest::collection::vec(proptest::collection::vec(step(), 0..12), 1..40),
            sync_from in 0usize..40,
        ) {
            let built: Vec<_> = window.iter().map(|steps| slides(steps)).collect();
            let panes: Vec<_> = built.iter().map(|(p, _)| *p).collect();
            // The window's best signal as the formats before 11 chose it, and each slide holding
            // only that signal's moments.
            let best = (0..3).find(|&i| built.iter().any(|(_, e)| e.activity[i].weight > 0.0));
            let only_best: Vec<_> = built
                .iter()
                .map(|(_, e)| {
                    let mut p = DetectPane {
                        accelerators: e.accelerators,
                        memory: e.memory,
                        ..DetectPane::default()
                    };
                    if let Some(i) = best.filter(|&i| e.activity[i].weight > 0.0) {
                        p.activity = e.activity[i];
                        p.signals = 1 << i;
                    }
                    p
                })
                .collect();
            let devices: Vec<_> = [(0.4, 0.01), (0.5, 0.02), (0.45, 0.015)]
                .map(|(activity, variance)| DeviceStat { activity, variance: Some(variance) })
                .into();
            let from = sync_from.min(panes.len());
            prop_assert_eq!(
                features(&panes, &devices, 3600.0, MIN_VARIATION, &panes[from..]),
                features(&only_best, &devices, 3600.0, MIN_VARIATION, &only_best[from..])
            );
        }

        /// The order statistics read from one sort are statrs' own, to the bit: the median, the
        /// activity quantile, and the median absolute deviation over the median (with ties,
        /// zeros, negative values, even and odd counts).
        #[test]
        fn sorted_statistics_are_statrs_statistics(
            values in proptest::collection::vec(
                proptest::prop_oneof![
                    (0u32..12).prop_map(|x| x as f64 / 8.0),
                    -1000.0f64..1000.0,
                ],
                1..140,
            ),
        ) {
            use statrs::statistics::{Data, OrderStatistics};
            let statrs_median = |v: &mut [f64]| Data::new(v).median();
            let mut sorted = values.clone();
            let sorted = Sorted::new(&mut sorted);
            let mut v = values.clone();
            prop_assert_eq!(sorted.median().to_bits(), statrs_median(&mut v).to_bits());
            let q = Data::new(&mut v[..]).quantile(ACTIVITY_QUANTILE);
            prop_assert_eq!(sorted.quantile(ACTIVITY_QUANTILE).to_bits(), q.to_bits());
            let mad = (v.len() >= 3).then(|| {
                let m = statrs_median(&mut v);
                for x in v.iter_mut() {
                    *x = (*x - m).abs();
                }
                let mad = statrs_median(&mut v);
                if m > 0.0 { mad / m } else { 1.0 }
            });
            prop_assert_eq!(sorted.relative_mad().map(f64::to_bits), mad.map(f64::to_bits));
        }
    }
}
