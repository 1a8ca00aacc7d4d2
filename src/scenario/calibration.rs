//! Constants the scenarios are calibrated to, each derived from a real trace in `../shared/data`
//! by `scripts/calibrate.py` (standard-library Python; run it to re-derive every number here), or
//! taken from a published figure named beside it.

/// AcmeTrace (InternLM, NSDI'24), `acmetrace/acme_util_cdfs.csv`, SM_ACTIVE_pct of the Seren and
/// Kalos A100 LLM clusters, conditioned on the GPU being busy (value > 1%): p10, p25, p50, p75, p90
/// as fractions. Seren: 38.0 / 50.3 / 67.0 / 77.3 / 83.3 %; Kalos: 13.7 / 54.4 / 71.2 / 78.6 /
/// 93.6 %. The pooled figures below (the mean of the two clusters) are what simulated training
/// ranks report as SM activity.
pub const ACME_BUSY_SM_ACTIVE: [f64; 5] = [0.26, 0.52, 0.69, 0.78, 0.88];

/// AcmeTrace GPU_UTIL_pct of busy GPUs (same file and conditioning): p10 85-96 %, p50 99 %,
/// p75-p90 100 %: DCGM GPU_UTIL is pinned near 100 % for any busy job.
pub const ACME_BUSY_GPU_UTIL: [f64; 5] = [0.90, 0.97, 0.99, 1.0, 1.0];

/// AcmeTrace FB_USED_pct_of_80GB of busy GPUs: Seren p10/p50/p90 25.9 / 49.6 / 89.2 %, Kalos
/// 36.6 / 77.0 / 88.8 %. Pooled p10, p25, p50, p75, p90.
pub const ACME_BUSY_FB_USED: [f64; 5] = [0.31, 0.50, 0.63, 0.74, 0.89];

/// AcmeTrace GPU_POWER_W (A100, 400 W TDP) above 150 W (busy): Seren p10/p50/p90 212 / 361 /
/// 414 W, Kalos 216 / 389 / 416 W. As fractions of TDP, pooled: p10, p25, p50, p75, p90.
pub const ACME_BUSY_POWER_OF_TDP: [f64; 5] = [0.535, 0.77, 0.94, 1.0, 1.04];

/// The quantile levels of the arrays above.
pub const QUANTILE_LEVELS: [f64; 5] = [0.10, 0.25, 0.50, 0.75, 0.90];

/// Alibaba PAI (cluster-trace-gpu-v2020), `alibaba-gpu-v2020-minibatch/coefficient_variation.csv`:
/// per-job median of the per-iteration coefficient of variation of mini-batch time across the 10
/// workers, p10 / p50 / p90 over the 100 jobs: 0.035 / 0.087 / 0.97. Those jobs share GPUs
/// (20-50 % of one each); the long upper tail is contention a dedicated gang does not see, so a
/// simulated training gang draws its rank CV log-uniformly between the p10 and the p50.
pub const MINIBATCH_CV_P10: f64 = 0.035;
pub const MINIBATCH_CV_P50: f64 = 0.087;

/// Alibaba PAI `job_1..3_norm.csv`: the slowest worker's mean mini-batch time over the median
/// worker's is 1.097 / 1.084 / 1.081 (job 4, with a 2.5x straggler, is the outlier). A simulated
/// straggler node runs its steps this much slower; in synchronous training the other ranks wait
/// for it at every all-reduce.
pub const STRAGGLER_SLOWDOWN: f64 = 1.09;
/// Three of the four released jobs show a straggler.
pub const STRAGGLER_PROBABILITY: f64 = 0.75;

/// Alibaba openb (cluster-trace-gpu-v2023), `openb_pod_list_default.csv`: pods by `num_gpu`
/// (1, 2, 4, 8 GPUs; the 1,088 CPU-only pods carry no accelerator time).
pub const OPENB_GPU_COUNTS: [(u32, u32); 4] = [(1, 6989), (2, 16), (4, 15), (8, 44)];

/// openb: lifetime (deletion - scheduled) of GPU pods in hours, p10, p25, p50, p75, p90, p99 over
/// 6,203 pods with both times: 0.019 / 0.051 / 0.182 / 0.639 / 2.052 / 40.99 h.
pub const OPENB_LIFETIME_H: [(f64, f64); 6] = [
    (0.10, 0.019),
    (0.25, 0.051),
    (0.50, 0.182),
    (0.75, 0.639),
    (0.90, 2.052),
    (0.99, 40.99),
];

/// openb: `gpu_milli` of 1-GPU pods (GPU sharing), p10 / p25 / p50 / p75 / p90: 460 / 650 / 1000 /
/// 1000 / 1000.
pub const OPENB_GPU_MILLI: [(f64, f64); 5] = [
    (0.10, 460.0),
    (0.25, 650.0),
    (0.50, 1000.0),
    (0.75, 1000.0),
    (0.90, 1000.0),
];

/// Model-FLOP utilisation of published large runs (DOMAIN.md): GPT-3 21 %, MT-NLG 30 %, Gopher
/// 33 %, Llama 3 405B 38-43 %, PaLM 46 %. A simulated dense run draws one of these and jitters it.
pub const PUBLISHED_MFU: [f64; 7] = [0.21, 0.30, 0.33, 0.38, 0.41, 0.43, 0.46];

/// Tensor-pipe activity over model-FLOP utilisation. DCGM's PIPE_TENSOR_ACTIVE counts cycles the
/// tensor pipe is busy, which includes recomputed activations and matmuls the model-FLOP count
/// leaves out: PaLM reports 46.2 % MFU against 57.8 % hardware FLOP utilisation (ratio 1.25), full
/// activation recomputation gives 4/3, none gives about 1. Tensor pipes at partial throughput
/// (small or skinny GEMMs) push the ratio up, communication-bound phases that leave the pipe
/// half-fed push it down. A run draws its ratio uniformly in this range.
pub const TENSOR_OVER_MFU: (f64, f64) = (0.95, 1.35);

/// Piecewise-linear inverse CDF through `(level, value)` points, flat beyond the ends.
pub fn inverse_cdf(points: &[(f64, f64)], u: f64) -> f64 {
    let (first, last) = (points[0], points[points.len() - 1]);
    if u <= first.0 {
        return first.1;
    }
    if u >= last.0 {
        return last.1;
    }
    for w in points.windows(2) {
        let ((l0, v0), (l1, v1)) = (w[0], w[1]);
        if u <= l1 {
            return v0 + (v1 - v0) * (u - l0) / (l1 - l0);
        }
    }
    last.1
}

/// Like [`inverse_cdf`] but interpolating in log space (for heavy-tailed lifetimes), and
/// extending the lowest decile down to a tenth of the p10 value.
pub fn inverse_cdf_log(points: &[(f64, f64)], u: f64) -> f64 {
    let mut logs: Vec<(f64, f64)> = vec![(0.0, (points[0].1 / 10.0).ln())];
    logs.extend(points.iter().map(|(l, v)| (*l, v.ln())));
    inverse_cdf(&logs, u).exp()
}

/// `(level, value)` pairs of one of the five-quantile AcmeTrace arrays.
pub fn quantile_points(values: &[f64; 5]) -> Vec<(f64, f64)> {
    QUANTILE_LEVELS
        .iter()
        .copied()
        .zip(values.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_cdf_passes_through_its_points() {
        let p = quantile_points(&ACME_BUSY_SM_ACTIVE);
        assert_eq!(inverse_cdf(&p, 0.5), 0.69);
        assert_eq!(inverse_cdf(&p, 0.0), 0.26);
        assert!((inverse_cdf(&p, 0.375) - 0.605).abs() < 1e-12);
        let median = inverse_cdf_log(&OPENB_LIFETIME_H, 0.5);
        assert!((median - 0.182).abs() < 1e-9);
    }
}
