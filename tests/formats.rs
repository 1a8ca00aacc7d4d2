//! The same workload in every input format gives the same totals: each format's messages are
//! written for one simulated fleet, replayed through the real binary, and the reports compared.

use std::process::Command;

use trainspotter::sim::SplitMix64;

const T0: i64 = 1_714_521_600_000;
const SCRAPE_MS: i64 = 30_000;

/// One GPU at one scrape.
struct Scrape {
    ts_ms: i64,
    tenant: String,
    pod: String,
    job: String,
    node: String,
    uuid: String,
    tensor: f64,
    sm: f64,
    util_percent: f64,
    power_w: f64,
}

/// Two tenants: a 16-GPU training job (pods trainer-0 and trainer-1, 8 GPUs each) and a 2-GPU
/// notebook, scraped every 30 s for three hours.
fn fleet() -> Vec<Scrape> {
    let mut rng = SplitMix64::new(3);
    let mut out = Vec::new();
    for k in 0..(3 * 3600 * 1000 / SCRAPE_MS) {
        let ts_ms = T0 + k * SCRAPE_MS;
        for g in 0..18 {
            let (tenant, pod) = if g < 16 {
                ("lab-a", format!("trainer-{}", g / 8))
            } else {
                ("lab-b", "notebook-0".to_string())
            };
            let busy = g < 16;
            out.push(Scrape {
                ts_ms,
                tenant: tenant.into(),
                job: pod.rsplit_once('-').unwrap().0.to_string(),
                pod,
                node: format!("node-{}", g / 8),
                uuid: format!("GPU-{g:04}"),
                tensor: if busy {
                    0.4 + 0.1 * rng.uniform()
                } else {
                    0.01
                },
                sm: if busy { 0.8 } else { 0.05 },
                util_percent: if busy { 99.0 } else { 3.0 },
                power_w: 400.0 + 100.0 * rng.uniform(),
            });
        }
    }
    out
}

fn native(scrapes: &[Scrape]) -> String {
    let mut text = String::new();
    for s in scrapes {
        text.push_str(&format!(
            "{{\"ts\":{},\"tenant\":\"{}\",\"job\":\"{}\",\"node\":\"{}\",\"gpu\":\"{}\",\
             \"accelerator\":\"NVIDIA H100 80GB HBM3\",\"gpus\":1,\"interval_s\":30,\
             \"tensor_active\":{},\"sm_active\":{},\"gpu_util\":{},\"power_w\":{}}}\n",
            s.ts_ms,
            s.tenant,
            s.job,
            s.node,
            s.uuid,
            s.tensor,
            s.sm,
            s.util_percent / 100.0,
            s.power_w
        ));
    }
    text
}

/// prometheus-kafka-adapter JSON: one line per metric, value as a string, in the adapter's
/// order (all metrics of one scrape interleaved across GPUs).
fn prometheus_adapter(scrapes: &[Scrape]) -> String {
    let mut text = String::new();
    for s in scrapes {
        let ts = chrono::DateTime::from_timestamp_millis(s.ts_ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for (name, value) in [
            ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", s.tensor),
            ("DCGM_FI_PROF_SM_ACTIVE", s.sm),
            ("DCGM_FI_DEV_GPU_UTIL", s.util_percent),
            ("DCGM_FI_DEV_POWER_USAGE", s.power_w),
            ("DCGM_FI_DEV_SM_CLOCK", 1980.0),
        ] {
            text.push_str(&format!(
                "{{\"timestamp\":\"{ts}\",\"value\":\"{value}\",\"name\":\"{name}\",\"labels\":{{\
                 \"__name__\":\"{name}\",\"gpu\":\"{}\",\"UUID\":\"{}\",\"modelName\":\"NVIDIA H100 80GB HBM3\",\
                 \"Hostname\":\"{}\",\"namespace\":\"{}\",\"pod\":\"{}\",\"container\":\"main\"}}}}\n",
                s.uuid.trim_start_matches("GPU-").trim_start_matches('0'),
                s.uuid,
                s.node,
                s.tenant,
                s.pod
            ));
        }
        // A GPU no pod holds at this scrape: no tenant, nothing to account.
        text.push_str(&format!(
            "{{\"timestamp\":\"{ts}\",\"value\":\"0\",\"name\":\"DCGM_FI_DEV_GPU_UTIL\",\"labels\":{{\"gpu\":\"7\",\"UUID\":\"GPU-idle\",\"Hostname\":\"node-9\"}}}}\n"
        ));
    }
    text
}

/// Vector's kafka sink with the json codec (every other line wrapped as its native_json codec
/// writes it).
fn vector(scrapes: &[Scrape]) -> String {
    let mut text = String::new();
    let mut wrap = false;
    for s in scrapes {
        let ts = chrono::DateTime::from_timestamp_millis(s.ts_ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        for (name, value) in [
            ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", s.tensor),
            ("DCGM_FI_PROF_SM_ACTIVE", s.sm),
            ("DCGM_FI_DEV_GPU_UTIL", s.util_percent),
            ("DCGM_FI_DEV_POWER_USAGE", s.power_w),
        ] {
            let metric = format!(
                "{{\"name\":\"{name}\",\"namespace\":\"dcgm\",\"tags\":{{\"UUID\":\"{}\",\
                 \"modelName\":\"NVIDIA H100 80GB HBM3\",\"hostname\":\"{}\",\"namespace\":\"{}\",\
                 \"pod\":\"{}\"}},\"timestamp\":\"{ts}\",\"kind\":\"absolute\",\"gauge\":{{\"value\":{value}}}}}",
                s.uuid, s.node, s.tenant, s.pod
            );
            wrap = !wrap;
            if wrap {
                text.push_str(&format!("{{\"metric\":{metric}}}\n"));
            } else {
                text.push_str(&metric);
                text.push('\n');
            }
        }
    }
    text
}

/// The OpenTelemetry Collector's kafka exporter with the otlp_json encoding: one
/// ExportMetricsServiceRequest per scrape, with every GPU and metric as data points, the node in
/// the resource attributes and 64-bit integers as strings.
fn otlp_json(scrapes: &[Scrape]) -> String {
    let kv =
        |k: &str, v: &str| format!("{{\"key\":\"{k}\",\"value\":{{\"stringValue\":\"{v}\"}}}}");
    let mut text = String::new();
    for group in scrapes.chunk_by(|a, b| a.ts_ms == b.ts_ms) {
        let ns = (group[0].ts_ms as i128 * 1_000_000).to_string();
        let mut resources = Vec::new();
        for node in group.chunk_by(|a, b| a.node == b.node) {
            let metrics: Vec<String> = [
                ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 0),
                ("DCGM_FI_PROF_SM_ACTIVE", 1),
                ("DCGM_FI_DEV_GPU_UTIL", 2),
                ("DCGM_FI_DEV_POWER_USAGE", 3),
            ]
            .iter()
            .map(|(name, i)| {
                let points: Vec<String> = node
                    .iter()
                    .map(|s| {
                        let v = [s.tensor, s.sm, s.util_percent, s.power_w][*i];
                        format!(
                            "{{\"asDouble\":{v},\"timeUnixNano\":\"{ns}\",\"attributes\":[{},{},{},{}]}}",
                            kv("UUID", &s.uuid),
                            kv("modelName", "NVIDIA H100 80GB HBM3"),
                            kv("namespace", &s.tenant),
                            kv("pod", &s.pod)
                        )
                    })
                    .collect();
                format!("{{\"name\":\"{name}\",\"gauge\":{{\"dataPoints\":[{}]}}}}", points.join(","))
            })
            .collect();
            resources.push(format!(
                "{{\"resource\":{{\"attributes\":[{},{}]}},\"scopeMetrics\":[{{\"scope\":{{\"name\":\"otelcol/prometheusreceiver\"}},\"metrics\":[{}]}}]}}",
                kv("service.name", "dcgm-exporter"),
                kv("Hostname", &node[0].node),
                metrics.join(",")
            ));
        }
        text.push_str(&format!(
            "{{\"resourceMetrics\":[{}]}}\n",
            resources.join(",")
        ));
    }
    text
}

/// The same requests as OTLP protobuf, encoded by the official Python classes, fed to the
/// pipeline as Kafka message payloads would be.
fn otlp_proto_report(dir: &std::path::Path, json: &str) -> serde_json::Value {
    use std::sync::Arc;
    use trainspotter::config::{Config, InputFormat};
    use trainspotter::decode::DecodeLimits;
    use trainspotter::metrics::Metrics;
    use trainspotter::pipeline::{Pipeline, Shard};

    let input = dir.join("otlp.ndjson");
    let encoded = dir.join("otlp.bin");
    std::fs::write(&input, json).unwrap();
    let python = std::env::var("TRAINSPOTTER_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
        });
    let out = Command::new(&python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/otlp_encode.py"))
        .arg(&input)
        .arg(&encoded)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/deps.sh)", python.display()));
    assert!(
        out.status.success(),
        "otlp_encode.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&encoded).unwrap();
    let mut payloads = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        payloads.push(&bytes[at + 4..at + 4 + len]);
        at += 4 + len;
    }
    let mut cfg = Config::default();
    cfg.input
        .formats
        .insert("otlp_metrics".into(), InputFormat::OtlpProto);
    let mut p = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
    let shard = Shard::new("otlp_metrics", 0);
    let rejected = p.process(
        &shard,
        payloads.iter().map(|b| Some(*b)),
        DecodeLimits::OPEN,
    );
    assert!(rejected.is_empty(), "{rejected:?}");
    p.finish();
    serde_json::to_value(p.report()).unwrap()
}

fn replay(dir: &std::path::Path, name: &str, format: &str, text: &str) -> serde_json::Value {
    let input = dir.join(format!("{name}.ndjson"));
    let report = dir.join(format!("{name}.report.json"));
    std::fs::write(&input, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trainspotter"))
        .args(["replay", "--format", format, "--report"])
        .arg(&report)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

#[test]
fn one_workload_gives_the_same_totals_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let scrapes = fleet();
    let native = replay(dir.path(), "native", "native", &native(&scrapes));
    let adapter = replay(
        dir.path(),
        "adapter",
        "prometheus-adapter",
        &prometheus_adapter(&scrapes),
    );
    let vector = replay(dir.path(), "vector", "vector", &vector(&scrapes));
    let otlp = otlp_json(&scrapes);
    let otlp_json = replay(dir.path(), "otlp-json", "otlp-json", &otlp);
    let otlp_proto = otlp_proto_report(dir.path(), &otlp);
    assert_eq!(native["events"]["accepted"], scrapes.len());
    for (name, other) in [
        ("prometheus-adapter", &adapter),
        ("vector", &vector),
        ("otlp-json", &otlp_json),
        ("otlp-proto", &otlp_proto),
    ] {
        assert_eq!(
            other["events"]["accepted"], native["events"]["accepted"],
            "{name}: one sample per GPU and scrape"
        );
        assert_eq!(other["events"]["rejected"], 0, "{name}");
        for list in ["tenants", "jobs"] {
            assert_eq!(
                other[list], native[list],
                "{list} differ between {name} and native input"
            );
        }
    }
    // 16 GPUs for three hours, and the pods of the training job are one job.
    let jobs = native["jobs"].as_array().unwrap();
    let trainer = jobs.iter().find(|j| j["job"] == "trainer").unwrap();
    assert_eq!(trainer["accelerator_seconds"], 16.0 * 3.0 * 3600.0);
    assert_eq!(trainer["max_concurrent_accelerators"], 16.0);
}
