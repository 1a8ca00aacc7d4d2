//! Integration tests of the daemon (`run`) against librdkafka's in-process mock cluster: consume,
//! window, alert and dead-letter round trips, through the same code path as production.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use trainspotter::config::Config;
use trainspotter::decode::UsageSample;
use trainspotter::kafka;

const MIN: i64 = 60_000;

fn now_minute() -> i64 {
    chrono::Utc::now().timestamp_millis().div_euclid(MIN) * MIN
}

/// A steady 64-GPU H100 job sampled every minute for `minutes`, ending now.
fn training_job(minutes: i64) -> Vec<UsageSample> {
    let start = now_minute() - minutes * MIN;
    let mut v = Vec::new();
    for m in 1..=minutes {
        for gpu in 0..64 {
            v.push(
                UsageSample::new(start + m * MIN, "acme", 1.0, 60.0)
                    .job("pretrain")
                    .device(format!("node-{}", gpu / 8), (gpu % 8).to_string())
                    .accelerator("NVIDIA H100 80GB HBM3")
                    .tensor_active(0.45),
            );
        }
    }
    v
}

/// Key, payload and headers of one record.
type Record = (Option<String>, String, HashMap<String, String>);

fn record(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| {
                    (
                        x.key.to_string(),
                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (
        m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
        headers,
    )
}

struct Scope {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    _state: tempfile::TempDir,
    brokers: String,
    cfg: Config,
}

impl Scope {
    fn new() -> Scope {
        let cluster = MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let mut cfg = Config::default();
        cfg.kafka.brokers = brokers.clone();
        cfg.kafka.batch_wait = trainspotter::config::HumanDuration(Duration::from_millis(10));
        cfg.http.listen = "127.0.0.1:0".into();
        // The mock broker lets a stopped member's partitions go only when its session expires.
        cfg.kafka.session_timeout = trainspotter::config::HumanDuration(Duration::from_secs(6));
        let state = tempfile::tempdir().unwrap();
        cfg.state.dir = state.path().to_string_lossy().into_owned();
        cluster.create_topic(&cfg.kafka.topics[0], 2, 1).unwrap();
        cluster.create_topic(&cfg.kafka.alert_topic, 1, 1).unwrap();
        cluster
            .create_topic(&cfg.kafka.dead_letter_topic, 1, 1)
            .unwrap();
        Scope {
            cluster,
            _state: state,
            brokers,
            cfg,
        }
    }

    async fn produce(&self, key: &str, payloads: &[String]) {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap();
        let topic = &self.cfg.kafka.topics[0];
        let sends = payloads.iter().map(|payload| {
            p.send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.expect("produce to the mock cluster");
        }
    }

    /// Every record of `topic`: waits for the first, then reads until the topic is quiet for 3 s.
    async fn read_all(&self, topic: &str) -> Vec<Record> {
        let c = self.reader(&format!("reader-all-{topic}"), topic);
        let mut out = Vec::new();
        let first = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("records")
            .unwrap();
        out.push(record(&first));
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), c.recv()).await {
            out.push(record(&m));
        }
        out
    }

    fn reader(&self, group: &str, topic: &str) -> StreamConsumer {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        c
    }

    /// The records of `topic` that arrive within 2 s.
    async fn read_now(&self, topic: &str) -> Vec<Record> {
        let c = self.reader(&format!("reader-now-{topic}"), topic);
        let mut out = Vec::new();
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), c.recv()).await {
            out.push(record(&m));
        }
        out
    }

    /// Every record of `topic` (waits until `n` arrived).
    async fn read(&self, topic: &str, n: usize) -> Vec<Record> {
        let c = self.reader(&format!("reader-{topic}"), topic);
        let mut out = Vec::new();
        while out.len() < n {
            let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} records on {topic}", out.len()))
                .unwrap();
            out.push(record(&m));
        }
        out
    }
}

/// Waits up to `limit` for `done` to hold, checking every 50 ms; panics with `state()` if it does
/// not.
async fn wait_until(limit: Duration, done: impl Fn() -> bool, state: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{}", state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_consumed(running: &kafka::Running, n: u64) {
    let consumed = || running.metrics.events_consumed_total();
    wait_until(
        Duration::from_secs(60),
        || consumed() >= n,
        || format!("consumed {} of {n}", consumed()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_windows_and_alerts_round_trip() {
    let scope = Scope::new();
    let running = kafka::start(scope.cfg.clone()).await.unwrap();
    let events = training_job(120);
    let payloads: Vec<String> = events.iter().map(UsageSample::to_json).collect();
    scope.produce("acme", &payloads).await;
    // At-least-once delivery upstream: the latest 500 events (within the de-duplication horizon)
    // arrive twice.
    scope
        .produce("acme", &payloads[payloads.len() - 500..])
        .await;
    wait_consumed(&running, payloads.len() as u64 + 500).await;

    let tenants = running.tenants().await.unwrap().tenants;
    assert_eq!(tenants.len(), 1);
    assert_eq!(
        tenants[0].accelerator_seconds,
        64.0 * 120.0 * 60.0,
        "duplicates counted once"
    );
    let jobs = running.jobs().await.unwrap().jobs;
    assert_eq!(jobs[0].max_concurrent_accelerators, 64.0);
    assert!(jobs[0].suspected, "{:?}", jobs[0]);

    // The same state over HTTP, and the metrics.
    let base = format!("http://{}", running.http_addr);
    let body: serde_json::Value = ureq::get(&format!("{base}/api/v1/tenants"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(
        body["tenants"][0]["accelerator_seconds"],
        64.0 * 120.0 * 60.0
    );
    assert_eq!(
        ureq::get(&format!("{base}/readyz"))
            .call()
            .unwrap()
            .status(),
        200
    );
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("trainspotter_window_events_duplicate_total 500"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trainspotter_window_events_unverified_total 0"),
        "{metrics}"
    );

    let alerts = scope.read(&scope.cfg.kafka.alert_topic, 1).await;
    let (key, body, headers) = &alerts[0];
    assert_eq!(key.as_deref(), Some("TrainingSuspected|acme|pretrain|"));
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/cloudevents+json")
    );
    let ce: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["data"]["status"], "firing");
    assert_eq!(ce["data"]["tenant"], "acme");
    let fired: Vec<&str> = ce["data"]["evidence"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["fired"] == true)
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        fired.contains(&"accelerators") && fired.contains(&"activity"),
        "{fired:?}"
    );
    let metrics = running.metrics.clone();
    running.stop().await.unwrap();
    // Every record acknowledged is timed twice: from its batch's arrival and from its hand-over to
    // the producer, which comes later.
    let (delivered, since_batch) = metrics.alert_delivery_totals();
    let (acknowledged, since_produced) = metrics.alert_acknowledgement_totals();
    assert!(delivered >= 1);
    assert_eq!(acknowledged, delivered);
    assert!(
        since_produced <= since_batch,
        "{since_produced} s after hand-over, {since_batch} s after arrival"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advances_offset_past_poison_messages_via_the_dead_letter_topic() {
    let scope = Scope::new();
    let running = kafka::start(scope.cfg.clone()).await.unwrap();
    let good = UsageSample::new(now_minute(), "acme", 8.0, 30.0).to_json();
    let bad = [
        "not json at all".to_string(),
        r#"{"ts":1714564830000,"tenant":"acme","interval_s":-5}"#.to_string(),
        r#"{"tenant":"acme","interval_s":30}"#.to_string(),
        // Beyond the allowed future skew: would drag the watermark forward.
        format!(
            r#"{{"ts":{},"tenant":"acme","interval_s":30}}"#,
            now_minute() + 86_400_000
        ),
    ];
    let mut all = vec![good.clone()];
    all.extend(bad.iter().cloned());
    all.push(UsageSample::new(now_minute() + 1000, "acme", 8.0, 30.0).to_json());
    scope.produce("acme", &all).await;
    wait_consumed(&running, all.len() as u64).await;

    let dlq = scope
        .read(&scope.cfg.kafka.dead_letter_topic, bad.len())
        .await;
    let reasons: Vec<&str> = dlq
        .iter()
        .map(|(_, _, h)| h["trainspotter.reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "malformed_json",
            "non_positive",
            "missing_field",
            "bad_timestamp"
        ]
    );
    for (i, (key, payload, h)) in dlq.iter().enumerate() {
        assert_eq!(payload, &bad[i], "original payload preserved");
        assert_eq!(key.as_deref(), Some("acme"));
        assert_eq!(h["trainspotter.source.topic"], scope.cfg.kafka.topics[0]);
        assert!(
            h.contains_key("trainspotter.source.offset") && h.contains_key("trainspotter.detail")
        );
    }
    let tenants = running.tenants().await.unwrap().tenants;
    assert_eq!(
        tenants[0].accelerator_seconds,
        2.0 * 8.0 * 30.0,
        "good events on both sides of the poison counted"
    );
    // A dead letter counts as produced when the broker's acknowledgement reaches the producer,
    // which need not come before another client reads it back.
    let produced = "trainspotter_ingest_dead_letter_produced_total";
    wait_until(
        Duration::from_secs(30),
        || running.metrics.render().contains(&format!("{produced} 4")),
        || running.metrics.render(),
    )
    .await;
    let metrics = running.metrics.render();
    assert!(
        metrics.contains("trainspotter_ingest_events_rejected_total{reason=\"malformed_json\"} 1")
    );
    assert!(metrics.contains(&format!("{produced} 4")));
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_every_partition_of_a_keyed_topic() {
    let scope = Scope::new();
    let running = kafka::start(scope.cfg.clone()).await.unwrap();
    let t0 = now_minute() - 60 * MIN;
    let mut total = 0u64;
    for tenant in ["t-a", "t-b", "t-c", "t-d", "t-e", "t-f"] {
        let payloads: Vec<String> = (0..200)
            .map(|i| UsageSample::new(t0 + i * 1000, tenant, 2.0, 1.0).to_json())
            .collect();
        scope.produce(tenant, &payloads).await;
        total += payloads.len() as u64;
    }
    wait_consumed(&running, total).await;
    let tenants = running.tenants().await.unwrap().tenants;
    assert_eq!(tenants.len(), 6);
    assert!(
        tenants.iter().all(|t| t.accelerator_seconds == 400.0),
        "{tenants:?}"
    );
    running.stop().await.unwrap();
}

/// A graceful restart: the second instance restores the first one's checkpoints, resumes at their
/// offsets, counts nothing twice, and neither loses nor re-fires the active alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_neither_loses_nor_double_counts_nor_refires() {
    let scope = Scope::new();
    let events: Vec<String> = training_job(120).iter().map(UsageSample::to_json).collect();
    let (first, second) = events.split_at(64 * 80);

    let a = kafka::start(scope.cfg.clone()).await.unwrap();
    scope.produce("acme", first).await;
    wait_consumed(&a, first.len() as u64).await;
    assert!(a.jobs().await.unwrap().jobs[0].suspected);
    a.stop().await.unwrap();
    let files: Vec<_> = std::fs::read_dir(&scope.cfg.state.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!files.is_empty(), "a checkpoint was written at shutdown");

    let b = kafka::start(scope.cfg.clone()).await.unwrap();
    scope.produce("acme", second).await;
    wait_consumed(&b, second.len() as u64).await;
    let tenants = b.tenants().await.unwrap().tenants;
    assert_eq!(
        tenants[0].accelerator_seconds,
        64.0 * 120.0 * 60.0,
        "exact across the restart"
    );
    let jobs = b.jobs().await.unwrap().jobs;
    assert!(jobs[0].suspected);
    assert_eq!(jobs[0].max_concurrent_accelerators, 64.0);
    b.stop().await.unwrap();

    // Every TrainingSuspected record is the same alert: one start time, no second "firing" start.
    let all = scope.read_all(&scope.cfg.kafka.alert_topic).await;
    let starts: std::collections::BTreeSet<String> = all
        .iter()
        .map(|(_, b, _)| serde_json::from_str::<serde_json::Value>(b).unwrap())
        .filter(|ce| ce["data"]["alertname"] == "TrainingSuspected")
        .map(|ce| ce["data"]["startsAt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        starts.len(),
        1,
        "one TrainingSuspected start across the restart: {starts:?}"
    );
}

/// A damaged newest checkpoint (truncated, wrong checksum, older format version): the daemon says
/// so, restores the previous checkpoint, reads the partition again from that checkpoint's offset,
/// and the totals stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_falls_back_to_the_previous_one_and_totals_stay_exact() {
    let scope = Scope::new();
    // Eight parts of ten minutes: two lives before the first damage, two after each of three.
    let events: Vec<String> = training_job(80).iter().map(UsageSample::to_json).collect();
    let events: &'static [String] = Vec::leak(events);
    let mut parts = events.chunks(64 * 10);
    let mut produced = 0usize;
    // One instance's life: consume one more part of the stream, check the totals, stop (which
    // writes a checkpoint; the one before becomes `.prev`). Returns the instance's restores.
    let run = |part: &'static [String], produced_before: usize| {
        let cfg = scope.cfg.clone();
        let scope = &scope;
        async move {
            let d = kafka::start(cfg).await.unwrap();
            scope.produce("acme", part).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let want = ((produced_before + part.len()) * 60) as f64;
            loop {
                let got = d
                    .tenants()
                    .await
                    .unwrap()
                    .tenants
                    .first()
                    .map_or(0.0, |t| t.accelerator_seconds);
                assert!(
                    got <= want,
                    "counted {got} s, more than the {want} s produced"
                );
                if got == want {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{got} of {want} s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let text = d.metrics.render();
            d.stop().await.unwrap();
            text
        }
    };
    for part in parts.by_ref().take(2) {
        run(part, produced).await;
        produced += part.len();
    }
    let checkpoint = std::fs::read_dir(&scope.cfg.state.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "ckpt"))
        .expect("a checkpoint file");
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 3] = [
        ("truncated", |b| b.truncate(b.len() / 2)),
        ("wrong checksum", |b| {
            let last = b.len() - 1;
            b[last] ^= 0x55
        }),
        ("older format version", |b| {
            b[8..12].copy_from_slice(&0u32.to_le_bytes())
        }),
    ];
    for (what, damage) in damages {
        let mut bytes = std::fs::read(&checkpoint).unwrap();
        damage(&mut bytes);
        std::fs::write(&checkpoint, bytes).unwrap();
        // Restores `.prev` and reads the last part again: exact.
        let part = parts.next().unwrap();
        let text = run(part, produced).await;
        produced += part.len();
        let from_prev = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "trainspotter_checkpoint_restores_total{source=\"previous_checkpoint\"} ",
                )
            })
            .unwrap_or("0");
        assert_eq!(
            from_prev, "1",
            "{what}: the previous checkpoint was not used"
        );
        // One more clean life, so that both files are good again before the next damage.
        let part = parts.next().unwrap();
        run(part, produced).await;
        produced += part.len();
    }
    assert_eq!(produced, events.len());
}

/// The broker refuses the daemon's produce requests for a while (an outage of the alert path):
/// the alert raised meanwhile is retried until the broker takes it, the offsets of its batch do
/// not move before that, the daemon reports the stall, and nothing is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_raised_while_the_broker_refuses_them_are_delivered_after() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let scope = Scope::new();
    let payloads: Vec<String> = training_job(120).iter().map(UsageSample::to_json).collect();
    scope.produce("acme", &payloads).await;
    // The next produce requests fail with an error the client does not retry by itself.
    scope.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4],
    );
    let running = kafka::start(scope.cfg.clone()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !running
        .metrics
        .render()
        .lines()
        .any(|l| l.starts_with("trainspotter_alerts_produce_errors_total ") && !l.ends_with(" 0"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no alert delivery failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While the alert is refused, the batch that raised it does not count as processed (so no
    // checkpoint or commit can cover it), and the API still answers.
    let processed: Vec<Option<i64>> = running
        .partitions()
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.next_offset)
        .collect();
    assert!(
        processed
            .iter()
            .all(|o| o.is_none_or(|o| (o as usize) < payloads.len())),
        "the batch whose alert is undelivered counts as processed: {processed:?}"
    );
    assert!(
        scope
            .read_now(&scope.cfg.kafka.alert_topic)
            .await
            .is_empty(),
        "the alert was delivered while the broker refused it"
    );
    // The stuck delivery shows as a stall on /readyz once it lasts longer than the session
    // timeout (6 s here; the four refusals take 1 + 2 + 4 + 8 s of back-off).
    let readyz = format!("http://{}/readyz", running.http_addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    loop {
        let r = ureq::get(&readyz)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        if r.contains("stalled") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stall reported: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once the broker takes records again, the alert arrives, once as a start.
    let alerts = scope.read(&scope.cfg.kafka.alert_topic, 1).await;
    let ce: serde_json::Value = serde_json::from_str(&alerts[0].1).unwrap();
    assert_eq!(ce["data"]["alertname"], "TrainingSuspected");
    assert_eq!(ce["data"]["status"], "firing");
    wait_consumed(&running, payloads.len() as u64).await;
    let tenants = running.tenants().await.unwrap().tenants;
    assert_eq!(tenants[0].accelerator_seconds, 64.0 * 120.0 * 60.0);
    running.stop().await.unwrap();
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on loopback, stopped on drop.
struct Alertmanager {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start() -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: none\n  group_by: [alertname, tenant]\n  group_wait: 1s\n  group_interval: 1s\n\
             receivers:\n  - name: none\n",
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager (Debian package prometheus-alertmanager; run scripts/deps.sh)");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{base}/-/ready")).call().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "alertmanager did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Alertmanager {
            child,
            base,
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> serde_json::Value {
        ureq::get(&format!("{}{path}", self.base))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    }

    /// The active TrainingSuspected alerts of tenant acme.
    fn training_alerts(&self) -> Vec<serde_json::Value> {
        self.get("/api/v2/alerts")
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| {
                a["labels"]["alertname"] == "TrainingSuspected" && a["labels"]["tenant"] == "acme"
            })
            .cloned()
            .collect()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alerts reach a real Alertmanager through its API: the training alert arrives with its identity
/// as labels, is grouped by alert name and tenant, stays while re-sent, and resolves when the job
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_arrive_group_and_resolve_in_a_real_alertmanager() {
    let am = Alertmanager::start();
    let mut scope = Scope::new();
    scope.cfg.alertmanager.urls = vec![am.base.clone()];
    // Each push is valid for four re-send intervals (80 s): longer than the test waits for the
    // resolution, so the alert can only go by being resolved explicitly.
    scope.cfg.alertmanager.resend_interval =
        trainspotter::config::HumanDuration(Duration::from_secs(20));
    let running = kafka::start(scope.cfg.clone()).await.unwrap();
    // Two hours of a 64-GPU job that ended an hour ago.
    let hour_ago = now_minute() - 60 * MIN;
    let events: Vec<String> = training_job(120)
        .into_iter()
        .map(|mut s| {
            s.ts_ms -= 60 * MIN;
            s.to_json()
        })
        .collect();
    scope.produce("acme", &events).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let alert = loop {
        if let Some(a) = am.training_alerts().into_iter().next() {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no alert in alertmanager"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(alert["labels"]["job"], "pretrain");
    assert_eq!(alert["labels"]["source"], "trainspotter");
    assert!(alert["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("pretrain"));
    assert_eq!(alert["status"]["state"], "active");
    let groups = am.get("/api/v2/alerts/groups");
    assert!(
        groups.as_array().unwrap().iter().any(|g| g["labels"]
            == serde_json::json!({"alertname": "TrainingSuspected", "tenant": "acme"})
            && !g["alerts"].as_array().unwrap().is_empty()),
        "not grouped by alertname and tenant: {groups}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        am.training_alerts().len(),
        1,
        "one alert, however often pushed"
    );

    // Another tenant's sample an hour later moves event time past the job's end: resolved.
    let later = UsageSample::new(hour_ago + 60 * MIN, "other", 1.0, 60.0).to_json();
    scope.produce("other", &[later]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !am.training_alerts().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the alert did not resolve in alertmanager"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await.unwrap();
}

/// A topic in an exporter format, through the daemon: prometheus-kafka-adapter messages (one
/// metric each) are joined per GPU and scrape and counted exactly like native events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_adapter_topic_is_joined_per_gpu_and_scrape() {
    let mut scope = Scope::new();
    let topic = scope.cfg.kafka.topics[0].clone();
    scope
        .cfg
        .input
        .formats
        .insert(topic, trainspotter::config::InputFormat::PrometheusAdapter);
    let running = kafka::start(scope.cfg.clone()).await.unwrap();
    // 16 GPUs of pods trainer-0 and trainer-1 scraped every 30 s for an hour, three metrics each.
    let start = now_minute() - 60 * MIN;
    let mut messages = Vec::new();
    for k in 0..120 {
        let ts = chrono::DateTime::from_timestamp_millis(start + k * 30_000)
            .unwrap()
            .to_rfc3339();
        for g in 0..16 {
            for (name, value) in [
                ("DCGM_FI_DEV_GPU_UTIL", "98"),
                ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "0.45"),
                ("DCGM_FI_DEV_POWER_USAGE", "650.5"),
            ] {
                messages.push(format!(
                    "{{\"timestamp\":\"{ts}\",\"value\":\"{value}\",\"name\":\"{name}\",\"labels\":{{\"__name__\":\"{name}\",\
                     \"UUID\":\"GPU-{g}\",\"modelName\":\"NVIDIA H100 80GB HBM3\",\"Hostname\":\"node-{}\",\
                     \"namespace\":\"acme\",\"pod\":\"trainer-{}\"}}}}",
                    g / 8,
                    g / 8
                ));
            }
        }
    }
    // The adapter does not key its messages; all go to one partition here, in order.
    scope.produce("unkeyed", &messages).await;
    wait_consumed(&running, messages.len() as u64).await;
    // The last scrapes are joined once event time moves past them: a later scrape of one GPU.
    let later = chrono::DateTime::from_timestamp_millis(start + 120 * 30_000 + 90_000)
        .unwrap()
        .to_rfc3339();
    scope
        .produce(
            "unkeyed",
            &[format!(
                "{{\"timestamp\":\"{later}\",\"value\":\"1\",\"name\":\"DCGM_FI_DEV_GPU_UTIL\",\"labels\":{{\"UUID\":\"GPU-x\",\"namespace\":\"other\",\"pod\":\"x-0\"}}}}"
            )],
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = running.jobs().await.unwrap().jobs;
        if let Some(j) = jobs.iter().find(|j| j.job == "trainer") {
            if j.accelerator_seconds == 16.0 * 3600.0 {
                assert_eq!(j.max_concurrent_accelerators, 16.0);
                assert_eq!(j.tenant, "acme");
                break;
            }
            assert!(j.accelerator_seconds < 16.0 * 3600.0, "{j:?}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not joined and counted: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await.unwrap();
}

/// The tenant registry's compacted topic: read in full before consumption starts, followed while
/// running, applied over the registry file; a bad update is ignored and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_topic_updates_tenant_context_while_running() {
    let mut scope = Scope::new();
    let topic = "tenant-registry";
    scope.cluster.create_topic(topic, 1, 1).unwrap();
    scope.cfg.registry.topic = topic.into();
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &scope.brokers)
        .create()
        .unwrap();
    let put = |tenant: &'static str, value: Option<&'static str>| {
        let p = p.clone();
        async move {
            let mut r = FutureRecord::<str, str>::to(topic).key(tenant);
            if let Some(v) = value {
                r = r.payload(v);
            }
            p.send(r, Duration::from_secs(10)).await.expect("produce");
        }
    };
    put(
        "acme",
        Some(r#"{"organisation": "acme-group", "jurisdiction": "FR"}"#),
    )
    .await;
    put("gone", Some(r#"{"organisation": "elsewhere"}"#)).await;
    put("gone", None).await;

    let running = kafka::start(scope.cfg.clone()).await.unwrap();
    let payloads: Vec<String> = training_job(60).iter().map(UsageSample::to_json).collect();
    scope.produce("acme", &payloads).await;
    wait_consumed(&running, payloads.len() as u64).await;

    let alerts = scope.read(&scope.cfg.kafka.alert_topic, 1).await;
    let ce: serde_json::Value = serde_json::from_str(&alerts[0].1).unwrap();
    assert_eq!(
        ce["data"]["organisation"], "acme-group",
        "read before consumption began"
    );
    assert_eq!(
        ce["data"]["evidence"]["tenant_context"]["jurisdiction"],
        "FR"
    );

    let base = format!("http://{}", running.http_addr);
    let explain = || -> serde_json::Value {
        ureq::get(&format!("{base}/api/v1/explain?tenant=acme&job=pretrain"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    // A later update applies while running; an invalid one is ignored.
    put(
        "acme",
        Some(r#"{"organisation": "acme-group", "jurisdiction": "DE", "verification": "verified"}"#),
    )
    .await;
    put("acme", Some(r#"{"jurisdiction": "germany"}"#)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = ureq::get(&format!("{base}/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        if metrics.contains("trainspotter_registry_updates_total{result=\"error\"} 1") {
            assert!(
                metrics.contains("trainspotter_registry_updates_total{result=\"ok\"} 4"),
                "{metrics}"
            );
            assert!(
                metrics.contains("trainspotter_registry_tenants 1"),
                "{metrics}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ctx = &explain()["evidence"]["tenant_context"];
    assert_eq!(ctx["jurisdiction"], "DE");
    assert_eq!(ctx["verification"], "verified");
    let orgs: serde_json::Value = ureq::get(&format!("{base}/api/v1/organisations"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(orgs["organisations"][0]["organisation"], "acme-group");
    assert_eq!(
        orgs["organisations"][0]["accelerator_seconds"],
        64.0 * 60.0 * 60.0
    );
    running.stop().await.unwrap();
}
