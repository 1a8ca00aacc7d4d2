//! The command line: `check-config` and `replay` as a user runs them, and golden alert output.

mod common;

use std::io::Write;
use std::process::Command;

use common::write_file;
use trainspotter::decode::UsageSample;
use trainspotter::sim::Fleet;

fn trainspotter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainspotter"))
}

#[test]
fn check_config_prints_effective_settings_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ok.toml");
    write_file(
        &f,
        "[kafka]\nbrokers = \"kafka-1:9092\"\nsasl_password = \"s3cret\"\n",
    );
    let out = trainspotter().arg("check-config").arg(&f).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("brokers = \"kafka-1:9092\""), "{text}");
    assert!(
        text.contains("allowed_lateness = \"5m\""),
        "defaults are shown: {text}"
    );
    assert!(!text.contains("s3cret"));
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        (
            "[windows]\nallowed_lateness = \"eventually\"\n",
            "windows.allowed_lateness",
        ),
        ("[detection]\nscore_treshold = 0.9\n", "score_treshold"),
        (
            "[[windows.sliding]]\nname = \"x\"\nwidth = \"1h\"\nslide = \"7m\"\n",
            "windows.sliding[0].slide",
        ),
    ] {
        let f = dir.path().join("bad.toml");
        write_file(&f, text);
        let out = trainspotter().arg("check-config").arg(&f).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{text}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(key), "error should name {key}: {err}");
    }
    let out = trainspotter()
        .args(["check-config", "/nonexistent/trainspotter.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    // Environment overrides are validated the same way.
    let out = trainspotter()
        .args(["replay", "-"])
        .env("TRAINSPOTTER__METRICS__TOP_TENANTS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics.top_tenants"));
}

#[test]
fn replay_reads_gzip_writes_report_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_714_521_600_000i64;
    let mut text = String::new();
    for m in 0..10 {
        text.push_str(
            &UsageSample::new(t0 + m * 60_000, "t1", 4.0, 60.0)
                .job("j1")
                .to_json(),
        );
        text.push('\n');
    }
    text.push_str("\n{\"ts\":1,\"tenant\":\"t1\",\"interval_s\":60}\n");
    let gz = dir.path().join("events.ndjson.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap();
    let report = dir.path().join("report.json");
    let dead = dir.path().join("dead.ndjson");
    let out = trainspotter()
        .args(["replay", "--report"])
        .arg(&report)
        .arg("--dead-letter")
        .arg(&dead)
        .arg(&gz)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["events"]["accepted"], 10);
    assert_eq!(r["events"]["rejected"], 1);
    assert_eq!(r["max_event_time"], "2024-05-01T00:09:00.000Z");
    assert_eq!(r["tenants"][0]["accelerator_seconds"], 2400.0);
    assert_eq!(r["tenants"][0]["windows"]["1h"], 2400.0);
    assert_eq!(r["jobs"][0]["job"], "j1");
    let dl: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&dead).unwrap().trim()).unwrap();
    assert_eq!(dl["line"], 12);
    assert_eq!(dl["reason"], "bad_timestamp");
}

/// Alert output on a fixed simulated trace must not change unless the change is intended.
/// Regenerate with `UPDATE_GOLDEN=1 cargo test --test cli`.
#[test]
fn replay_alerts_on_the_demo_fleet_match_the_golden_file() {
    let t0 = 1_714_521_600_000i64; // 2024-05-01T00:00:00Z
    let hours = 4;
    let mut fleet = Fleet::demo(t0, hours, 42);
    let mut text = String::new();
    let mut batch = Vec::new();
    let mut t = t0;
    while t <= t0 + hours as i64 * 3_600_000 {
        batch.clear();
        fleet.samples_at(t, &mut batch);
        for s in &batch {
            text.push_str(&s.to_json());
            text.push('\n');
        }
        t += 60_000;
    }
    let mut alerts = Vec::new();
    let cfg = trainspotter::config::Config::default();
    trainspotter::replay::replay(
        &cfg,
        &mut std::io::Cursor::new(text),
        &mut alerts,
        None,
        false,
    )
    .unwrap();
    let got = String::from_utf8(alerts).unwrap();
    let path = common::repo().join("tests/golden/demo_fleet_4h_alerts.jsonl");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        write_file(&path, &got);
    }
    let want =
        std::fs::read_to_string(&path).expect("golden file exists (UPDATE_GOLDEN=1 creates it)");
    assert_eq!(
        got, want,
        "alert output changed; inspect and regenerate with UPDATE_GOLDEN=1 if intended"
    );
    // What the golden file must say, whatever its details: the pretraining run is suspected and
    // projected; nothing else is suspected.
    let names: Vec<(String, String)> = got
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["data"]["alertname"].as_str().unwrap().to_string(),
                v["data"]["job"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        names.contains(&("TrainingSuspected".into(), "pretrain-70b".into())),
        "{names:?}"
    );
    assert!(
        names.contains(&("ComputeThresholdProjected".into(), "pretrain-70b".into())),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|(n, j)| n != "TrainingSuspected" || j == "pretrain-70b"),
        "{names:?}"
    );
}

/// The example configuration is valid, equals the defaults, and documents every key.
#[test]
fn example_configuration_is_valid_complete_and_matches_the_defaults() {
    let path = common::repo().join("deploy/trainspotter.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let example = trainspotter::config::Config::from_toml(&text).unwrap();
    let defaults = trainspotter::config::Config::default();
    assert_eq!(
        example.to_redacted_toml(),
        defaults.to_redacted_toml(),
        "example differs from the defaults"
    );
    let rendered: toml::Table = toml::from_str(&defaults.to_redacted_toml()).unwrap();
    fn keys(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in t {
            match v {
                toml::Value::Table(inner) => keys(&format!("{prefix}{k}."), inner, out),
                _ => out.push(format!("{prefix}{k}")),
            }
        }
    }
    let mut all = Vec::new();
    keys("", &rendered, &mut all);
    let documented: toml::Table = toml::from_str(&text).unwrap();
    let mut present = Vec::new();
    keys("", &documented, &mut present);
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| {
            !present.contains(k) && !text.contains(&format!("# {}", k.rsplit('.').next().unwrap()))
        })
        .collect();
    assert!(missing.is_empty(), "keys not in the example: {missing:?}");
}

#[test]
fn environment_overrides_the_file_including_lists() {
    let out = trainspotter()
        .arg("check-config")
        .arg(common::repo().join("deploy/trainspotter.example.toml"))
        .env("TRAINSPOTTER__KAFKA__BROKERS", "kafka-9:9092")
        .env("TRAINSPOTTER__KAFKA__TOPICS", "dcgm-a,dcgm-b")
        .env("TRAINSPOTTER__WINDOWS__ALLOWED_LATENESS", "2m")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(cfg["kafka"]["brokers"].as_str(), Some("kafka-9:9092"));
    let topics: Vec<&str> = cfg["kafka"]["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(topics, ["dcgm-a", "dcgm-b"]);
    assert_eq!(cfg["windows"]["allowed_lateness"].as_str(), Some("2m"));
}

#[test]
fn simulate_writes_events_that_replay_accepts_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.ndjson");
    let out = trainspotter()
        .args(["simulate", "--hours", "2", "--output"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: u64 = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("simulate says how many events it wrote");
    let lines = std::fs::read_to_string(&file).unwrap().lines().count() as u64;
    assert_eq!(said, lines);
    assert!(lines > 0);
    let report = dir.path().join("report.json");
    let out = trainspotter()
        .arg("replay")
        .arg("--report")
        .arg(&report)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["events"]["accepted"], lines);
    assert_eq!(r["events"]["rejected"], 0);
    assert_eq!(r["events"]["duplicate"], 0);
}

#[test]
fn the_tenant_registry_file_is_checked_with_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let example = common::repo().join("deploy/tenants.example.toml");
    let cfg = dir.path().join("ok.toml");
    write_file(
        &cfg,
        &format!("[registry]\nfile = {:?}\n", example.display().to_string()),
    );
    let out = trainspotter()
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the example registry is valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registry = dir.path().join("tenants.toml");
    write_file(&registry, "[tenants.acme]\njurisdiction = \"usa\"\n");
    write_file(
        &cfg,
        &format!("[registry]\nfile = {:?}\n", registry.display().to_string()),
    );
    let out = trainspotter()
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("registry.file"), "{err}");
    assert!(err.contains("tenants.acme.jurisdiction"), "{err}");
}

#[test]
fn explain_shows_every_feature_of_a_job_against_its_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.ndjson");
    let out = trainspotter()
        .args(["simulate", "--hours", "3", "--output"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let explain = |job: &str| {
        trainspotter()
            .args(["explain", "--job", job])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = explain("pretrain-70b");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let x = &v[0];
    assert_eq!(x["tenant"], "frontier-labs");
    assert_eq!(x["suspected"], true);
    let names: Vec<&str> = x["evidence"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "accelerators",
            "duration_seconds",
            "activity",
            "temporal_variation",
            "rank_spread",
            "gang_synchrony",
            "memory_gib"
        ]
    );
    assert_eq!(x["evidence"]["nodes"], 64);
    // The serving fleet is explained too: it is not suspected, and the reasons say why.
    let v: serde_json::Value = serde_json::from_slice(&explain("llm-serving").stdout).unwrap();
    assert_eq!(v[0]["suspected"], false);
    let reasons = v[0]["evidence"]["reasons"].as_array().unwrap();
    assert!(
        reasons.iter().map(|r| r.as_str().unwrap()).any(|r| {
            r.starts_with("gang_synchrony")
                && r.contains("required gate")
                && r.ends_with("not reached")
        }),
        "independent replicas are not in lockstep: {reasons:?}"
    );
    let out = explain("no-such-job");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job no-such-job"));
}

/// `bench` measures the fleet it generated: every device is a series, every job and tenant with a
/// device is held, every event is accepted, and the checkpoint restores the same series.
#[test]
fn bench_measures_the_state_of_the_fleet_it_generated() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = trainspotter()
        .args(["bench", "--gpus", "400", "--jobs", "40", "--tenants", "8"])
        .args(["--rounds", "10", "--batch", "64", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "| pipeline, steady rounds |",
        "| steady rounds without an evaluation / with one or more |",
        "| state per job |",
        "| restore (400 series) |",
    ] {
        assert!(stdout.contains(row), "missing {row} in\n{stdout}");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let o = &v["in_process"];
    assert_eq!(o["footprint"]["series"], 400);
    assert_eq!(o["footprint"]["jobs"], 40);
    assert!(o["footprint"]["tenants"].as_u64().unwrap() <= 8);
    assert_eq!(o["round_events_per_s"].as_array().unwrap().len(), 9);
    // Ten rounds of 10 s: the first evaluation falls in the seventh (the watermark trails the
    // newest event by the allowed lateness), and its time is its round's alone.
    let evaluations: Vec<u64> = o["round_evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(evaluations, [0, 0, 0, 0, 0, 1, 0, 0, 0]);
    let times = o["round_evaluation_s"].as_array().unwrap();
    assert_eq!(times.len(), 9);
    for (t, n) in times.iter().zip(&evaluations) {
        let t = t.as_f64().unwrap();
        assert!(
            if *n > 0 { t > 0.0 } else { t == 0.0 },
            "{t} s for {n} evaluations"
        );
    }
    assert!(o["steady_events_per_s"].as_f64().unwrap() > 0.0);
    assert!(o["footprint"]["job_bytes"].as_u64().unwrap() > 0);
    assert!(v["kafka"].is_null(), "no broker was named");
}
