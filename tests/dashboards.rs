//! The Grafana dashboards in `dashboards/` against the real thing: a real Prometheus server scrapes
//! the real daemon, which consumes the simulated demo fleet from a real tansu broker, and every
//! panel query of every dashboard must come back with data. The dashboards' structure (the
//! datasource variable, the `$job`/`$instance` filters, `$__rate_interval`, metric names that
//! exist) is checked without any of that. The live test fails, never skips, when tansu or
//! Prometheus is missing (scripts/deps.sh installs both).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, metric, wait_producers, write_file, Broker, Proc};
use serde_json::{json, Value};

const USAGE: &str = "gpu-usage";
const USAGE_PARTITIONS: u32 = 2;
const ALERTS: &str = "trainspotter-alerts";
const DLQ: &str = "trainspotter-dead-letter";
/// The scrape job name Prometheus gives the daemon's series.
const SCRAPE_JOB: &str = "trainspotter";
/// The dashboards that must exist; any other JSON file in dashboards/ is checked as well.
const REQUIRED: [&str; 3] = [
    "trainspotter-fleet",
    "trainspotter-tenant",
    "trainspotter-health",
];
const PANEL_TYPES: [&str; 3] = ["timeseries", "stat", "table"];
/// Grafana's interval variables as the live test sets them. At the 1 s scrape interval, 15 s holds
/// fifteen scrapes (Grafana makes `$__rate_interval` at least four).
const INTERVALS: [(&str, &str); 6] = [
    ("$__rate_interval", "15s"),
    ("${__rate_interval}", "15s"),
    ("$__interval_ms", "5000"),
    ("$__interval", "5s"),
    ("$__range_s", "300"),
    ("$__range", "5m"),
];

struct Dashboard {
    name: String,
    json: Value,
}

/// One target of one panel.
struct Query<'a> {
    dashboard: &'a str,
    panel: String,
    expr: String,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = common::repo().join("dashboards");
    let mut out: Vec<Dashboard> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            Dashboard {
                name: p.file_stem().unwrap().to_string_lossy().into_owned(),
                json: serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", p.display())),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    for name in REQUIRED {
        assert!(
            out.iter().any(|d| d.name == name),
            "dashboards/{name}.json is missing"
        );
    }
    out
}

/// Every panel, the panels nested in collapsed rows included.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

fn queries(d: &Dashboard) -> Vec<Query<'_>> {
    panels(&d.json)
        .into_iter()
        .flat_map(|p| {
            let panel = p["title"].as_str().unwrap_or("(untitled)").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| Query {
                    dashboard: &d.name,
                    panel: panel.clone(),
                    expr: t["expr"].as_str().unwrap_or_default().to_string(),
                })
        })
        .collect()
}

fn variables(d: &Value) -> Vec<&Value> {
    d["templating"]["list"]
        .as_array()
        .map(|l| l.iter().collect())
        .unwrap_or_default()
}

fn variable<'a>(d: &'a Value, name: &str) -> Option<&'a Value> {
    variables(d).into_iter().find(|v| v["name"] == name)
}

/// The query of a query variable: `definition`, which must equal the editor's `query`.
fn variable_query(v: &Value) -> &str {
    v["definition"].as_str().unwrap_or_default()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// The prefixes of the metrics the daemon exposes: its own, and the process's
/// (`PROCESS_METRICS`).
const PREFIXES: [&str; 2] = ["trainspotter_", "process_"];

/// The metric names an expression selects, each with the byte offset just after the name, in
/// the order they appear.
fn metric_names(expr: &str) -> Vec<(&str, usize)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    for prefix in PREFIXES {
        let mut i = 0;
        while let Some(k) = expr[i..].find(prefix) {
            let start = i + k;
            let mut end = start;
            while end < b.len() && is_ident(b[end]) {
                end += 1;
            }
            // Only a whole word outside a string: not `x_trainspotter_...` or `"trainspotter_..."`.
            let quoted = expr[..start].matches('"').count() % 2 == 1;
            if (start == 0 || !is_ident(b[start - 1])) && !quoted {
                out.push((&expr[start..end], end));
            }
            i = end;
        }
    }
    out.sort_by_key(|&(_, end)| end);
    out
}

/// The text between the bracket at `open` and its match.
fn enclosed(expr: &str, open: usize) -> Option<&str> {
    let b = expr.as_bytes();
    let (o, c) = match b[open] {
        b'(' => (b'(', b')'),
        b'{' => (b'{', b'}'),
        b'[' => (b'[', b']'),
        _ => return None,
    };
    let mut depth = 0;
    let mut quoted = false;
    for (i, &ch) in b.iter().enumerate().skip(open) {
        match ch {
            b'"' => quoted = !quoted,
            _ if quoted => {}
            _ if ch == o => depth += 1,
            _ if ch == c => {
                depth -= 1;
                if depth == 0 {
                    return Some(&expr[open + 1..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The arguments of every call of `function` (by name, so `irate` is not `rate`).
fn calls<'a>(expr: &'a str, function: &str) -> Vec<&'a str> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let needle = format!("{function}(");
    let mut i = 0;
    while let Some(k) = expr[i..].find(&needle) {
        let start = i + k;
        if start == 0 || !is_ident(b[start - 1]) {
            if let Some(args) = enclosed(expr, start + function.len()) {
                out.push(args);
            }
        }
        i = start + needle.len();
    }
    out
}

/// The contents of every `[...]` range or subquery in `expr`.
fn ranges(expr: &str) -> Vec<&str> {
    expr.match_indices('[')
        .filter_map(|(i, _)| enclosed(expr, i))
        .collect()
}

/// Every metric name defined in src/metrics.rs (string literals, outside its unit tests).
fn defined_metrics() -> BTreeSet<String> {
    let src = std::fs::read_to_string(common::repo().join("src/metrics.rs")).unwrap();
    let code = src.split("#[cfg(test)]").next().unwrap();
    code.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            PREFIXES.iter().any(|p| s.starts_with(p))
                && s.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')
        })
        .map(str::to_string)
        .collect()
}

/// The defined metric a name in a query refers to (a histogram's series carry a suffix).
fn defined_as<'a>(name: &str, defined: &'a BTreeSet<String>) -> Option<&'a String> {
    defined.get(name).or_else(|| {
        ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| defined.get(name.strip_suffix(s)?))
    })
}

/// What is wrong with one expression, as messages.
fn expr_problems(expr: &str, defined: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let names = metric_names(expr);
    if names.is_empty() {
        problems.push("selects no metric the daemon exposes".into());
    }
    for (name, end) in names {
        if defined_as(name, defined).is_none() {
            problems.push(format!("{name} is not defined in src/metrics.rs"));
        }
        let filtered = expr[end..].starts_with('{')
            && enclosed(expr, end).is_some_and(|m| {
                m.contains("job=~\"$job\"") && m.contains("instance=~\"$instance\"")
            });
        if !filtered {
            problems.push(format!(
                "{name} is not filtered by job=~\"$job\", instance=~\"$instance\""
            ));
        }
    }
    for function in ["rate", "irate", "increase"] {
        for args in calls(expr, function) {
            let r = ranges(args);
            if r.is_empty() || r.iter().any(|r| *r != "$__rate_interval") {
                problems.push(format!(
                    "{function}({args}) does not use [$__rate_interval] as its range"
                ));
            }
        }
    }
    problems
}

fn prometheus_datasource() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

/// The rules every dashboard follows, as messages naming what breaks them.
fn structure_problems(d: &Dashboard, defined: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |what: String| problems.push(format!("{}: {what}", d.name));
    let j = &d.json;
    for key in ["__inputs", "__requires", "__elements"] {
        if j.get(key).is_some() {
            problem(format!(
                "has the import wrapper key {key}; provisioned dashboards have none"
            ));
        }
    }
    if !j["id"].is_null() {
        problem(format!("\"id\" is {}, not null", j["id"]));
    }
    if j["uid"] != d.name.as_str() {
        problem(format!("uid {} differs from the file name", j["uid"]));
    }
    if j["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problem(format!("schemaVersion {} is below 36", j["schemaVersion"]));
    }
    if j["title"].as_str().is_none_or(str::is_empty) {
        problem("has no title".into());
    }

    let ds = variable(j, "datasource");
    if ds.is_none_or(|v| v["type"] != "datasource" || v["query"] != "prometheus") {
        problem("has no datasource variable {\"type\": \"datasource\", \"query\": \"prometheus\", \"name\": \"datasource\"}".into());
    }
    for name in ["job", "instance"] {
        match variable(j, name) {
            None => problem(format!("has no {name} variable")),
            Some(v) => {
                let all = v["allValue"].as_str().unwrap_or_default();
                if v["type"] != "query"
                    || v["multi"] != true
                    || v["includeAll"] != true
                    || !(all == ".*" || all == ".+")
                {
                    problem(format!(
                        "variable {name} is not a multi-value query variable with an All value of .*"
                    ));
                }
            }
        }
    }
    for v in variables(j).into_iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or_default();
        let q = variable_query(v);
        if v["datasource"] != prometheus_datasource() {
            problem(format!("variable {name} does not use ${{datasource}}"));
        }
        if v["query"]["query"] != q && v["query"] != q {
            problem(format!(
                "variable {name}: definition and query differ ({q} vs {})",
                v["query"]
            ));
        }
        if label_values(q).is_none() {
            problem(format!(
                "variable {name}: {q} is not label_values(selector, label)"
            ));
        }
        for (metric, _) in metric_names(q) {
            if defined_as(metric, defined).is_none() {
                problem(format!(
                    "variable {name}: {metric} is not defined in src/metrics.rs"
                ));
            }
        }
        // Each variable narrows by the ones before it, so a choice of job narrows instances.
        let narrows: &[&str] = match name {
            "job" => &[],
            "instance" => &["job=~\"$job\""],
            _ => &["job=~\"$job\"", "instance=~\"$instance\""],
        };
        for filter in narrows {
            if !q.contains(filter) {
                problem(format!("variable {name}: {q} does not filter by {filter}"));
            }
        }
    }

    let mut ids = BTreeSet::new();
    for p in panels(j) {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        let ty = p["type"].as_str().unwrap_or_default();
        if !ids.insert(p["id"].as_u64()) || p["id"].as_u64().is_none() {
            problem(format!("panel {title}: id {} missing or repeated", p["id"]));
        }
        if !p["gridPos"]["w"].is_u64() || !p["gridPos"]["h"].is_u64() {
            problem(format!("panel {title}: no gridPos"));
        }
        if ty == "row" {
            if p.get("targets").is_some() {
                problem(format!("row {title} has targets"));
            }
            continue;
        }
        if !PANEL_TYPES.contains(&ty) {
            problem(format!(
                "panel {title}: type {ty} is not one of {PANEL_TYPES:?}"
            ));
        }
        if p["datasource"] != prometheus_datasource() {
            problem(format!(
                "panel {title}: datasource {} is not ${{datasource}}",
                p["datasource"]
            ));
        }
        if p["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            problem(format!("panel {title}: no unit"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problem(format!("panel {title}: no targets"));
        }
        for t in &targets {
            if t["datasource"] != prometheus_datasource() {
                problem(format!(
                    "panel {title}, target {}: datasource is not ${{datasource}}",
                    t["refId"]
                ));
            }
            let expr = t["expr"].as_str().unwrap_or_default();
            for e in expr_problems(expr, defined) {
                problem(format!("panel {title}: {expr}: {e}"));
            }
        }
    }
    problems
}

/// `label_values(selector, label)` split into its selector and label.
fn label_values(q: &str) -> Option<(&str, &str)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim(), label.trim()))
}

#[test]
fn dashboards_are_provisionable_and_every_query_filters_by_job_and_instance() {
    let defined = defined_metrics();
    assert!(
        defined.contains("trainspotter_ready"),
        "no metric names found in src/metrics.rs"
    );
    let problems: Vec<String> = dashboards()
        .iter()
        .flat_map(|d| structure_problems(d, &defined))
        .collect();
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_exported_metric_appears_on_a_dashboard() {
    let defined = defined_metrics();
    let all = dashboards();
    let used: BTreeSet<&String> = all
        .iter()
        .flat_map(queries)
        .flat_map(|q| {
            metric_names(&q.expr)
                .into_iter()
                .filter_map(|(n, _)| defined_as(n, &defined))
                .collect::<Vec<_>>()
        })
        .collect();
    let missing: Vec<&String> = defined.iter().filter(|m| !used.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "metrics defined in src/metrics.rs that no dashboard shows: {missing:?}"
    );
}

#[test]
fn expression_checks_catch_a_missing_filter_and_a_fixed_rate_range() {
    let defined: BTreeSet<String> = ["trainspotter_ready", "trainspotter_a_total"]
        .map(String::from)
        .into();
    let ok =
        "sum(rate(trainspotter_a_total{job=~\"$job\", instance=~\"$instance\"}[$__rate_interval]))";
    assert_eq!(expr_problems(ok, &defined), Vec::<String>::new());
    let unfiltered =
        "trainspotter_ready / trainspotter_ready{job=~\"$job\", instance=~\"$instance\"}";
    assert_eq!(expr_problems(unfiltered, &defined).len(), 1);
    let fixed = "sum(irate(trainspotter_a_total{job=~\"$job\", instance=~\"$instance\"}[5m])) > 0";
    assert_eq!(expr_problems(fixed, &defined).len(), 1);
    let unknown = "trainspotter_b{job=~\"$job\", instance=~\"$instance\"}";
    assert_eq!(expr_problems(unknown, &defined).len(), 1);
}

// ---- The live check --------------------------------------------------------------------------

/// One kafka-python producer per text (tests/e2e/produce.py), keyed by tenant. Unlike
/// `common::spawn_producers` the records are batched: one record per batch takes about three
/// minutes for this stream on two cores, batched about half a minute. The daemon reads from the
/// beginning and is never restarted here, so it never resumes inside a record batch (which tansu
/// 0.6 cannot serve).
fn spawn_batched_producers(
    bootstrap: &str,
    topic: &str,
    texts: &[String],
    dir: &Path,
) -> Vec<Child> {
    texts
        .iter()
        .enumerate()
        .map(|(k, text)| {
            let file = dir.join(format!("producer-{k}.ndjson"));
            write_file(&file, text);
            Command::new(common::python())
                .arg(common::repo().join("tests/e2e/produce.py"))
                .args(["--bootstrap", bootstrap, "--topic", topic, "--file"])
                .arg(&file)
                .stdout(Stdio::piped())
                .spawn()
                .expect("run produce.py")
        })
        .collect()
}

/// The record key tests/e2e/produce.py gives a line: the tenant of a JSON object, else "unkeyed".
fn key_of(line: &str) -> String {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| Some(v.as_object()?.get("tenant")?.as_str()?.to_string()))
        .unwrap_or_else(|| "unkeyed".into())
}

/// Kafka's murmur2 hash of a record key (Java client, kafka-python: the default partitioner).
fn murmur2(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let chunks = key.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition the default partitioner picks for `key`.
fn partition_of(key: &str, partitions: u32) -> usize {
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions) as usize
}

#[test]
fn murmur2_matches_the_kafka_clients() {
    // Values from kafka-python's kafka.partitioner.default.murmur2.
    for (key, hash) in [
        ("frontier-labs", 227_814_054),
        ("chatco", 821_921_229),
        ("reserved-co", 3_912_561_822),
        ("a", 2_731_586_172),
        ("abc", 479_470_107),
        ("abcde", 461_995_741),
    ] {
        assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
    }
}

/// `simulate --hours 3` as one text per partition of the usage topic, all of a tenant's lines in
/// one text, in order, plus messages the decoder rejects spread over the texts of their
/// partitions. One producer per partition delivers each partition's events in event-time order,
/// as live collectors do: two producers feeding one partition at different speeds would push its
/// watermark ahead of the slower one's tenants and make their samples late.
fn telemetry(dir: &Path, partitions: u32) -> Vec<String> {
    let file = dir.join("fleet.ndjson");
    let out = Command::new(env!("CARGO_BIN_EXE_trainspotter"))
        .args(["simulate", "--hours", "3", "--output"])
        .arg(&file)
        .output()
        .expect("run trainspotter simulate");
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let mut texts = vec![Vec::new(); partitions as usize];
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("simulate writes JSON lines");
        let tenant = v["tenant"].as_str().expect("every event has a tenant");
        texts[partition_of(tenant, partitions)].push(line);
    }
    assert!(
        texts.iter().all(|t| !t.is_empty()),
        "the simulated tenants do not cover all {partitions} partitions"
    );
    let poison = [
        "this is not JSON",
        "[1, 2, 3]",
        "{\"ts\": \"yesterday\", \"tenant\": \"poison-co\", \"interval_s\": 60}",
        "{\"ts\": 1714564830000, \"tenant\": \"poison-co\", \"interval_s\": 60, \"tensor_active\": 4}",
    ];
    for (k, p) in poison.iter().enumerate() {
        let text = &mut texts[partition_of(&key_of(p), partitions)];
        let at = text.len() * (k + 1) / (poison.len() + 1);
        text.insert(at, p);
    }
    texts
        .into_iter()
        .map(|lines| lines.join("\n") + "\n")
        .collect()
}

fn require_prometheus() {
    let version = Command::new("prometheus").arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "the prometheus server is not installed: run scripts/deps.sh (Debian package prometheus)"
    );
}

/// A Prometheus server on loopback scraping `target` every second, killed on drop.
struct Prometheus {
    base: String,
    /// Hands back 4xx answers too: a bad query's error is in the body.
    agent: ureq::Agent,
    log: PathBuf,
    _proc: Proc,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        require_prometheus();
        let port = free_port();
        let config = dir.join("prometheus.yml");
        write_file(
            &config,
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: {SCRAPE_JOB}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        );
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let proc = Proc::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(out.try_clone().unwrap())
                .stderr(out),
        );
        let p = Prometheus {
            base: format!("http://127.0.0.1:{port}"),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into(),
            log,
            _proc: proc,
        };
        let ready = || {
            ureq::get(&format!("{}/-/ready", p.base))
                .call()
                .is_ok_and(|r| r.status() == 200)
        };
        wait_for(
            "Prometheus to be ready",
            Duration::from_secs(30),
            ready,
            || p.logs(),
        );
        p
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query: the whole API answer (status, data or error).
    fn query(&self, expr: &str) -> Value {
        self.agent
            .post(&format!("{}/api/v1/query", self.base))
            .send_form([("query", expr)])
            .unwrap_or_else(|e| panic!("query {expr}: {e}"))
            .body_mut()
            .read_json()
            .unwrap_or_else(|e| panic!("query {expr}: the answer is not JSON: {e}"))
    }

    /// The first value of an instant query's result, if any.
    fn value(&self, expr: &str) -> Option<f64> {
        self.query(expr)["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// The values of `label` on series matching `selector` (what Grafana's label_values does).
    fn label_values(&self, selector: &str, label: &str) -> Vec<String> {
        let v: Value = self
            .agent
            .get(&format!("{}/api/v1/label/{label}/values", self.base))
            .query("match[]", selector)
            .call()
            .unwrap_or_else(|e| panic!("label values of {label} for {selector}: {e}"))
            .body_mut()
            .read_json()
            .unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool, logs: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `expr` with Grafana's variables replaced: the interval variables by the values above, the
/// dashboard variables by `values`. Panics on a variable it does not know.
fn substitute(expr: &str, values: &[(&str, &str)]) -> String {
    let mut e = expr.to_string();
    for (var, value) in INTERVALS {
        e = e.replace(var, value);
    }
    for (name, value) in values {
        e = e
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(!e.contains('$'), "unknown variable left in {e}");
    e
}

#[test]
fn every_dashboard_query_returns_data_from_prometheus_scraping_the_daemon() {
    let started = Instant::now();
    let all = dashboards();
    require_prometheus();
    let broker = Broker::start(&[
        &format!("{USAGE}:{USAGE_PARTITIONS}"),
        &format!("{ALERTS}:1"),
        &format!("{DLQ}:1"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let texts = telemetry(dir.path(), USAGE_PARTITIONS);
    let messages: usize = texts.iter().map(|t| t.lines().count()).sum();

    let http = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("trainspotter.toml");
    write_file(
        &config,
        &format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"dashboards\"\ntopics = [\"{USAGE}\"]\n\
             alert_topic = \"{ALERTS}\"\ndead_letter_topic = \"{DLQ}\"\nbatch_wait = \"20ms\"\n\
             [input]\nmax_future_skew = \"1h\"\n\
             [state]\ndir = \"{}\"\ncheckpoint_interval = \"1s\"\n\
             [http]\nlisten = \"{http}\"\n[log]\nformat = \"json\"\n",
            broker.bootstrap,
            dir.path().join("state").display()
        ),
    );
    let daemon_log = dir.path().join("daemon.log");
    let _daemon = Proc::daemon(env!("CARGO_BIN_EXE_trainspotter"), &config, &daemon_log);
    let base = format!("http://{http}");
    let logs = || std::fs::read_to_string(&daemon_log).unwrap_or_default();
    wait_for(
        "the daemon to be ready",
        Duration::from_secs(60),
        || common::ready(&base),
        logs,
    );

    // Prometheus scrapes from before the first message, so it sees every counter move.
    let prometheus = Prometheus::start(dir.path(), &http);
    let produced = wait_producers(spawn_batched_producers(
        &broker.bootstrap,
        USAGE,
        &texts,
        dir.path(),
    ));
    assert_eq!(produced, messages);
    let consumed = || {
        ureq::get(&format!("{base}/metrics"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|m| metric(&m, "trainspotter_ingest_events_consumed_total"))
            == Some(messages as f64)
    };
    wait_for(
        "the daemon to consume every message",
        Duration::from_secs(120),
        consumed,
        logs,
    );
    // At least 20 s of scrapes, the last ones after the daemon consumed everything.
    let consumed_expr =
        format!("trainspotter_ingest_events_consumed_total{{job=\"{SCRAPE_JOB}\"}}");
    let scraped = || {
        prometheus.value(&consumed_expr) == Some(messages as f64)
            && prometheus
                .value(&format!("count_over_time({consumed_expr}[5m])"))
                .is_some_and(|n| n >= 20.0)
    };
    wait_for(
        "Prometheus to hold 20 s of scrapes and the final count",
        Duration::from_secs(60),
        scraped,
        || prometheus.logs(),
    );

    // The variables, as Grafana would resolve them.
    let jobs = prometheus.label_values("trainspotter_ready", "job");
    assert_eq!(jobs, [SCRAPE_JOB], "job variable");
    let instances = prometheus.label_values(
        &format!("trainspotter_ready{{job=~\"{SCRAPE_JOB}\"}}"),
        "instance",
    );
    assert_eq!(instances, [http.as_str()], "instance variable");
    // The tenant a reader would open first: the one with the most estimated compute.
    let top = prometheus
        .query("topk(1, sum by (tenant) (trainspotter_tenant_estimated_flop{tenant!=\"other\"}))");
    let tenant = top["data"]["result"][0]["metric"]["tenant"]
        .as_str()
        .unwrap_or_else(|| panic!("no tenant with an estimate: {top}"))
        .to_string();

    // Each query once with every variable on All and once with the single job and instance.
    let selections: [(&str, [(&str, &str); 3]); 2] = [
        (
            "All",
            [
                ("job", ".*"),
                ("instance", ".*"),
                ("tenant", tenant.as_str()),
            ],
        ),
        (
            "one instance",
            [
                ("job", SCRAPE_JOB),
                ("instance", http.as_str()),
                ("tenant", tenant.as_str()),
            ],
        ),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for d in &all {
        for v in variables(&d.json)
            .into_iter()
            .filter(|v| v["type"] == "query")
        {
            let (selector, label) = label_values(variable_query(v)).expect("label_values");
            for (selection, values) in &selections {
                let found = prometheus.label_values(&substitute(selector, values), label);
                checked += 1;
                if found.is_empty() {
                    failures.push(format!(
                        "{} variable {} ({selection}): {} found no values",
                        d.name,
                        v["name"],
                        variable_query(v)
                    ));
                }
            }
            if v["name"] == "tenant" {
                let found = prometheus.label_values(&substitute(selector, &selections[0].1), label);
                assert!(found.contains(&tenant), "{tenant} not in {found:?}");
            }
        }
        for q in queries(d) {
            for (selection, values) in &selections {
                let expr = substitute(&q.expr, values);
                let answer = prometheus.query(&expr);
                checked += 1;
                let empty = answer["data"]["result"]
                    .as_array()
                    .is_none_or(Vec::is_empty);
                if answer["status"] != "success" || empty {
                    failures.push(format!(
                        "{} / {} ({selection}): {expr}\n    -> {answer}",
                        q.dashboard, q.panel
                    ));
                }
            }
        }
    }
    eprintln!(
        "{checked} queries over {} dashboards returned data (tenant {tenant}), {:.0?} in all",
        all.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} queries returned no data:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
