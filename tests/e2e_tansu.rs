//! End-to-end: the real `trainspotter` binary against a real Kafka-protocol broker process (tansu)
//! on loopback, fed and read by a foreign client (Python kafka-python); metrics checked by promtool.
//! These tests fail, never skip, when the broker or the tools are missing (scripts/deps.sh installs
//! them).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, metric, run_python, write_file, Broker, Proc};
use trainspotter::decode::UsageSample;
use trainspotter::estimate::accelerator_ms;

const MIN: i64 = 60_000;
const USAGE: &str = "gpu-usage";
const ALERTS: &str = "trainspotter-alerts";
const DLQ: &str = "trainspotter-dead-letter";

/// The workload: a 64-GPU pretraining job of tenant acme for 2 h, allocation-only samples of tenant
/// lab (no job, no activity) for 2 h, the latest 200 acme events delivered twice, and 3 poison
/// messages. Returns (lines, expected accelerator-ms per tenant, expected per job).
fn workload() -> (Vec<String>, Vec<UsageSample>) {
    let end = chrono::Utc::now().timestamp_millis().div_euclid(MIN) * MIN;
    let start = end - 120 * MIN;
    let mut samples = Vec::new();
    for m in 1..=120 {
        let ts = start + m * MIN;
        for gpu in 0..64 {
            samples.push(
                UsageSample::new(ts, "acme", 1.0, 60.0)
                    .job("pretrain")
                    .device(format!("node-{}", gpu / 8), (gpu % 8).to_string())
                    .accelerator("NVIDIA H100 80GB HBM3")
                    .tensor_active(0.40 + 0.01 * (gpu % 3) as f64),
            );
        }
        samples.push(UsageSample::new(
            ts - 7_000,
            "lab",
            (100 + m % 7) as f64,
            60.0,
        ));
    }
    let mut lines: Vec<String> = samples.iter().map(UsageSample::to_json).collect();
    let acme_latest: Vec<String> = samples
        .iter()
        .filter(|s| s.tenant == "acme")
        .rev()
        .take(200)
        .map(UsageSample::to_json)
        .collect();
    lines.extend(acme_latest);
    lines.push("{\"ts\": \"yesterday-ish\", \"tenant\": \"acme\", \"interval_s\": 60}".into());
    lines.push(
        "{\"ts\": 1714564830000, \"tenant\": \"acme\", \"interval_s\": 60, \"tensor_active\": 4}"
            .into(),
    );
    lines.push("\u{0}\u{1} binary junk".into());
    (lines, samples)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn daemon_on_tansu_counts_exactly_alerts_and_dead_letters_for_a_foreign_client() {
    let broker = Broker::start(&[
        &format!("{USAGE}:3"),
        &format!("{ALERTS}:1"),
        &format!("{DLQ}:1"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (lines, samples) = workload();
    let events = dir.path().join("events.ndjson");
    write_file(&events, &(lines.join("\n") + "\n"));

    let produced: usize = run_python(
        "produce.py",
        &[
            "--bootstrap",
            &broker.bootstrap,
            "--topic",
            USAGE,
            "--file",
            events.to_str().unwrap(),
        ],
    )
    .trim()
    .parse()
    .unwrap();
    assert_eq!(produced, lines.len());

    let http_port = common::free_port();
    let config = dir.path().join("trainspotter.toml");
    let registry = dir.path().join("tenants.toml");
    write_file(
        &registry,
        "[tenants.acme]\norganisation = \"acme-group\"\njurisdiction = \"DE\"\nforeign_person = true\n",
    );
    write_file(
        &config,
        &format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"e2e\"\ntopics = [\"{USAGE}\"]\nalert_topic = \"{ALERTS}\"\n\
             dead_letter_topic = \"{DLQ}\"\nbatch_wait = \"20ms\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [state]\ndir = \"{}\"\n[registry]\nfile = \"{}\"\n[log]\nformat = \"json\"\n",
            broker.bootstrap,
            dir.path().join("state").display(),
            registry.display()
        ),
    );
    let mut daemon = Proc::daemon(
        env!("CARGO_BIN_EXE_trainspotter"),
        &config,
        &dir.path().join("daemon.log"),
    );
    let base = format!("http://127.0.0.1:{http_port}");
    let daemon_log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    wait_for(
        "the daemon to consume every message",
        Duration::from_secs(120),
        || {
            let m = ureq::get(&format!("{base}/metrics"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok());
            m.and_then(|m| metric(&m, "trainspotter_ingest_events_consumed_total"))
                == Some(lines.len() as f64)
        },
    );
    assert_eq!(
        ureq::get(&format!("{base}/readyz"))
            .call()
            .map(|r| r.status().as_u16())
            .ok(),
        Some(200),
        "{}",
        daemon_log()
    );

    // Exact totals, computed independently from what was produced.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for s in &samples {
        *expected.entry(s.tenant.clone()).or_default() += accelerator_ms(s.gpus, s.interval_s);
    }
    let tenants: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{base}/api/v1/tenants"))).unwrap();
    let got: BTreeMap<String, u64> = tenants["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tenant"].as_str().unwrap().to_string(),
                (t["accelerator_seconds"].as_f64().unwrap() * 1000.0).round() as u64,
            )
        })
        .collect();
    assert_eq!(got, expected);
    let jobs: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{base}/api/v1/jobs?tenant=acme"))).unwrap();
    let job = &jobs["jobs"][0];
    assert_eq!(job["job"], "pretrain");
    assert_eq!(job["accelerator_seconds"], 64.0 * 120.0 * 60.0);
    assert_eq!(job["max_concurrent_accelerators"], 64.0);
    assert_eq!(job["suspected"], true);

    // The same job explained: every feature against its thresholds, with the tenant's context.
    let why: serde_json::Value = serde_json::from_str(&http_get(&format!(
        "{base}/api/v1/explain?tenant=acme&job=pretrain"
    )))
    .unwrap();
    assert_eq!(why["suspected"], true);
    assert_eq!(why["evidence"]["features"][0]["value"], 64.0);
    assert_eq!(why["evidence"]["tenant_context"]["jurisdiction"], "DE");
    let missing = ureq::get(&format!("{base}/api/v1/explain?tenant=acme&job=nope")).call();
    assert!(
        matches!(missing, Err(ureq::Error::StatusCode(404))),
        "{missing:?}"
    );
    // The registry puts acme in an organisation, accounted like a tenant.
    let orgs: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{base}/api/v1/organisations"))).unwrap();
    assert_eq!(orgs["organisations"][0]["organisation"], "acme-group");
    assert_eq!(
        orgs["organisations"][0]["accelerator_seconds"]
            .as_f64()
            .unwrap()
            * 1000.0,
        expected["acme"] as f64
    );

    // The same file through `replay` gives the same accounting (one pipeline, two front doors).
    let report_path = dir.path().join("report.json");
    let replay = Command::new(env!("CARGO_BIN_EXE_trainspotter"))
        .args(["replay", "--report"])
        .arg(&report_path)
        .arg(&events)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    for (a, b) in report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .zip(tenants["tenants"].as_array().unwrap())
    {
        assert_eq!(a["tenant"], b["tenant"]);
        assert_eq!(a["accelerator_seconds"], b["accelerator_seconds"]);
        assert_eq!(a["windows"], b["windows"]);
    }
    assert_eq!(report["events"]["duplicate"], 200);
    assert_eq!(report["events"]["rejected"], 3);

    // Metrics: promtool accepts the exposition, and the counts are right. A batch's messages count
    // as consumed when it is processed, its dead letters as produced once the broker acknowledged
    // them, which can come later.
    wait_for(
        "the broker to acknowledge the dead letters",
        Duration::from_secs(30),
        || {
            metric(
                &http_get(&format!("{base}/metrics")),
                "trainspotter_ingest_dead_letter_produced_total",
            )
            .is_some_and(|n| n >= 3.0)
        },
    );
    let metrics = http_get(&format!("{base}/metrics"));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/deps.sh)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        metric(&metrics, "trainspotter_window_events_duplicate_total"),
        Some(200.0)
    );
    assert_eq!(
        metric(&metrics, "trainspotter_ingest_dead_letter_produced_total"),
        Some(3.0)
    );

    // The foreign client reads the dead letters (with reasons) and the alerts.
    let dlq = run_python(
        "consume.py",
        &[
            "--bootstrap",
            &broker.bootstrap,
            "--topic",
            DLQ,
            "--group",
            "e2e-dlq",
            "--expect",
            "3",
        ],
    );
    let mut reasons: Vec<String> = dlq
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["headers"]["trainspotter.reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["bad_timestamp", "malformed_json", "out_of_range"]);

    let alerts = run_python(
        "consume.py",
        &[
            "--bootstrap",
            &broker.bootstrap,
            "--topic",
            ALERTS,
            "--group",
            "e2e-alerts",
            "--expect",
            "1",
        ],
    );
    let first: serde_json::Value = serde_json::from_str(alerts.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["headers"]["content-type"],
        "application/cloudevents+json"
    );
    let ce: serde_json::Value = serde_json::from_str(first["value"].as_str().unwrap()).unwrap();
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["data"]["alertname"], "TrainingSuspected");
    assert_eq!(ce["data"]["job"], "pretrain");
    assert_eq!(ce["data"]["scope"], "job");
    assert_eq!(ce["data"]["organisation"], "acme-group");
    assert_eq!(first["key"], "TrainingSuspected|acme|pretrain|");

    // Graceful shutdown on SIGTERM: drains, commits, exits 0.
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}\n{}", daemon_log());
    assert!(
        daemon_log().contains("offsets committed"),
        "{}",
        daemon_log()
    );
}
