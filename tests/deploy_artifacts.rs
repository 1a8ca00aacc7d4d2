//! The deployment artefacts in `deploy/`, checked offline: the Prometheus rules with promtool and
//! their unit tests, the metric names they use against `src/metrics.rs`, the Kubernetes manifests
//! against the Kubernetes JSON schemas, the settings that must agree between the manifests, the
//! embedded configuration, the container image and the systemd unit, and the unit itself with
//! `systemd-analyze verify`.
//!
//! promtool, and the project's virtualenv with kubernetes-validate (which also brings PyYAML, used
//! here to read the YAML files), come from scripts/deps.sh; these tests fail, never skip, when they
//! are missing. Only the systemd check is skipped without `systemd-analyze`, because containers
//! often have no systemd.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use trainspotter::alert::AlertName;
use trainspotter::config::{Config, LogFormat};

const RULES: &str = "deploy/prometheus/trainspotter.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/trainspotter.rules.test.yml";
const KUBERNETES: &str = "deploy/kubernetes";
const CONTAINERFILE: &str = "deploy/container/Containerfile";
const SYSTEMD_UNIT: &str = "deploy/systemd/trainspotter.service";
/// Where the image installs the binary, and where both deployments expect it.
const BINARY: &str = "/usr/local/bin/trainspotter";
/// The uid and gid of the image's user and of the pod.
const RUN_AS: u64 = 65532;
/// Kubernetes versions the manifests must be valid for: an older one still in common use and the
/// newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// Kinds outside the core Kubernetes schemas. A ServiceMonitor is a prometheus-operator CRD whose
/// schema the validator does not bundle; its selector and port are checked against the Services in
/// `service_monitor_scrapes_each_pod_once_on_the_configured_port` instead.
const NOT_SCHEMA_VALIDATED: [&str; 1] = ["ServiceMonitor"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// Runs a tool that scripts/deps.sh installs; a missing tool fails the test with that advice.
fn run_required(cmd: &mut Command, tool: &str) -> Output {
    match cmd.current_dir(root()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("{tool} is not installed: run scripts/deps.sh")
        }
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn promtool(args: &[&str]) -> Output {
    run_required(
        Command::new("promtool").args(args),
        "promtool (Debian package prometheus)",
    )
}

/// The project's virtualenv Python (`TRAINSPOTTER_PYTHON`, else `.venv/bin/python`).
fn python() -> PathBuf {
    let p = std::env::var_os("TRAINSPOTTER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "no Python virtualenv at {}: run scripts/deps.sh",
        p.display()
    );
    p
}

/// Every document of a YAML file, as JSON (read by PyYAML from the virtualenv, which
/// kubernetes-validate depends on; the crate has no YAML parser).
fn yaml_docs(rel: &str) -> Vec<Value> {
    const TO_JSON: &str = "import json, sys, yaml\n\
        docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
        json.dump(docs, sys.stdout)";
    let out = run_required(
        Command::new(python())
            .args(["-c", TO_JSON])
            .arg(root().join(rel)),
        "the project's Python virtualenv",
    );
    assert!(
        out.status.success(),
        "cannot read {rel} as YAML (is kubernetes-validate, which brings PyYAML, installed? run \
         scripts/deps.sh):\n{}",
        combined(&out)
    );
    match serde_json::from_slice(&out.stdout).expect("the helper prints JSON") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn yaml_doc(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel} should hold one document");
    docs.remove(0)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} should be a string in {v}"))
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} should be a non-negative integer in {v}"))
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> &'a Vec<Value> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{pointer} should be a list in {v}"))
}

// ------------------------------------------------------------------ Prometheus rules

#[test]
fn prometheus_rules_pass_promtool_check() {
    let out = promtool(&["check", "rules", RULES]);
    assert!(
        out.status.success(),
        "promtool check rules {RULES} failed:\n{}",
        combined(&out)
    );
}

#[test]
fn prometheus_rule_unit_tests_pass() {
    let out = promtool(&["test", "rules", RULE_TESTS]);
    assert!(
        out.status.success(),
        "promtool test rules {RULE_TESTS} failed:\n{}",
        combined(&out)
    );
}

/// Every rule of the rules file: (group name, rule).
fn rules() -> Vec<(String, Value)> {
    let doc = yaml_doc(RULES);
    array_at(&doc, "/groups")
        .iter()
        .flat_map(|g| {
            let name = str_at(g, "/name").to_string();
            array_at(g, "/rules")
                .iter()
                .map(move |r| (name.clone(), r.clone()))
        })
        .collect()
}

fn alert_names() -> Vec<String> {
    let names: Vec<String> = rules()
        .iter()
        .filter_map(|(_, r)| r.get("alert").and_then(Value::as_str).map(String::from))
        .collect();
    assert!(!names.is_empty(), "{RULES} has no alerts");
    names
}

#[test]
fn every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() {
    let tests = yaml_doc(RULE_TESTS);
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in array_at(&tests, "/tests") {
        let Some(checks) = case.get("alert_rule_test").and_then(Value::as_array) else {
            continue;
        };
        for check in checks {
            let name = str_at(check, "/alertname").to_string();
            let expected = check
                .get("exp_alerts")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if expected == 0 {
                quiet.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    for name in alert_names() {
        assert!(
            firing.contains(&name),
            "{RULE_TESTS} has no case where {name} fires"
        );
        assert!(
            quiet.contains(&name),
            "{RULE_TESTS} has no case where {name} stays quiet"
        );
    }
}

/// The anchors GitHub gives the headings of a Markdown file (outside code fences).
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_fence = false;
    let mut anchors = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let anchor: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        anchors.insert(anchor);
    }
    anchors
}

#[test]
fn every_alert_has_severity_summary_description_and_a_runbook_that_exists() {
    for (_, rule) in rules() {
        let Some(name) = rule.get("alert").and_then(Value::as_str) else {
            continue;
        };
        let severity = str_at(&rule, "/labels/severity");
        assert!(
            ["info", "warning", "critical"].contains(&severity),
            "{name}: severity {severity:?} is not info, warning or critical"
        );
        for key in ["summary", "description"] {
            let text = str_at(&rule, &format!("/annotations/{key}"));
            assert!(!text.trim().is_empty(), "{name}: empty {key}");
        }
        let runbook = str_at(&rule, "/annotations/runbook");
        let (file, anchor) = runbook.split_once('#').unwrap_or((runbook, ""));
        let path = root().join(file);
        assert!(
            path.is_file(),
            "{name}: runbook {runbook:?} names a file that does not exist"
        );
        if !anchor.is_empty() {
            let anchors = heading_anchors(&read(file));
            assert!(
                anchors.contains(anchor),
                "{name}: runbook {runbook:?}: {file} has no heading with that anchor; it has \
                 {anchors:?}"
            );
        }
    }
}

/// Metric names registered in src/metrics.rs, and those of them that are histograms.
fn exported_metrics() -> (BTreeSet<String>, BTreeSet<String>) {
    let source = read("src/metrics.rs");
    let mut names = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    for (start, _) in source.match_indices("\"trainspotter_") {
        let rest = &source[start + 1..];
        let end = rest.find('"').expect("string literals are closed");
        let name = &rest[..end];
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let before = source[..start].trim_end();
        if before.ends_with("HistogramOpts::new(") {
            histograms.insert(name.to_string());
        }
        names.insert(name.to_string());
    }
    assert!(
        names.len() > 10 && !histograms.is_empty(),
        "the scan of src/metrics.rs found too little: {names:?}, histograms {histograms:?}"
    );
    (names, histograms)
}

/// Identifiers in a PromQL expression (metric names, recording rule names, labels, functions).
fn identifiers(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| !t.is_empty())
}

#[test]
fn rules_use_only_metrics_that_trainspotter_exports() {
    let (exported, histograms) = exported_metrics();
    let rules = rules();
    let recorded: BTreeSet<&str> = rules
        .iter()
        .filter_map(|(_, r)| r.get("record").and_then(Value::as_str))
        .collect();
    let alertnames: BTreeSet<&str> = AlertName::ALL.iter().map(|a| a.as_str()).collect();
    let mut used = BTreeSet::new();
    for (group, rule) in &rules {
        let expr = str_at(rule, "/expr");
        for token in identifiers(expr) {
            if token.contains(':') {
                assert!(
                    recorded.contains(token),
                    "{group}: {token} is used but no rule records it"
                );
            } else if token.starts_with("trainspotter_") {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| token.strip_suffix(s).filter(|b| histograms.contains(*b)))
                    .unwrap_or(token);
                assert!(
                    exported.contains(base),
                    "{group}: {token} is not a metric of src/metrics.rs (it has {exported:?})"
                );
                used.insert(base.to_string());
            }
        }
        // The daemon's own alert names, as label values of trainspotter_alerts_active.
        for (start, _) in expr.match_indices("alertname=\"") {
            let value = expr[start + 11..].split('"').next().unwrap_or_default();
            assert!(
                alertnames.contains(value),
                "{group}: alertname=\"{value}\" is not one of {alertnames:?}"
            );
        }
    }
    // The scan found what the rules are about.
    for name in [
        "trainspotter_kafka_consumer_lag_messages",
        "trainspotter_ingest_events_consumed_total",
        "trainspotter_ingest_events_rejected_total",
        "trainspotter_checkpoint_last_success_timestamp_seconds",
        "trainspotter_checkpoint_failures_total",
        "trainspotter_ready",
        "trainspotter_alerts_produce_errors_total",
        "trainspotter_detect_jobs_suspected",
        "trainspotter_alerts_active",
        "trainspotter_tenant_estimated_flop",
    ] {
        assert!(used.contains(name), "no rule uses {name}: {used:?}");
    }
}

// ------------------------------------------------------------------ Kubernetes manifests

/// The files kustomization.yaml lists, checked to be exactly the manifests of the directory.
fn kustomize_resources() -> Vec<String> {
    let k = yaml_doc(&format!("{KUBERNETES}/kustomization.yaml"));
    let listed: Vec<String> = array_at(&k, "/resources")
        .iter()
        .map(|r| r.as_str().expect("resources are file names").to_string())
        .collect();
    let mut present: Vec<String> = std::fs::read_dir(root().join(KUBERNETES))
        .expect("deploy/kubernetes exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    present.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, present,
        "kustomization.yaml must list every manifest of {KUBERNETES}, and only those"
    );
    listed
}

/// Every manifest by kind and name.
struct Manifests(BTreeMap<(String, String), Value>);

impl Manifests {
    fn load() -> Self {
        let mut all = BTreeMap::new();
        for file in kustomize_resources() {
            for doc in yaml_docs(&format!("{KUBERNETES}/{file}")) {
                let key = (
                    str_at(&doc, "/kind").to_string(),
                    str_at(&doc, "/metadata/name").to_string(),
                );
                assert!(
                    all.insert(key.clone(), doc).is_none(),
                    "{key:?} defined twice"
                );
            }
        }
        Manifests(all)
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|(_, v)| v)
            .collect()
    }

    fn only(&self, kind: &str) -> &Value {
        let all = self.of_kind(kind);
        assert_eq!(all.len(), 1, "expected one {kind}");
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.0
            .get(&(kind.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }

    fn statefulset(&self) -> &Value {
        self.only("StatefulSet")
    }

    fn container(&self) -> &Value {
        let containers = array_at(self.statefulset(), "/spec/template/spec/containers");
        assert_eq!(containers.len(), 1, "one container per pod");
        &containers[0]
    }

    /// The configuration the ConfigMap mounts at the path the container is started with.
    fn config(&self) -> Config {
        let args: Vec<&str> = array_at(self.container(), "/args")
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let at = args
            .iter()
            .position(|a| *a == "--config")
            .expect("the container is started with --config");
        let path = Path::new(args[at + 1]);
        let (dir, file) = (path.parent().unwrap(), path.file_name().unwrap());
        let mount = array_at(self.container(), "/volumeMounts")
            .iter()
            .find(|m| Path::new(str_at(m, "/mountPath")) == dir)
            .unwrap_or_else(|| panic!("nothing is mounted at {}", dir.display()));
        let volume = self.volume(str_at(mount, "/name"));
        let configmap = self.named("ConfigMap", str_at(volume, "/configMap/name"));
        let text = str_at(configmap, &format!("/data/{}", file.to_string_lossy()));
        Config::from_toml(text)
            .unwrap_or_else(|e| panic!("the configuration in the ConfigMap is invalid: {e}"))
    }

    fn volume(&self, name: &str) -> &Value {
        array_at(self.statefulset(), "/spec/template/spec/volumes")
            .iter()
            .find(|v| str_at(v, "/name") == name)
            .unwrap_or_else(|| panic!("no volume named {name}"))
    }

    /// A container port given by number or by name.
    fn container_port(&self, port: &Value) -> u64 {
        if let Some(n) = port.as_u64() {
            return n;
        }
        let name = port.as_str().expect("a port is a number or a name");
        array_at(self.container(), "/ports")
            .iter()
            .find(|p| str_at(p, "/name") == name)
            .map(|p| u64_at(p, "/containerPort"))
            .unwrap_or_else(|| panic!("the container has no port named {name}"))
    }

    fn pod_labels(&self) -> &serde_json::Map<String, Value> {
        self.statefulset()
            .pointer("/spec/template/metadata/labels")
            .and_then(Value::as_object)
            .expect("the pod template has labels")
    }
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let selector = selector.as_object().expect("a selector is a map");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn config_port(config: &Config) -> u64 {
    let addr: std::net::SocketAddr = config
        .http
        .listen
        .parse()
        .expect("http.listen was validated");
    assert!(
        addr.ip().is_unspecified(),
        "http.listen {addr} must listen on all interfaces for probes and scrapes"
    );
    u64::from(addr.port())
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let mut files = Vec::new();
    for file in kustomize_resources() {
        let rel = format!("{KUBERNETES}/{file}");
        let docs = yaml_docs(&rel);
        let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, "/kind")).collect();
        if kinds.iter().all(|k| NOT_SCHEMA_VALIDATED.contains(k)) {
            eprintln!(
                "note: {rel} ({kinds:?}): a CRD kind without a bundled schema, not schema-validated"
            );
            continue;
        }
        assert!(
            !kinds.iter().any(|k| NOT_SCHEMA_VALIDATED.contains(k)),
            "{rel}: keep CRD kinds in files of their own"
        );
        files.push(root().join(rel));
    }
    assert!(files.len() >= 5, "too few manifests: {files:?}");
    let mut cmd = Command::new(python());
    cmd.args(["-m", "kubernetes_validate", "--strict", "--quiet"]);
    for v in KUBERNETES_VERSIONS {
        cmd.args(["-k", v]);
    }
    let out = run_required(cmd.args(&files), "kubernetes-validate");
    let text = combined(&out);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "kubernetes-validate rejected the manifests (a WARN means a kind it has no schema for, \
         which would go unchecked; if the module is missing, run scripts/deps.sh):\n{text}"
    );
}

#[test]
fn embedded_config_is_valid_and_the_pod_environment_names_real_settings() {
    let m = Manifests::load();
    let config = m.config();
    assert_eq!(
        config.log.format,
        LogFormat::Json,
        "logs in Kubernetes are json"
    );
    assert!(
        !config.state.changelog_topic.is_empty(),
        "with several pods, partitions move: state.changelog_topic must be set"
    );
    let mut instance_id = false;
    for env in m
        .container()
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_at(env, "/name");
        let value = match env.get("value").and_then(Value::as_str) {
            Some(v) => v.to_string(),
            None => {
                // A value from the downward API or a Secret: any string shows the key exists.
                if env.pointer("/valueFrom/fieldRef/fieldPath") == Some(&"metadata.name".into()) {
                    instance_id |= name == "TRAINSPOTTER__KAFKA__GROUP_INSTANCE_ID";
                }
                "trainspotter-0".to_string()
            }
        };
        assert_env_names_a_setting(name, &value);
    }
    assert!(
        instance_id,
        "TRAINSPOTTER__KAFKA__GROUP_INSTANCE_ID must come from metadata.name (static membership)"
    );
}

/// `TRAINSPOTTER__SECTION__KEY=value` must name a configuration key that accepts `value`.
fn assert_env_names_a_setting(name: &str, value: &str) {
    let Some(path) = name.strip_prefix("TRAINSPOTTER__") else {
        return;
    };
    let mut parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
    let key = parts.pop().expect("split yields one part at least");
    let toml = format!(
        "[{}]\n{key} = {}\n",
        parts.join("."),
        toml::Value::String(value.to_string())
    );
    if let Err(e) = Config::from_toml(&toml) {
        panic!("environment variable {name} does not name a valid setting: {e}");
    }
}

#[test]
fn statefulset_grace_period_exceeds_the_shutdown_grace_and_the_drain_timeout() {
    let m = Manifests::load();
    let config = m.config();
    let period = Duration::from_secs(u64_at(
        m.statefulset(),
        "/spec/template/spec/terminationGracePeriodSeconds",
    ));
    let grace = config.shutdown.grace.0;
    let drain = config.kafka.drain_timeout().0;
    assert!(
        period > grace,
        "terminationGracePeriodSeconds {period:?} must exceed shutdown.grace {grace:?}"
    );
    assert!(
        period > drain,
        "terminationGracePeriodSeconds {period:?} must exceed kafka.drain_timeout {drain:?}"
    );
}

#[test]
fn probes_services_and_scrape_annotations_use_the_configured_http_port() {
    let m = Manifests::load();
    let port = config_port(&m.config());
    let c = m.container();
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = c
            .pointer(&format!("/{probe}/httpGet"))
            .unwrap_or_else(|| panic!("{probe} is an httpGet probe"));
        assert_eq!(str_at(get, "/path"), path, "{probe} path");
        assert_eq!(
            m.container_port(&get["port"]),
            port,
            "{probe} port against http.listen"
        );
    }
    for svc in m.of_kind("Service") {
        for p in array_at(svc, "/spec/ports") {
            let target = p.get("targetPort").unwrap_or(&p["port"]);
            assert_eq!(
                m.container_port(target),
                port,
                "Service {} port {p}",
                str_at(svc, "/metadata/name")
            );
        }
    }
    let annotations = &m.statefulset()["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(str_at(annotations, "/prometheus.io~1scrape"), "true");
    assert_eq!(str_at(annotations, "/prometheus.io~1path"), "/metrics");
    assert_eq!(
        str_at(annotations, "/prometheus.io~1port"),
        port.to_string()
    );
}

#[test]
fn state_volume_is_mounted_at_the_configured_state_dir() {
    let m = Manifests::load();
    let dir = m.config().state.dir;
    let claims: Vec<&str> = array_at(m.statefulset(), "/spec/volumeClaimTemplates")
        .iter()
        .map(|t| str_at(t, "/metadata/name"))
        .collect();
    let mount = array_at(m.container(), "/volumeMounts")
        .iter()
        .find(|v| str_at(v, "/mountPath") == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at state.dir {dir}"));
    let name = str_at(mount, "/name");
    assert!(
        claims.contains(&name),
        "state.dir {dir} is mounted from {name}, not from a volumeClaimTemplate ({claims:?})"
    );
    assert_ne!(
        mount.get("readOnly"),
        Some(&Value::Bool(true)),
        "the state volume is written"
    );
}

#[test]
fn service_monitor_scrapes_each_pod_once_on_the_configured_port() {
    let m = Manifests::load();
    let port = config_port(&m.config());
    let pods = m.pod_labels();
    let sts = m.statefulset();
    let headless = m.named("Service", str_at(sts, "/spec/serviceName"));
    assert_eq!(
        str_at(headless, "/spec/clusterIP"),
        "None",
        "the governing Service is headless"
    );
    for svc in m.of_kind("Service") {
        assert!(
            selects(&svc["spec"]["selector"], pods),
            "Service {} does not select the pods",
            str_at(svc, "/metadata/name")
        );
        assert_eq!(
            svc.pointer("/spec/publishNotReadyAddresses"),
            Some(&Value::Bool(true)),
            "Service {}: a not-ready pod must stay reachable and scraped",
            str_at(svc, "/metadata/name")
        );
    }
    assert!(selects(&sts["spec"]["selector"]["matchLabels"], pods));
    let pdb = m.only("PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pods));
    assert_eq!(u64_at(pdb, "/spec/maxUnavailable"), 1);

    let monitor = m.only("ServiceMonitor");
    assert_eq!(str_at(monitor, "/apiVersion"), "monitoring.coreos.com/v1");
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    let scraped: Vec<&Value> = m
        .of_kind("Service")
        .into_iter()
        .filter(|s| {
            s.pointer("/metadata/labels")
                .and_then(Value::as_object)
                .is_some_and(|l| selects(selector, l))
        })
        .collect();
    assert_eq!(
        scraped.len(),
        1,
        "the ServiceMonitor must select exactly one Service, or pods are scraped twice"
    );
    let service = scraped[0];
    for endpoint in array_at(monitor, "/spec/endpoints") {
        assert_eq!(str_at(endpoint, "/path"), "/metrics");
        let name = str_at(endpoint, "/port");
        let p = array_at(service, "/spec/ports")
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("the scraped Service has no port named {name}"));
        assert_eq!(m.container_port(&p["targetPort"]), port);
    }
}

#[test]
fn pod_runs_hardened_as_the_image_user_with_resource_bounds() {
    let m = Manifests::load();
    let pod = &m.statefulset()["spec"]["template"]["spec"];
    let c = m.container();
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert_eq!(u64_at(pod, "/securityContext/runAsUser"), RUN_AS);
    assert_eq!(u64_at(pod, "/securityContext/fsGroup"), RUN_AS);
    assert_eq!(
        str_at(pod, "/securityContext/seccompProfile/type"),
        "RuntimeDefault"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c.pointer(&format!("/resources/{kind}/{resource}"))
                    .is_some(),
                "resources.{kind}.{resource} is set"
            );
        }
    }
    let command: Vec<&str> = array_at(c, "/command")
        .iter()
        .chain(array_at(c, "/args"))
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        command,
        [
            BINARY,
            "run",
            "--config",
            "/etc/trainspotter/trainspotter.toml"
        ]
    );
}

// ------------------------------------------------------------------ container image

/// The arguments of the last instruction `name` of the Containerfile.
fn instruction(containerfile: &str, name: &str) -> String {
    containerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(name).filter(|r| r.starts_with(' ')))
        .unwrap_or_else(|| panic!("the Containerfile has no {name}"))
        .trim()
        .to_string()
}

#[test]
fn container_image_runs_as_the_pod_user_and_exposes_the_configured_port() {
    let m = Manifests::load();
    let file = read(CONTAINERFILE);
    assert_eq!(instruction(&file, "USER"), format!("{RUN_AS}:{RUN_AS}"));
    assert_eq!(
        instruction(&file, "EXPOSE"),
        config_port(&m.config()).to_string()
    );
    assert_eq!(instruction(&file, "ENTRYPOINT"), format!("[\"{BINARY}\"]"));
    assert_eq!(
        instruction(&file, "CMD"),
        r#"["run", "--config", "/etc/trainspotter/trainspotter.toml"]"#
    );
    assert!(
        file.contains("cargo build --release --locked"),
        "the image is built from the lock file"
    );
}

// ------------------------------------------------------------------ systemd

/// The values of `key=` in the unit, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_unit_waits_longer_than_the_shutdown_grace_and_sets_real_settings() {
    let unit = read(SYSTEMD_UNIT);
    // The unit runs with the file an operator writes; its grace is the default unless changed.
    let defaults = Config::default();
    let stop = unit_values(&unit, "TimeoutStopSec");
    assert_eq!(stop.len(), 1, "one TimeoutStopSec");
    let stop = Duration::from_secs(
        stop[0]
            .trim_end_matches('s')
            .parse()
            .expect("TimeoutStopSec in seconds"),
    );
    assert!(stop > defaults.shutdown.grace.0);
    assert!(stop > defaults.kafka.drain_timeout().0);
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        [format!(
            "{BINARY} run --config /etc/trainspotter/trainspotter.toml"
        )]
    );
    assert_eq!(unit_values(&unit, "KillSignal"), ["SIGTERM"]);
    assert_eq!(unit_values(&unit, "StateDirectory"), ["trainspotter"]);
    let mut state_dir = false;
    for env in unit_values(&unit, "Environment") {
        let (name, value) = env.split_once('=').expect("Environment=NAME=value");
        state_dir |= name == "TRAINSPOTTER__STATE__DIR" && value == "%S/trainspotter";
        assert_env_names_a_setting(name, value);
    }
    assert!(
        state_dir,
        "state.dir is the StateDirectory (%S/trainspotter)"
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    // Containers often have no systemd: this is the one check that may be skipped.
    let unit = read(SYSTEMD_UNIT);
    // verify checks that ExecStart exists, so point it at the binary this build made.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("trainspotter.service");
    std::fs::write(
        &copy,
        unit.replace(BINARY, env!("CARGO_BIN_EXE_trainspotter")),
    )
    .unwrap();
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            eprintln!("note: systemd-analyze is not installed; {SYSTEMD_UNIT} not verified");
            return;
        }
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    };
    let text = combined(&out);
    // Warnings about the unit (an unknown key, a bad value) name its file and exit 0.
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("trainspotter.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {SYSTEMD_UNIT}:\n{text}"
    );
}
