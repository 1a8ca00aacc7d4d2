//! Compute estimates: accelerator time and FLOP, by the hardware method.
//!
//! Estimated FLOP of a sample is `gpus * interval_s * peak * activity`. When the sample carries
//! tensor-pipe activity, `peak * tensor_active` is the central estimate and a configured relative band
//! gives low and high; otherwise activity is a configured utilization band (Epoch AI's defaults:
//! 0.30 / 0.40 / 0.45). [`Usage`] keeps the two parts apart so that low, central and high can be
//! derived at any time from one compact sum.

use serde::{Deserialize, Serialize};

/// Summable usage of one sample, pane, window or lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Accelerator time in milliseconds (exact integer accounting).
    pub acc_ms: u64,
    /// Sum of `acc_s * peak * tensor_active` over samples that reported tensor activity.
    pub measured_flop: f64,
    /// Sum of `acc_s * peak` over samples without tensor activity (scaled by the utilization band).
    pub nominal_flop: f64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        // Decoding bounds each sample far below this; saturating keeps any sum from wrapping.
        self.acc_ms = self.acc_ms.saturating_add(other.acc_ms);
        self.measured_flop += other.measured_flop;
        self.nominal_flop += other.nominal_flop;
    }

    pub fn accelerator_seconds(&self) -> f64 {
        self.acc_ms as f64 / 1000.0
    }
}

/// Accelerator milliseconds of `gpus` devices over `interval_s` seconds, rounded to the millisecond.
pub fn accelerator_ms(gpus: f64, interval_s: f64) -> u64 {
    (gpus * interval_s * 1000.0).round() as u64
}

/// Low / central / high estimate of FLOP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FlopEstimate {
    pub low: f64,
    pub central: f64,
    pub high: f64,
}

impl FlopEstimate {
    pub fn add(&mut self, o: &FlopEstimate) {
        self.low += o.low;
        self.central += o.central;
        self.high += o.high;
    }
}

/// Utilization assumed when a sample has no tensor activity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UtilizationBand {
    pub low: f64,
    pub central: f64,
    pub high: f64,
}

/// Relative band around a tensor-activity estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelativeBand {
    pub low: f64,
    pub high: f64,
}

/// Turns usage into FLOP estimates.
#[derive(Debug, Clone, Copy)]
pub struct Estimator {
    pub utilization: UtilizationBand,
    pub tensor_band: RelativeBand,
}

impl Estimator {
    pub fn new(cfg: &crate::config::EstimateConfig) -> Self {
        Estimator {
            utilization: cfg.utilization,
            tensor_band: cfg.tensor_band,
        }
    }

    /// Usage of one sample given its resolved peak FLOP/s.
    pub fn sample_usage(
        &self,
        gpus: f64,
        interval_s: f64,
        peak_flops: f64,
        tensor_active: Option<f64>,
    ) -> Usage {
        let acc_ms = accelerator_ms(gpus, interval_s);
        let peak_work = gpus * interval_s * peak_flops;
        match tensor_active {
            Some(a) => Usage {
                acc_ms,
                measured_flop: peak_work * a,
                nominal_flop: 0.0,
            },
            None => Usage {
                acc_ms,
                measured_flop: 0.0,
                nominal_flop: peak_work,
            },
        }
    }

    pub fn flop(&self, u: &Usage) -> FlopEstimate {
        let (b, t) = (self.utilization, self.tensor_band);
        FlopEstimate {
            low: u.measured_flop * t.low + u.nominal_flop * b.low,
            central: u.measured_flop + u.nominal_flop * b.central,
            high: u.measured_flop * t.high + u.nominal_flop * b.high,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est() -> Estimator {
        Estimator::new(&crate::config::EstimateConfig::default())
    }

    #[test]
    fn accelerator_time_is_exact_in_milliseconds() {
        assert_eq!(accelerator_ms(8.0, 30.0), 240_000);
        assert_eq!(accelerator_ms(1.0, 0.001), 1);
        assert_eq!(accelerator_ms(0.5, 60.0), 30_000);
    }

    #[test]
    fn without_tensor_activity_the_utilization_band_applies() {
        let e = est();
        let u = e.sample_usage(1.0, 3600.0, 989e12, None);
        let f = e.flop(&u);
        assert!((f.central - 0.40 * 3600.0 * 989e12).abs() < 1e6);
        assert!((f.low - 0.30 * 3600.0 * 989e12).abs() < 1e6);
        assert!((f.high - 0.45 * 3600.0 * 989e12).abs() < 1e6);
    }

    #[test]
    fn tensor_activity_is_the_central_estimate() {
        let e = est();
        let f = e.flop(&e.sample_usage(8.0, 30.0, 989e12, Some(0.5)));
        let central = 8.0 * 30.0 * 989e12 * 0.5;
        assert_eq!(f.central, central);
        assert!(f.low < central && f.high > central);
    }

    #[test]
    fn llama3_405b_cross_check_lands_in_the_published_range() {
        // 30.84M H100-hours at the default band: central 4.4e25 (DOMAIN.md), and the band
        // contains the published ~3.8e25.
        let e = est();
        let u = e.sample_usage(30.84e6, 3600.0, 989e12, None);
        let f = e.flop(&u);
        assert!((f.central / 4.39e25 - 1.0).abs() < 0.01, "{}", f.central);
        assert!(f.low < 3.8e25 && 3.8e25 < f.high);
    }
}
