//! The evaluation harness end to end on the quick mix: the report is written, its figures add up,
//! and every rate is what its listed counts say. No result is hard-coded: the harness measures
//! whatever detector it is linked with.

mod common;

use trainspotter::config::Config;
use trainspotter::eval::{self, EvalOptions, Mix};
use trainspotter::scenario::Class;

fn quick(data: Option<std::path::PathBuf>, out: &std::path::Path) -> eval::score::Evaluation {
    let opts = EvalOptions {
        mix: Mix::load("quick").unwrap(),
        seed: 3,
        config: Config::default(),
        data,
        threads: 2,
        command: "trainspotter eval --mix quick --seed 3".into(),
        check_seeds: Vec::new(),
    };
    eval::run(&opts, out).unwrap()
}

#[test]
fn quick_mix_report_is_complete_and_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let e = quick(None, dir.path());

    for f in [
        "evaluation.md",
        "eval/eval.json",
        "eval/scores.svg",
        "eval/detection_time.svg",
        "eval/estimate_error.svg",
    ] {
        let p = dir.path().join(f);
        assert!(std::fs::metadata(&p).unwrap().len() > 0, "{f}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval/eval.json")).unwrap())
            .unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), e.runs.len());
    let md = std::fs::read_to_string(dir.path().join("evaluation.md")).unwrap();
    for section in [
        "## Targets",
        "## Detection per scenario",
        "## False alarms",
        "## Compute estimates",
        "Llama 3 405B",
        "## Real traces",
    ] {
        assert!(md.contains(section), "{section}");
    }
    for svg in ["scores.svg", "detection_time.svg", "estimate_error.svg"] {
        let text = std::fs::read_to_string(dir.path().join("eval").join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
            "{svg}"
        );
    }

    // Every scenario of the mix is summarised, with the runs and jobs the run list holds.
    assert_eq!(e.scenarios.len(), e.mix.scenarios.len());
    for s in &e.scenarios {
        let runs: Vec<_> = e.runs.iter().filter(|r| r.scenario == s.scenario).collect();
        assert_eq!(s.runs, runs.len(), "{:?}", s.scenario);
        assert_eq!(s.jobs, runs.iter().map(|r| r.jobs).sum::<usize>());
        let flagged = runs.iter().filter(|r| r.detect_minutes.is_some()).count();
        assert_eq!(s.flagged, flagged);
        assert!((s.flagged_share - flagged as f64 / runs.len() as f64).abs() < 1e-12);
        assert!(s.detected_within_target <= s.flagged && s.flagged <= s.flagged_any);
        assert_eq!(s.detect_minutes.n, flagged);
        let by_telemetry: usize = s.by_telemetry.iter().map(|(_, n, _)| n).sum();
        assert_eq!(by_telemetry, s.runs);
    }

    // False alarms: negative jobs are the negative runs' members; rates follow from the counts.
    let fa = &e.false_alarms;
    let negative_jobs: usize = e
        .runs
        .iter()
        .filter(|r| r.class == Class::Negative)
        .map(|r| r.jobs)
        .sum();
    assert_eq!(fa.negative_jobs, negative_jobs);
    assert!(
        fa.training_suspected_jobs <= fa.any_alert_jobs && fa.any_alert_jobs <= fa.negative_jobs
    );
    assert!(
        (fa.training_suspected_per_1000
            - fa.training_suspected_jobs as f64 * 1000.0 / negative_jobs as f64)
            .abs()
            < 1e-9
    );
    let flagged_negative_runs = e
        .runs
        .iter()
        .filter(|r| r.class == Class::Negative && r.detect_minutes.is_some())
        .count();
    assert_eq!(
        flagged_negative_runs, fa.training_suspected_jobs,
        "every negative run of the quick mix is one job"
    );

    // Scores: one per job, by class.
    let positive_jobs: usize = e
        .runs
        .iter()
        .filter(|r| r.class == Class::Positive)
        .map(|r| r.jobs)
        .sum();
    assert_eq!(e.scores_positive.len(), positive_jobs);
    assert_eq!(e.scores_negative.len(), negative_jobs);
    assert!(e
        .scores_positive
        .iter()
        .chain(&e.scores_negative)
        .all(|s| (0.0..=1.0).contains(s)));

    // Estimates: positives carry ground truth, an error that matches their estimate, and a band.
    for r in e.runs.iter().filter(|r| r.class == Class::Positive) {
        assert!(r.true_flop > 0.0, "{}", r.name);
        let err = r.estimate_error.unwrap();
        assert!((err - (r.estimated_flop.central / r.true_flop - 1.0)).abs() < 1e-12);
        assert_eq!(
            r.band_contains_truth,
            Some(r.estimated_flop.low <= r.true_flop && r.true_flop <= r.estimated_flop.high)
        );
        if let Some(m) = r.detect_minutes {
            assert!(m >= 0.0 && m <= r.simulated_hours * 60.0 + 60.0);
            assert!(
                m * 60.0 >= e.min_duration_s,
                "never before the duration gate"
            );
        }
        for p in &r.projections {
            if let (Some(t), Some(err)) = (p.true_crossing_h, p.error_h) {
                assert!((p.eta_h - t - err).abs() < 1e-9);
            }
        }
    }
    for r in e.runs.iter().filter(|r| r.class == Class::Negative) {
        assert!(r.estimate_error.is_none() && r.projections.is_empty());
    }

    // Targets: the recall target is the listed within-30-min detections of eligible positives.
    let eligible: Vec<_> = e
        .runs
        .iter()
        .filter(|r| r.class == Class::Positive && r.accelerators >= 256.0 && r.planned_hours >= 6.0)
        .collect();
    let within = eligible
        .iter()
        .filter(|r| r.detect_minutes.is_some_and(|m| m <= 30.0))
        .count();
    let recall = &e.targets[0];
    assert!(
        recall
            .value
            .contains(&format!("({within} of {})", eligible.len())),
        "{}",
        recall.value
    );
    assert_eq!(recall.pass, within as f64 / eligible.len() as f64 >= 0.99);
    assert!(e.targets.iter().any(|t| t.name.contains("Llama 3")));
}

#[test]
fn the_same_seed_gives_the_same_report_whatever_the_threads() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    quick(None, a.path());
    let opts = EvalOptions {
        mix: Mix::load("quick").unwrap(),
        seed: 3,
        config: Config::default(),
        data: None,
        threads: 1,
        command: "trainspotter eval --mix quick --seed 3".into(),
        check_seeds: Vec::new(),
    };
    eval::run(&opts, b.path()).unwrap();
    for f in [
        "evaluation.md",
        "eval/eval.json",
        "eval/scores.svg",
        "eval/detection_time.svg",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn mix_files_name_known_scenarios_only() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("mix.toml");
    std::fs::write(
        &good,
        "name = \"tiny\"\npositive_hours = 1.0\nnegative_hours = 1.0\nfleet_pods = 5\n[scenarios]\ndense-pretraining = 1\nmining = 2\n",
    )
    .unwrap();
    let mix = Mix::load(good.to_str().unwrap()).unwrap();
    assert_eq!(mix.scenarios["mining"], 2);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\npositive_hours = 1.0\nnegative_hours = 1.0\nfleet_pods = 5\n[scenarios]\nwarp-drive = 1\n").unwrap();
    assert!(Mix::load(bad.to_str().unwrap()).is_err());
}

/// `--check-seeds`: the same targets, on other draws of the mix, reported beside the main seed's;
/// a seed's targets are those of a run of that seed on its own.
#[test]
fn other_seeds_report_the_same_targets_as_their_own_runs() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EvalOptions {
        mix: Mix::load("quick").unwrap(),
        seed: 3,
        config: Config::default(),
        data: None,
        threads: 2,
        command: "trainspotter eval --mix quick --seed 3 --check-seeds 4".into(),
        check_seeds: vec![4],
    };
    let e = eval::run(&opts, dir.path()).unwrap();
    assert_eq!(e.other_seeds.len(), 1);
    let other = &e.other_seeds[0];
    assert_eq!(other.seed, 4);
    let alone = eval::run(
        &EvalOptions {
            seed: 4,
            check_seeds: Vec::new(),
            ..opts.clone()
        },
        tempfile::tempdir().unwrap().path(),
    )
    .unwrap();
    let names = |t: &[eval::score::Target]| -> Vec<(String, String, bool)> {
        t.iter()
            .map(|t| (t.name.clone(), t.value.clone(), t.pass))
            .collect()
    };
    assert_eq!(names(&other.targets), names(&alone.targets));
    assert_eq!(other.events, alone.events);
    let md = std::fs::read_to_string(dir.path().join("evaluation.md")).unwrap();
    assert!(md.contains("| target | seed 4 |"), "{md}");
}
