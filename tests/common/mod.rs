//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared data folder: `TRAINSPOTTER_SHARED_DATA`, or `shared/data` beside the checkout.
pub fn shared_data() -> PathBuf {
    if let Ok(p) = std::env::var("TRAINSPOTTER_SHARED_DATA") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    assert!(
        p.is_dir(),
        "shared data not found at {}; set TRAINSPOTTER_SHARED_DATA",
        p.display()
    );
    p
}

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Python with kafka-python: `TRAINSPOTTER_PYTHON`, or the project's `.venv` (scripts/deps.sh).
pub fn python() -> PathBuf {
    let p = std::env::var("TRAINSPOTTER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "no Python with kafka-python at {}: run scripts/deps.sh",
        p.display()
    );
    p
}

/// A tansu broker process on loopback, started by scripts/broker.sh and stopped on drop.
pub struct Broker {
    pub bootstrap: String,
    port: u16,
    storage: &'static str,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a fresh broker with `topics` ("name:partitions"). Panics (fails the test) when the
    /// broker cannot be started: these tests never skip.
    ///
    /// Storage is tansu's `sqlite` engine, in the broker's temporary directory. Its `memory`
    /// engine (0.6.0) publishes a partition's new high watermark before it stores the record
    /// batch, so a fetch that runs while two producers write to one partition can return a later
    /// batch without the earlier one: the consumer moves past a record it never saw (seen with
    /// librdkafka in about 1 of 8 runs of the rolling-restart test: offsets 1538, 1540, 1541,
    /// 1542, 1542). The sqlite engine stores the batch and the watermark in one transaction.
    pub fn start(topics: &[&str]) -> Broker {
        Broker::start_with("sqlite", topics)
    }

    /// Starts a broker on tansu's `memory` or file-backed `sqlite` storage engine.
    pub fn start_with(storage: &'static str, topics: &[&str]) -> Broker {
        let port = free_port();
        let broker = Broker {
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            storage,
            dir: tempfile::tempdir().unwrap(),
        };
        broker.launch(topics);
        broker
    }

    fn launch(&self, topics: &[&str]) {
        let out = Command::new(repo().join("scripts/broker.sh"))
            .arg("start")
            .arg(self.port.to_string())
            .arg(self.dir.path())
            .args(topics)
            .env("BROKER_STORAGE", self.storage)
            .output()
            .expect("run scripts/broker.sh");
        assert!(
            out.status.success(),
            "tansu broker did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the broker process (its storage stays).
    pub fn stop(&self) {
        let status = Command::new(repo().join("scripts/broker.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status()
            .expect("run scripts/broker.sh");
        assert!(status.success());
    }

    /// Starts the stopped broker again on the same port and storage.
    pub fn restart(&self) {
        self.launch(&[]);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/broker.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// A child process killed on drop (so a failing test leaves nothing running).
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc(cmd.stdin(Stdio::null()).spawn().expect("spawn process"))
    }

    /// `trainspotter run --config CONFIG`, logging to LOG.
    pub fn daemon(binary: &str, config: &Path, log: &Path) -> Proc {
        let log =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        Proc::spawn(
            Command::new(binary)
                .arg("run")
                .arg("--config")
                .arg(config)
                .stdout(Stdio::null())
                .stderr(log),
        )
    }

    /// Sends SIGTERM and waits up to `grace` for the exit status.
    pub fn terminate(&mut self, grace: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {grace:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a Python script from tests/e2e with the kafka-python interpreter; returns stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/e2e").join(script))
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// GET a URL on loopback and return the body (panics on error statuses).
pub fn http_get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The value of an unlabelled sample in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---- Known event streams and their exact expected totals -------------------------------------

use std::collections::BTreeMap;

pub const MIN: i64 = 60_000;

/// Lifetime accelerator-ms and the value of each default window, per key ("tenant" or
/// "tenant/job").
pub type Totals = BTreeMap<String, (u64, Vec<u64>)>;

/// One produced usage event, as the expected values see it.
#[derive(Debug, Clone)]
pub struct Event {
    pub ts: i64,
    pub tenant: String,
    pub job: String,
    pub gpus: f64,
    pub interval_s: f64,
}

/// What to generate: `tenants` x `jobs` x `gpus_per_job` devices, one sample per device per minute
/// for `minutes` minutes ending at `end_ms`, with a poison message every `poison_every` minutes.
pub struct StreamSpec {
    pub tenants: usize,
    pub jobs: usize,
    pub gpus_per_job: usize,
    pub minutes: i64,
    pub end_ms: i64,
    pub poison_every: i64,
    pub producers: usize,
    pub seed: u64,
}

/// A generated stream: the events, the poison messages, and one NDJSON text per producer (all of a
/// tenant's messages go through one producer, in order).
pub struct Stream {
    pub events: Vec<Event>,
    pub poison: Vec<String>,
    pub texts: Vec<String>,
}

impl Stream {
    pub fn generate(spec: &StreamSpec) -> Stream {
        let mut rng = trainspotter::sim::SplitMix64::new(spec.seed);
        let start = spec.end_ms - spec.minutes * MIN;
        let mut events = Vec::new();
        let mut texts = vec![String::new(); spec.producers];
        let mut poison = Vec::new();
        for m in 1..=spec.minutes {
            let ts = start + m * MIN;
            for t in 0..spec.tenants {
                for j in 0..spec.jobs {
                    for g in 0..spec.gpus_per_job {
                        let tenant = format!("tenant-{t}");
                        let job = format!("job-{t}-{j}");
                        let gpus = 1 + (g % 3);
                        texts[t % spec.producers].push_str(&format!(
                            "{{\"ts\":{ts},\"tenant\":\"{tenant}\",\"job\":\"{job}\",\"node\":\"n{}\",\"gpu\":\"{}\",\
                             \"gpus\":{gpus},\"interval_s\":60,\"tensor_active\":{:.3}}}\n",
                            g / 8,
                            g % 8,
                            0.3 + 0.2 * rng.uniform()
                        ));
                        events.push(Event {
                            ts,
                            tenant,
                            job,
                            gpus: gpus as f64,
                            interval_s: 60.0,
                        });
                    }
                }
            }
            if spec.poison_every > 0 && m % spec.poison_every == 0 {
                let t = m as usize % spec.tenants;
                let p = format!(
                    "{{\"ts\":\"poison-{m}\",\"tenant\":\"tenant-{t}\",\"interval_s\":60}}"
                );
                let text = &mut texts[t % spec.producers];
                text.push_str(&p);
                text.push('\n');
                poison.push(p);
            }
        }
        Stream {
            events,
            poison,
            texts,
        }
    }

    /// Messages in the stream (events and poison).
    pub fn messages(&self) -> usize {
        self.events.len() + self.poison.len()
    }
}

/// Exact expected per-tenant and per-job totals of `events`, computed without the daemon: plain
/// sums of integer accelerator-ms, windows ending after the latest event.
pub fn expected(events: &[Event]) -> (Totals, Totals) {
    use trainspotter::estimate::accelerator_ms;
    let specs = trainspotter::config::Config::default()
        .validate()
        .unwrap()
        .windows;
    let latest = events.iter().map(|e| e.ts).max().unwrap_or(0);
    let expect = |evs: &[&Event]| -> (u64, Vec<u64>) {
        let total = evs
            .iter()
            .map(|e| accelerator_ms(e.gpus, e.interval_s))
            .sum();
        let windows = specs
            .iter()
            .map(|w| {
                let end = w.end_after(latest);
                evs.iter()
                    .filter(|e| e.ts >= end - w.width_ms() && e.ts < end)
                    .map(|e| accelerator_ms(e.gpus, e.interval_s))
                    .sum()
            })
            .collect();
        (total, windows)
    };
    let mut by_tenant: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    let mut by_job: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_tenant.entry(e.tenant.clone()).or_default().push(e);
        by_job
            .entry(format!("{}/{}", e.tenant, e.job))
            .or_default()
            .push(e);
    }
    (
        by_tenant
            .into_iter()
            .map(|(k, v)| (k, expect(&v)))
            .collect(),
        by_job.into_iter().map(|(k, v)| (k, expect(&v))).collect(),
    )
}

/// Starts one kafka-python producer per text (one message per record batch, see produce.py),
/// keyed by tenant.
pub fn spawn_producers(bootstrap: &str, topic: &str, texts: &[String], dir: &Path) -> Vec<Child> {
    spawn_producers_with(bootstrap, topic, texts, dir, &[])
}

/// `spawn_producers` with extra produce.py flags (e.g. `--unkeyed`).
pub fn spawn_producers_with(
    bootstrap: &str,
    topic: &str,
    texts: &[String],
    dir: &Path,
    flags: &[&str],
) -> Vec<Child> {
    texts
        .iter()
        .enumerate()
        .map(|(k, text)| {
            let file = dir.join(format!("events-{topic}-{k}-{}.ndjson", free_port()));
            write_file(&file, text);
            Command::new(python())
                .arg(repo().join("tests/e2e/produce.py"))
                .args([
                    "--bootstrap",
                    bootstrap,
                    "--topic",
                    topic,
                    "--one-per-batch",
                ])
                .args(flags)
                .arg("--file")
                .arg(&file)
                .stdout(Stdio::piped())
                .spawn()
                .expect("run produce.py")
        })
        .collect()
}

/// Waits for producers; returns how many messages they had acknowledged.
pub fn wait_producers(producers: Vec<Child>) -> usize {
    producers
        .into_iter()
        .map(|p| {
            let out = p.wait_with_output().unwrap();
            assert!(out.status.success(), "produce.py failed");
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse::<usize>()
                .unwrap()
        })
        .sum()
}

/// A daemon's totals from its API (`list` is "tenants" or "jobs"), summed over `bases` (several
/// instances of one group; a key held by two instances at once would be counted twice, as it
/// should be to show up).
pub fn api_totals(bases: &[String], list: &str) -> Option<Totals> {
    let specs = trainspotter::config::Config::default()
        .validate()
        .unwrap()
        .windows;
    let ms = |v: &serde_json::Value| (v.as_f64().unwrap_or(0.0) * 1000.0).round() as u64;
    let mut all = Totals::new();
    for base in bases {
        let body = ureq::get(&format!("{base}/api/v1/{list}"))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        for e in v[list].as_array()? {
            let tenant = e["tenant"].as_str()?;
            let key = match e["job"].as_str() {
                Some(job) => format!("{tenant}/{job}"),
                None => tenant.to_string(),
            };
            let entry = all.entry(key).or_insert_with(|| (0, vec![0; specs.len()]));
            entry.0 += ms(&e["accelerator_seconds"]);
            for (i, w) in specs.iter().enumerate() {
                entry.1[i] += ms(&e["windows"][&w.name]);
            }
        }
    }
    Some(all)
}

/// Whether `GET {base}/readyz` answers 200.
pub fn ready(base: &str) -> bool {
    ureq::get(&format!("{base}/readyz"))
        .call()
        .is_ok_and(|r| r.status() == 200)
}

/// Asserts that every message of `poison` is on the dead-letter topic `topic` (read with the
/// foreign client, as consumer group `group`). At least once: a copy written again after a crash
/// is allowed.
pub fn assert_dead_lettered<S: AsRef<str>>(
    bootstrap: &str,
    topic: &str,
    group: &str,
    poison: &[S],
) {
    let out = run_python(
        "consume.py",
        &[
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--group",
            group,
            "--expect",
            &poison.len().to_string(),
        ],
    );
    let dead: std::collections::BTreeSet<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["value"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for p in poison {
        assert!(
            dead.contains(p.as_ref()),
            "missing dead letter {}",
            p.as_ref()
        );
    }
}
