//! A consumer group against a real tansu broker: a rolling restart of two instances that hand
//! partitions (and their state, through the changelog topic) back and forth, and a broker restart
//! on tansu's file-backed storage that the daemon rides out. Totals must stay exact in both.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    api_totals, expected, http_get, metric, spawn_producers, wait_producers, write_file, Broker,
    Proc, Stream, StreamSpec, Totals, MIN,
};

const USAGE: &str = "gpu-usage";
const ALERTS: &str = "trainspotter-alerts";
const DLQ: &str = "trainspotter-dead-letter";
const CHANGELOG: &str = "trainspotter-changelog";

struct Instance {
    name: String,
    config: std::path::PathBuf,
    base: String,
    proc: Option<Proc>,
    starts: u32,
    dir: std::path::PathBuf,
}

impl Instance {
    /// An instance of group "group-test" with `assignment` as its assignment strategy and `state`
    /// appended to its [state] section.
    fn new(dir: &Path, name: &str, bootstrap: &str, assignment: &str, state: &str) -> Instance {
        let port = common::free_port();
        let config = dir.join(format!("{name}.toml"));
        write_file(
            &config,
            &format!(
                "[kafka]\nbrokers = \"{bootstrap}\"\ngroup_id = \"group-test\"\nsession_timeout = \"10s\"\n\
                 drain_timeout = \"5s\"\ntopics = [\"{USAGE}\"]\nalert_topic = \"{ALERTS}\"\n\
                 dead_letter_topic = \"{DLQ}\"\nbatch_wait = \"20ms\"\nassignment_strategy = \"{assignment}\"\n\
                 [input]\nmax_future_skew = \"1h\"\n\
                 [state]\ndir = \"{}\"\ncheckpoint_interval = \"1s\"\n{state}\n\
                 [http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nformat = \"json\"\n",
                dir.join(format!("state-{name}")).display()
            ),
        );
        Instance {
            name: name.into(),
            config,
            base: format!("http://127.0.0.1:{port}"),
            proc: None,
            starts: 0,
            dir: dir.to_path_buf(),
        }
    }

    fn start(&mut self) {
        let log = self.dir.join(format!("{}-{}.log", self.name, self.starts));
        self.starts += 1;
        self.proc = Some(Proc::daemon(
            env!("CARGO_BIN_EXE_trainspotter"),
            &self.config,
            &log,
        ));
    }

    fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !common::ready(&self.base) {
            assert!(
                Instant::now() < deadline,
                "{} not ready within {within:?}:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn terminate(&mut self) {
        let mut p = self.proc.take().expect("running");
        let status = p.terminate(Duration::from_secs(60));
        assert!(status.success(), "{} exited with {status:?}", self.name);
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for n in 0..self.starts {
            let text = std::fs::read_to_string(self.dir.join(format!("{}-{n}.log", self.name)))
                .unwrap_or_default();
            for line in text.lines().filter(|l| !l.contains("alert delivered")) {
                out.push_str(&format!("[{}-{n}] {line}\n", self.name));
            }
        }
        out
    }
}

/// The partitions an instance owns now (none when it does not answer).
fn owned(base: &str) -> Vec<i64> {
    let Ok(mut r) = ureq::get(&format!("{base}/api/v1/partitions")).call() else {
        return Vec::new();
    };
    let Ok(body) = r.body_mut().read_to_string() else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["partitions"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["partition"].as_i64()).collect())
        .unwrap_or_default()
}

/// Waits until the instances' totals equal the expected ones; panics with the logs if they do not
/// within `within`. Totals never exceed what was produced on the way.
fn wait_exact(
    bases: &[String],
    want: &(Totals, Totals),
    within: Duration,
    logs: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    loop {
        let tenants = api_totals(bases, "tenants");
        let jobs = api_totals(bases, "jobs");
        if let Some(t) = &tenants {
            for (k, v) in t {
                let produced = want.0.get(k).map_or(0, |e| e.0);
                assert!(
                    v.0 <= produced,
                    "{k} counted {} ms, more than the {produced} ms produced",
                    v.0
                );
            }
        }
        if tenants.as_ref() == Some(&want.0) && jobs.as_ref() == Some(&want.1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not exact within {within:?}:\n got {tenants:?}\n want {:?}\n{}",
            want.0,
            logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn rolling_restart_of_two_instances_hands_partitions_over_with_their_state_and_keeps_totals_exact()
{
    let broker = Broker::start(&[
        &format!("{USAGE}:4"),
        &format!("{ALERTS}:1"),
        &format!("{DLQ}:1"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let stream = Stream::generate(&StreamSpec {
        tenants: 8,
        jobs: 2,
        gpus_per_job: 8,
        minutes: 600,
        end_ms: chrono::Utc::now().timestamp_millis().div_euclid(MIN) * MIN,
        poison_every: 100,
        producers: 4,
        seed: 11,
    });
    // The changelog topic is not created here: the daemon creates it.
    let state = format!("changelog_topic = \"{CHANGELOG}\"");
    // Eager assignment: tansu 0.6's group coordinator, under cooperative-sticky, leaves partitions
    // that one member revoked unassigned until the group's membership changes again (seen here:
    // a partition unowned for 10 s and more, and two owners of one partition at once).
    let mut a = Instance::new(dir.path(), "a", &broker.bootstrap, "roundrobin", &state);
    let mut b = Instance::new(dir.path(), "b", &broker.bootstrap, "roundrobin", &state);
    a.start();
    a.wait_ready(Duration::from_secs(60));
    b.start();
    b.wait_ready(Duration::from_secs(60));
    let bases = vec![a.base.clone(), b.base.clone()];

    // Watch ownership: for each partition, the longest time no instance owned it.
    let stop = Arc::new(AtomicBool::new(false));
    let gaps: Arc<Mutex<BTreeMap<i64, Duration>>> = Arc::default();
    let watcher = {
        let (stop, gaps, bases) = (stop.clone(), gaps.clone(), bases.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut last_owned: BTreeMap<i64, Instant> =
                (0..4).map(|p| (p, Instant::now())).collect();
            let mut previous = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let by_instance: Vec<Vec<i64>> = bases.iter().map(|b| owned(b)).collect();
                if by_instance != previous {
                    eprintln!(
                        "{:7.2}s owned by a, b: {by_instance:?}",
                        t0.elapsed().as_secs_f64()
                    );
                    previous = by_instance.clone();
                }
                let now_owned: BTreeSet<i64> = by_instance.into_iter().flatten().collect();
                let now = Instant::now();
                let mut g = gaps.lock().unwrap();
                for (p, seen) in last_owned.iter_mut() {
                    if now_owned.contains(p) {
                        *seen = now;
                    }
                    let gap = g.entry(*p).or_default();
                    *gap = (*gap).max(now - *seen);
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let producers = spawn_producers(&broker.bootstrap, USAGE, &stream.texts, dir.path());
    // Two rounds of a rolling restart while the stream is being produced and consumed.
    // Each instance in turn stops; the other takes all partitions over, the ones it did not have
    // restored from the changelog (its own directory has no newer state of them); then the
    // stopped instance comes back and the group splits the partitions again.
    let t0 = Instant::now();
    let restores = |base: &str, source: &str| {
        metric(
            &http_get(&format!("{base}/metrics")),
            &format!("trainspotter_checkpoint_restores_total{{source=\"{source}\"}}"),
        )
        .unwrap_or(0.0)
    };
    // Restores from a snapshot, by where it came from.
    let snapshots = |base: &str| (restores(base, "changelog"), restores(base, "checkpoint"));
    let mut handed_over = 0.0;
    for _round in 0..2 {
        for (stopping, survivor) in [(&mut a, bases[1].as_str()), (&mut b, bases[0].as_str())] {
            std::thread::sleep(Duration::from_secs(2));
            let before = snapshots(survivor);
            eprintln!(
                "{:7.2}s restarting {}",
                t0.elapsed().as_secs_f64(),
                stopping.name
            );
            stopping.terminate();
            let deadline = Instant::now() + Duration::from_secs(30);
            while owned(survivor).len() < 4 {
                assert!(
                    Instant::now() < deadline,
                    "the partitions of a stopped instance did not move within 30 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let after = snapshots(survivor);
            let (changelog, local) = (after.0 - before.0, after.1 - before.1);
            // The newest snapshot wins: the changelog, or the survivor's own checkpoint from when
            // it held the partition before, if nothing newer was consumed since (a tie).
            assert!(
                changelog + local >= 2.0,
                "the survivor took 2 partitions over but restored {changelog} from the changelog \
                 and {local} from its own checkpoints"
            );
            handed_over += changelog;
            stopping.start();
            stopping.wait_ready(Duration::from_secs(60));
            eprintln!(
                "{:7.2}s {} ready",
                t0.elapsed().as_secs_f64(),
                stopping.name
            );
        }
    }
    // The first hand-over of each instance's partitions can only come from the changelog: the
    // survivor never held them before.
    assert!(
        handed_over >= 4.0,
        "only {handed_over} partitions were restored from the changelog"
    );
    let produced = wait_producers(producers);
    assert_eq!(produced, stream.messages());
    let want = expected(&stream.events);
    wait_exact(&bases, &want, Duration::from_secs(180), || {
        a.logs() + &b.logs()
    });

    // Each tenant is held by exactly one instance.
    let held: Vec<BTreeSet<String>> = bases
        .iter()
        .map(|b| {
            api_totals(std::slice::from_ref(b), "tenants")
                .unwrap()
                .into_keys()
                .collect()
        })
        .collect();
    assert!(
        held[0].is_disjoint(&held[1]),
        "a tenant is held twice: {held:?}"
    );

    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let gaps = gaps.lock().unwrap().clone();
    let worst = gaps.values().max().copied().unwrap_or_default();
    eprintln!(
        "rolling restart: {} events, 4 restarts, {handed_over} partitions taken over from the changelog, longest unowned gap per partition {gaps:?}",
        stream.events.len()
    );
    assert!(
        worst < Duration::from_secs(10),
        "a partition went unconsumed for {worst:?}, longer than the 10 s session timeout\n{}{}",
        a.logs(),
        b.logs()
    );

    // Every poison message reached the dead-letter topic.
    common::assert_dead_lettered(&broker.bootstrap, DLQ, "rolling-dlq", &stream.poison);
    a.terminate();
    b.terminate();
}

#[test]
fn broker_restart_on_file_storage_is_ridden_out_with_exact_totals() {
    let broker = Broker::start_with(
        "sqlite",
        &[
            &format!("{USAGE}:2"),
            &format!("{ALERTS}:1"),
            &format!("{DLQ}:1"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let end = chrono::Utc::now().timestamp_millis().div_euclid(MIN) * MIN;
    let spec = |minutes: i64, end_ms: i64, seed: u64| StreamSpec {
        tenants: 4,
        jobs: 2,
        gpus_per_job: 8,
        minutes,
        end_ms,
        poison_every: 50,
        producers: 2,
        seed,
    };
    // Two halves of one timeline: before the outage and after it.
    let first = Stream::generate(&spec(240, end - 240 * MIN, 1));
    let second = Stream::generate(&spec(240, end, 2));

    let mut d = Instance::new(dir.path(), "d", &broker.bootstrap, "cooperative-sticky", "");
    d.start();
    d.wait_ready(Duration::from_secs(60));
    let bases = vec![d.base.clone()];
    assert_eq!(
        wait_producers(spawn_producers(
            &broker.bootstrap,
            USAGE,
            &first.texts,
            dir.path()
        )),
        first.messages()
    );
    wait_exact(
        &bases,
        &expected(&first.events),
        Duration::from_secs(120),
        || d.logs(),
    );

    // The broker goes away: the daemon keeps running and says it is not ready.
    broker.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    let why = loop {
        let answer = ureq::get(&format!("{}/readyz", d.base))
            .config()
            .http_status_as_error(false)
            .build()
            .call();
        if let Ok(mut r) = answer {
            if r.status() == 503 {
                break r.body_mut().read_to_string().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "still ready 30 s after the broker stopped:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        why.contains("no broker is reachable"),
        "not ready, but for another reason: {why}"
    );
    assert!(
        d.proc.as_mut().unwrap().0.try_wait().unwrap().is_none(),
        "the daemon exited during the outage"
    );
    std::thread::sleep(Duration::from_secs(3));

    // The broker comes back with its data: the daemon resumes where it was and loses nothing.
    broker.restart();
    d.wait_ready(Duration::from_secs(90));
    assert_eq!(
        wait_producers(spawn_producers(
            &broker.bootstrap,
            USAGE,
            &second.texts,
            dir.path()
        )),
        second.messages()
    );
    let mut all = first.events.clone();
    all.extend(second.events.iter().cloned());
    wait_exact(&bases, &expected(&all), Duration::from_secs(120), || {
        d.logs()
    });

    let poison: Vec<&String> = first.poison.iter().chain(&second.poison).collect();
    common::assert_dead_lettered(&broker.bootstrap, DLQ, "outage-dlq", &poison);
    eprintln!(
        "broker restart: {} events before and {} after the outage, exact",
        first.events.len(),
        second.events.len()
    );
    d.terminate();
}

#[test]
fn unkeyed_events_are_repartitioned_by_tenant_and_counted_exactly_across_a_crash() {
    const REPARTITION: &str = "trainspotter-repartition";
    let broker = Broker::start(&[
        &format!("{USAGE}:3"),
        &format!("{ALERTS}:1"),
        &format!("{DLQ}:1"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let stream = Stream::generate(&StreamSpec {
        tenants: 5,
        jobs: 2,
        gpus_per_job: 8,
        minutes: 240,
        end_ms: chrono::Utc::now().timestamp_millis().div_euclid(MIN) * MIN,
        poison_every: 40,
        producers: 2,
        seed: 5,
    });
    // The repartition topic is not created here: the daemon creates it (3 partitions, like the
    // input). Re-forwarded copies are recognised as duplicates within windows.dedup_horizon of
    // event time; this stream runs 240 event-minutes in a few wall-clock seconds, so the horizon
    // is raised to cover the event time between a checkpoint and a crash. The daemon's own
    // producer writes one record per batch here for the same tansu limitation produce.py works
    // around (a fetch that starts inside a record batch returns nothing).
    let mut d = Instance::new(dir.path(), "r", &broker.bootstrap, "roundrobin", "");
    let config = std::fs::read_to_string(&d.config).unwrap().replace(
        "[input]\n",
        &format!("[input]\nrepartition_topic = \"{REPARTITION}\"\n"),
    )
    .replace("checkpoint_interval = \"1s\"", "checkpoint_interval = \"3s\"")
        + "[windows]\ndedup_horizon = \"6h\"\n[kafka.producer_properties]\n\"batch.num.messages\" = \"1\"\n";
    write_file(&d.config, &config);
    d.start();
    d.wait_ready(Duration::from_secs(60));
    // Every message without a key: the client spreads each tenant over all three partitions.
    let producers = common::spawn_producers_with(
        &broker.bootstrap,
        USAGE,
        &stream.texts,
        dir.path(),
        &["--unkeyed"],
    );
    // A crash while forwarding: what was forwarded after the last checkpoint is forwarded again
    // on restart, and the windows recognise the copies as duplicates.
    let consumed = |base: &str| {
        ureq::get(&format!("{base}/metrics"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| metric(&t, "trainspotter_ingest_events_forwarded_total"))
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed(&d.base) < 2000.0 {
        assert!(
            Instant::now() < deadline,
            "nothing forwarded:\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.proc.take().unwrap().0.kill().unwrap();
    // tansu 0.6 sometimes answers a member that rejoins right after the old one was killed with
    // an empty assignment, and keeps it so until the group changes again (seen in 1 of 3 runs);
    // the restart therefore waits until the killed member's 10 s session has expired.
    std::thread::sleep(Duration::from_secs(11));
    d.start();
    d.wait_ready(Duration::from_secs(60));
    assert_eq!(wait_producers(producers), stream.messages());
    wait_exact(
        &[d.base.clone()],
        &expected(&stream.events),
        Duration::from_secs(120),
        || d.logs(),
    );

    // The input partitions hold no tenant; each tenant lives in exactly one partition of the
    // repartition topic.
    let status: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{}/api/v1/partitions", d.base))).unwrap();
    let parts = status["partitions"].as_array().unwrap();
    let tenants_in = |topic: &str| -> u64 {
        parts
            .iter()
            .filter(|p| p["topic"] == topic)
            .map(|p| p["tenants"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(tenants_in(USAGE), 0);
    assert_eq!(
        tenants_in(REPARTITION),
        5,
        "a tenant is split over partitions: {status}"
    );
    assert_eq!(
        parts.iter().filter(|p| p["topic"] == REPARTITION).count(),
        3,
        "the repartition topic was created with the input's partition count"
    );
    let metrics = http_get(&format!("{}/metrics", d.base));
    eprintln!(
        "repartition: {} events over 3 unkeyed partitions, exact after a SIGKILL; the restarted \
         instance forwarded {} samples and dropped {} as duplicates",
        stream.events.len(),
        metric(&metrics, "trainspotter_ingest_events_forwarded_total").unwrap_or(0.0),
        metric(&metrics, "trainspotter_window_events_duplicate_total").unwrap_or(0.0),
    );
    common::assert_dead_lettered(&broker.bootstrap, DLQ, "repartition-dlq", &stream.poison);
    d.terminate();
}
