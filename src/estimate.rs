//! Compute estimates: accelerator time and FLOP, by the hardware method.
//!
//! Estimated FLOP of a sample is `gpus * interval_s * peak * activity`, where activity comes from
//! the best signal the sample carries:
//! - with tensor-pipe activity, `peak * tensor_active` is the hardware work of the tensor pipes;
//!   the model FLOP a regulation counts is a fraction of it (activation recomputation and partly
//!   fed pipes make the pipes busier than the model's arithmetic: PaLM reports 46.2 % model-FLOP
//!   against 57.8 % hardware-FLOP utilisation, a ratio of 0.80; full recomputation gives 0.75, none
//!   1.0), so `estimate.tensor_band` scales it to low / central / high;
//! - otherwise the device is assumed to run at a utilization band (`estimate.utilization`, spanning
//!   the model-FLOP utilisation of published large runs, GPT-3 21 % to PaLM 46 %), for the share of
//!   time it was busy when the sample says (`gpu_util`), else all of it.
//!
//! [`Usage`] keeps the two parts apart so that low, central and high can be derived at any time
//! from one compact sum.

use serde::{Deserialize, Serialize};

use crate::decode::Activity;

/// Summable usage of one sample, pane, window or lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Accelerator time in milliseconds (exact integer accounting).
    pub acc_ms: u64,
    /// Sum of `acc_s * peak * tensor_active` over samples that reported tensor activity.
    pub measured_flop: f64,
    /// Sum of `acc_s * peak * gpu_util` (1 when not reported) over samples without tensor
    /// activity (scaled by the utilization band).
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
/// Decoding bounds both (at most 1e7 devices and 31 days: below 2.7e16 ms), far from where the
/// result saturates.
pub fn accelerator_ms(gpus: f64, interval_s: f64) -> u64 {
    round(gpus * interval_s * 1000.0).max(0) as u64
}

/// `x.round() as i64` (half away from zero, saturating, NaN to 0), without the library call that
/// `f64::round` is on baseline x86-64 (rounding instructions came with SSE4.1): the hot path
/// rounds twice a sample. The fraction `x - whole` is exact: it needs no more bits than `x` has.
#[inline]
pub fn round(x: f64) -> i64 {
    let whole = x as i64;
    let fraction = x - whole as f64;
    if fraction >= 0.5 {
        whole.saturating_add(1)
    } else if fraction <= -0.5 {
        whole.saturating_sub(1)
    } else {
        whole
    }
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

/// Model FLOP per unit of tensor-pipe work (`peak * tensor_active`): low / central / high.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelativeBand {
    pub low: f64,
    pub central: f64,
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
        activity: &Activity,
    ) -> Usage {
        let acc_ms = accelerator_ms(gpus, interval_s);
        let peak_work = gpus * interval_s * peak_flops;
        match activity.tensor_active {
            Some(a) => Usage {
                acc_ms,
                measured_flop: peak_work * a,
                nominal_flop: 0.0,
            },
            None => Usage {
                acc_ms,
                measured_flop: 0.0,
                nominal_flop: peak_work * activity.gpu_util.unwrap_or(1.0),
            },
        }
    }

    pub fn flop(&self, u: &Usage) -> FlopEstimate {
        let (b, t) = (self.utilization, self.tensor_band);
        FlopEstimate {
            low: u.measured_flop * t.low + u.nominal_flop * b.low,
            central: u.measured_flop * t.central + u.nominal_flop * b.central,
            high: u.measured_flop * t.high + u.nominal_flop * b.high,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    fn est() -> Estimator {
        Estimator::new(&crate::config::EstimateConfig::default())
    }

    #[test]
    fn accelerator_time_is_exact_in_milliseconds() {
        assert_eq!(accelerator_ms(8.0, 30.0), 240_000);
        assert_eq!(accelerator_ms(1.0, 0.001), 1);
        assert_eq!(accelerator_ms(0.5, 60.0), 30_000);
    }

    proptest::proptest! {
        #[test]
        fn round_is_the_standard_rounding_cast(
            x in proptest::prop_oneof![
                proptest::num::f64::ANY,
                -1e7f64..1e7,
                (-20_000_000i64..20_000_000).prop_map(|h| h as f64 / 2.0),
                proptest::sample::select(vec![
                    0.49999999999999994, -0.49999999999999994, 0.5, -0.5, 2.5, -2.5,
                    4503599627370495.5, i64::MAX as f64, i64::MIN as f64, 9.223372036854775e18,
                    f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -0.0,
                ]),
            ],
        ) {
            proptest::prop_assert_eq!(round(x), x.round() as i64, "{}", x);
        }
    }

    fn tensor(a: f64) -> Activity {
        Activity {
            tensor_active: Some(a),
            ..Activity::default()
        }
    }

    #[test]
    fn without_tensor_activity_the_utilization_band_applies() {
        let e = est();
        let u = e.sample_usage(1.0, 3600.0, 989e12, &Activity::default());
        let f = e.flop(&u);
        let b = e.utilization;
        assert!((f.central - b.central * 3600.0 * 989e12).abs() < 1e6);
        assert!((f.low - b.low * 3600.0 * 989e12).abs() < 1e6);
        assert!((f.high - b.high * 3600.0 * 989e12).abs() < 1e6);
    }

    #[test]
    fn a_device_busy_part_of_the_time_is_charged_for_that_part() {
        let e = est();
        let busy = |u: Option<f64>| {
            let a = Activity {
                gpu_util: u,
                ..Activity::default()
            };
            e.flop(&e.sample_usage(1.0, 60.0, 989e12, &a)).central
        };
        assert_eq!(busy(Some(0.25)), 0.25 * busy(None));
        assert_eq!(busy(Some(0.0)), 0.0, "idle reserved capacity does no work");
    }

    #[test]
    fn tensor_activity_scaled_to_model_flop_is_the_central_estimate() {
        let e = est();
        let f = e.flop(&e.sample_usage(8.0, 30.0, 989e12, &tensor(0.5)));
        let work = 8.0 * 30.0 * 989e12 * 0.5;
        assert_eq!(f.central, work * e.tensor_band.central);
        assert!(f.low < f.central && f.high > f.central);
        assert!(
            f.high <= work * 1.05,
            "model FLOP hardly exceeds the tensor pipes' work"
        );
    }

    #[test]
    fn llama3_405b_cross_check_lands_in_the_published_range() {
        // 30.84M H100-hours (DOMAIN.md): the band must contain the published ~3.8e25 and the
        // central estimate be within 25 % of it.
        let e = est();
        let u = e.sample_usage(30.84e6, 3600.0, 989e12, &Activity::default());
        let f = e.flop(&u);
        assert!((f.central / 3.8e25 - 1.0).abs() < 0.25, "{}", f.central);
        assert!(f.low < 3.8e25 && 3.8e25 < f.high);
    }
}
