//! Each scenario produces what its label claims.

use super::*;
use crate::sim::Fleet;

const T0: i64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z

fn horizon() -> Horizon {
    Horizon {
        t0_ms: T0,
        positive_ms: 3 * HOUR_MS,
        negative_ms: 6 * HOUR_MS,
        fleet_pods: 200,
    }
}

fn build(s: Scenario, index: usize) -> Vec<Run> {
    s.build(index, &mut SplitMix64::new(7 + index as u64), &horizon())
}

fn model(run: &Run) -> &Model {
    match &run.workloads[0].profile {
        Profile::Modelled(m) => m,
        _ => unreachable!("scenario workloads are modelled"),
    }
}

/// Every sample of a run over its simulated life.
fn samples(run: &Run) -> Vec<crate::decode::UsageSample> {
    let mut fleet = Fleet::new(run.workloads.clone(), 1);
    let mut out = Vec::new();
    let mut t = minute(run.start_ms);
    while t <= run.sim_end_ms {
        fleet.samples_at(t, &mut out);
        t += 30_000;
    }
    out
}

#[test]
fn every_scenario_is_labelled_and_resolvable() {
    let mut catalog = Catalog::new(&[], 989.0);
    for s in Scenario::ALL {
        assert_eq!(Scenario::parse(s.name()), Some(s));
        for run in build(s, 0) {
            assert_eq!(run.class, s.class(), "{}", run.name);
            assert!(!run.members.is_empty());
            assert!(run.sim_end_ms <= run.planned_end_ms.max(run.sim_end_ms));
            assert!(
                catalog.resolve(Some(&run.accelerator)).model.is_some(),
                "{} uses a model the catalog knows",
                run.accelerator
            );
        }
    }
}

#[test]
fn positives_are_large_and_long() {
    for s in Scenario::ALL
        .into_iter()
        .filter(|s| s.class() == Class::Positive)
    {
        for i in 0..4 {
            for run in build(s, i) {
                assert!(run.accelerators >= 256.0, "{}", run.name);
                assert!(
                    run.planned_end_ms - run.start_ms >= 6 * HOUR_MS,
                    "{}",
                    run.name
                );
            }
        }
    }
}

#[test]
fn split_runs_use_eight_jobs_or_four_tenants_of_one_org() {
    let run = &build(Scenario::SplitJobs, 1)[0];
    assert_eq!(run.members.len(), 8);
    assert_eq!(run.tenants().len(), 1);
    let jobs: std::collections::BTreeSet<_> =
        samples(run).into_iter().filter_map(|s| s.job).collect();
    assert_eq!(jobs.len(), 8);

    let run = &build(Scenario::SplitTenants, 0)[0];
    assert_eq!(run.tenants().len(), 4);
    let org = run.org.as_deref().expect("an organisation");
    assert!(run.tenants().iter().all(|t| t.starts_with(org)));
}

#[test]
fn paused_run_has_a_gap_and_resumes_as_the_same_job() {
    let run = &build(Scenario::PauseResume, 0)[0];
    let (from, len) = *model(run)
        .gaps
        .iter()
        .find(|(_, len)| *len >= 2 * HOUR_MS)
        .expect("a pause of hours");
    let s = samples(run);
    let pause = run.start_ms + from..=run.start_ms + from + len;
    assert!(s
        .iter()
        .all(|x| !(x.ts_ms > *pause.start() && x.ts_ms <= *pause.end())));
    assert!(s.iter().any(|x| x.ts_ms > *pause.end()), "resumes");
    assert!(s.iter().all(|x| x.job.as_deref() == Some("pretrain")));
}

#[test]
fn ground_truth_is_the_integral_of_true_mfu_times_peak_over_active_time() {
    let run = &build(Scenario::DensePretraining, 0)[0];
    let m = model(run);
    let Kind::Training(t) = &m.kind else {
        unreachable!()
    };
    let w = &run.workloads[0];
    let until = run.start_ms + 3 * HOUR_MS;
    // Integrate at one-second resolution: MFU is constant over each sample interval, so the
    // per-interval sum must agree.
    let step = w.interval_s as i64 * 1000;
    let mut integral = 0.0;
    let mut ms = w.start_ms;
    while ms < until {
        let interval_end = (ms - w.start_ms).div_euclid(step) * step + step + w.start_ms;
        integral += w.devices() as f64 * m.peak_flops * m.true_mfu(interval_end - w.start_ms);
        ms += 1000;
    }
    let truth = run.true_flop_until(until);
    assert!(
        (truth / integral - 1.0).abs() < 1e-9,
        "{truth} vs {integral}"
    );
    // And with no gap in the window, truth sits between the dip level and the steady MFU.
    let full = w.devices() as f64 * m.peak_flops * 3.0 * 3600.0;
    assert!(truth <= full * t.mfu * (1.0 + 1e-9));
    assert!(truth >= full * t.mfu * 0.8 || !m.gaps.is_empty());
}

#[test]
fn a_pause_removes_exactly_its_share_of_the_truth() {
    let run = &build(Scenario::PauseResume, 1)[0];
    let m = model(run);
    let mut without = run.clone();
    let mut m2 = m.clone();
    m2.gaps.clear();
    for w in &mut without.workloads {
        w.profile = Profile::Modelled(Arc::new(m2.clone()));
    }
    let until = run.sim_end_ms;
    let lost = without.true_flop_until(until) - run.true_flop_until(until);
    let w = &run.workloads[0];
    let step = w.interval_s as i64 * 1000;
    let mut expected = 0.0;
    let mut t = w.start_ms + step;
    while t <= until {
        if m.in_gap(t - w.start_ms) {
            expected += w.devices() as f64
                * w.interval_s as f64
                * m.peak_flops
                * m2.true_mfu(t - w.start_ms);
        }
        t += step;
    }
    assert!(expected > 0.0);
    assert!((lost / expected - 1.0).abs() < 1e-9);
}

#[test]
fn true_crossing_agrees_with_the_running_total() {
    let run = &build(Scenario::DensePretraining, 3)[0];
    let total = run.true_flop_until(run.start_ms + 2 * HOUR_MS);
    let t = run
        .true_crossing_ms(total * 0.999)
        .expect("crossed within two hours");
    assert!(t <= run.start_ms + 2 * HOUR_MS && t > run.start_ms);
    assert!(run.true_flop_until(t) >= total * 0.999);
}

#[test]
fn tensor_activity_observes_truth_through_a_bias() {
    let run = &build(Scenario::DensePretraining, 0)[0];
    let m = model(run);
    let Kind::Training(t) = &m.kind else {
        unreachable!()
    };
    if !matches!(m.telemetry, Telemetry::Profiling | Telemetry::DcgmDefault) {
        return;
    }
    let s = samples(run);
    let observed: f64 = s
        .iter()
        .filter_map(|x| x.activity.tensor_active)
        .sum::<f64>()
        / s.len() as f64;
    let mean_mfu: f64 = s
        .iter()
        .map(|x| m.true_mfu(x.ts_ms - run.start_ms))
        .sum::<f64>()
        / s.len() as f64;
    let ratio = observed / mean_mfu;
    assert!(
        (ratio / t.tensor_over_mfu - 1.0).abs() < 0.05,
        "{ratio} vs {}",
        t.tensor_over_mfu
    );
}

#[test]
fn telemetry_is_masked_to_what_the_fleet_exports() {
    for i in 0..12 {
        let run = &build(Scenario::BatchInference, i)[0];
        let s = &samples(run)[0];
        let a = s.activity;
        match run.telemetry {
            Telemetry::Profiling => assert!(a.tensor_active.is_some() && a.sm_active.is_some()),
            Telemetry::DcgmDefault => assert!(a.tensor_active.is_some() && a.sm_active.is_none()),
            Telemetry::UtilOnly => {
                assert!(a.tensor_active.is_none() && a.sm_active.is_none() && a.gpu_util.is_some())
            }
            Telemetry::Allocation => assert!(a.gpu_util.is_none()),
        }
    }
}

#[test]
fn training_sm_activity_matches_acmetrace_busy_quantiles() {
    // SM activity of steady training ranks across many runs lands in AcmeTrace's busy range: the
    // median within the source's p25..p75, as drawn.
    let mut sm = Vec::new();
    for i in 0..40 {
        let run = &build(Scenario::DensePretraining, i % 6)[0];
        let m = model(run);
        let Kind::Training(t) = &m.kind else {
            unreachable!()
        };
        sm.push((t.mfu * t.tensor_over_mfu * t.sm_over_tensor).min(0.97));
    }
    sm.sort_by(f64::total_cmp);
    let median = sm[sm.len() / 2];
    assert!(
        (ACME_BUSY_SM_ACTIVE[1]..=ACME_BUSY_SM_ACTIVE[3]).contains(&median),
        "{median}"
    );
}

#[test]
fn everyday_fleet_follows_openb_sizes_and_lifetimes() {
    let runs = build(Scenario::EverydayFleet, 0);
    assert_eq!(runs.len(), 200);
    let single = runs
        .iter()
        .filter(|r| r.workloads[0].devices() == 1)
        .count();
    // openb: 6,989 of 7,064 GPU pods hold one GPU.
    assert!(single as f64 / runs.len() as f64 > 0.95);
    let mut life_h: Vec<f64> = runs
        .iter()
        .map(|r| (r.planned_end_ms - r.start_ms) as f64 / HOUR_MS as f64)
        .collect();
    life_h.sort_by(f64::total_cmp);
    let median = life_h[life_h.len() / 2];
    assert!(
        (0.08..0.4).contains(&median),
        "median lifetime {median} h vs openb 0.18 h"
    );
}

#[test]
fn negatives_report_no_training_truth() {
    for s in Scenario::ALL
        .into_iter()
        .filter(|s| s.class() == Class::Negative)
    {
        for run in build(s, 0).iter().take(3) {
            assert_eq!(run.true_flop_until(run.sim_end_ms), 0.0, "{}", run.name);
        }
    }
}

#[test]
fn build_is_deterministic_for_a_seed() {
    let a = build(Scenario::DensePretraining, 2);
    let b = build(Scenario::DensePretraining, 2);
    assert_eq!(samples(&a[0])[..50], samples(&b[0])[..50]);
}
