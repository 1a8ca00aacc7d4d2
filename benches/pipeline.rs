//! Throughput of the hot path: decoding (each input format), window update (and a late sample into
//! a long-lived key's encoded panes), detection, the engine,
//! a batch of tenant registry updates, a whole pipeline batch, and rendering an alert. Run with
//! `cargo bench --bench pipeline`; results depend on the machine (report it with them). The
//! fleet-scale harness is `trainspotter bench` (BENCHMARKS.md).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use trainspotter::bench::Shape;
use trainspotter::config::Config;
use trainspotter::config::InputFormat;
use trainspotter::decode::{
    decode_native, decode_native_by_serde, DecodeLimits, Decoded, FlatNative, UsageSample,
};
use trainspotter::detect::{self, DetectPane, DeviceStat, Signal};
use trainspotter::engine::Engine;
use trainspotter::estimate::Usage;
use trainspotter::flatjson::KeyOrder;
use trainspotter::metrics::Metrics;
use trainspotter::pipeline::{Pipeline, Shard};
use trainspotter::registry_topic::Update;
use trainspotter::sim::Fleet;
use trainspotter::window::Windows;

const T0: i64 = 1_714_521_600_000;

/// `minutes` of the demo fleet (640 devices), in event-time order.
fn fleet_samples(minutes: i64) -> Vec<UsageSample> {
    let mut fleet = Fleet::demo(T0, (minutes / 60 + 3) as u32, 7);
    let mut out = Vec::new();
    for m in 61..61 + minutes {
        fleet.samples_at(T0 + m * 60_000, &mut out);
    }
    out
}

/// One message of each input format: a native event, and one DCGM metric as each collector
/// writes it (the metric formats are joined into samples afterwards, which is not measured here).
fn payloads() -> Vec<(InputFormat, &'static str, String)> {
    let native = fleet_samples(1)[0].to_json();
    let adapter = r#"{"timestamp":"2024-05-01T00:01:00.000Z","value":"0.42","name":"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE","labels":{"__name__":"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE","gpu":"3","UUID":"GPU-5fd3b2b4-0000-4000-8000-000000000003","modelName":"NVIDIA H100 80GB HBM3","Hostname":"node-17","namespace":"tenant-a","pod":"train-0","container":"main"}}"#;
    let vector = r#"{"name":"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE","namespace":"dcgm","tags":{"UUID":"GPU-5fd3b2b4-0000-4000-8000-000000000003","modelName":"NVIDIA H100 80GB HBM3","hostname":"node-17","namespace":"tenant-a","pod":"train-0"},"timestamp":"2024-05-01T00:01:00.000000000Z","kind":"absolute","gauge":{"value":0.42}}"#;
    let otlp = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"node-17"}}]},"scopeMetrics":[{"metrics":[{"name":"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE","gauge":{"dataPoints":[{"timeUnixNano":"1714521660000000000","asDouble":0.42,"attributes":[{"key":"UUID","value":{"stringValue":"GPU-5fd3b2b4-0000-4000-8000-000000000003"}},{"key":"modelName","value":{"stringValue":"NVIDIA H100 80GB HBM3"}},{"key":"namespace","value":{"stringValue":"tenant-a"}},{"key":"pod","value":{"stringValue":"train-0"}}]}]}}]}]}]}"#;
    vec![
        (InputFormat::Native, "native", native),
        (
            InputFormat::PrometheusAdapter,
            "prometheus_adapter",
            adapter.into(),
        ),
        (InputFormat::Vector, "vector", vector.into()),
        (InputFormat::OtlpJson, "otlp_json", otlp.into()),
    ]
}

fn decode(c: &mut Criterion) {
    let cfg = Config::default();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (format, name, payload) in payloads() {
        let decoder = trainspotter::pipeline::decoder(&cfg, format).unwrap();
        let mut out = Decoded::default();
        decoder
            .decode(payload.as_bytes(), DecodeLimits::OPEN, &mut out)
            .unwrap_or_else(|r| panic!("{name}: {r}"));
        assert!(!out.is_empty(), "{name} decoded to nothing");
        g.bench_function(format!("{name}_{}_bytes", payload.len()), |b| {
            b.iter(|| {
                out.clear();
                decoder
                    .decode(
                        std::hint::black_box(payload.as_bytes()),
                        DecodeLimits::OPEN,
                        &mut out,
                    )
                    .unwrap();
            })
        });
    }
    // The native format by serde_json alone: what the one-pass reader replaced.
    let native = fleet_samples(1)[0].to_json();
    g.bench_function(
        format!("native_by_serde_json_{}_bytes", native.len()),
        |b| {
            b.iter(|| {
                decode_native_by_serde(std::hint::black_box(native.as_bytes()), DecodeLimits::OPEN)
                    .unwrap()
            })
        },
    );
    // What the pipeline does with a native event: the flat read, then validation into a sample
    // that borrows the payload's names. Two events: the simulator's (full-precision floats) and
    // the fleet harness's (three decimals, as exporters print DCGM readings).
    let fleet = Shape {
        gpus: 8,
        jobs: 1,
        tenants: 1,
        interval_ms: 10_000,
        rounds: 1,
        batch: 1,
        seed: 1,
        training_every: 0,
        organisations: 0,
    }
    .round();
    let fleet = fleet.payloads().next().expect("one event").to_vec();
    for (name, payload) in [("simulator", native.as_bytes()), ("fleet", &fleet[..])] {
        g.bench_function(
            format!("native_borrowed_sample_{name}_{}_bytes", payload.len()),
            |b| {
                let mut order = KeyOrder::default();
                b.iter(|| {
                    let flat = FlatNative::read(std::hint::black_box(payload), &mut order).unwrap();
                    let sample = flat.sample(DecodeLimits::OPEN).unwrap();
                    std::hint::black_box((sample.ts_ms, sample.tenant.len(), sample.gpus));
                })
            },
        );
    }
    g.bench_function(format!("native_owned_sample_{}_bytes", native.len()), |b| {
        b.iter(|| {
            decode_native(std::hint::black_box(native.as_bytes()), DecodeLimits::OPEN).unwrap()
        })
    });
    g.finish();
}

fn windows(c: &mut Criterion) {
    let specs = Config::default().validate().unwrap().windows;
    let usage = Usage {
        acc_ms: 10_000,
        measured_flop: 4e15,
        nominal_flop: 0.0,
    };
    let mut g = c.benchmark_group("windows");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("add_to_{}_default_windows", specs.len()), |b| {
        let mut w = Windows::default();
        let mut ts = T0;
        b.iter(|| {
            ts += 10_000;
            w.add(&specs, ts, std::hint::black_box(&usage));
        })
    });
    // A key two days old, sampled every minute with varying activity, given a sample 30 minutes
    // late: it lands in the encoded panes of the hour's and the day's rings.
    let mut old = Windows::default();
    let minutes = 2 * 24 * 60;
    for m in 0..minutes {
        let flop = 4e17 * (1.0 + (m % 13) as f64 / 100.0);
        let u = Usage {
            acc_ms: 60_000,
            measured_flop: flop,
            nominal_flop: 0.0,
        };
        old.add(&specs, T0 + m * 60_000, &u);
    }
    let late = T0 + (minutes - 30) * 60_000;
    g.bench_function("add_30_minutes_late_to_a_key_2_days_old", |b| {
        b.iter(|| old.add(&specs, late, std::hint::black_box(&usage)))
    });
    g.finish();
}

fn detection(c: &mut Criterion) {
    let cfg = Config::default();
    // A 64-device gang over the 60 one-minute panes of the default detection window.
    let panes: Vec<DetectPane> = (0..60)
        .map(|i| {
            let mut p = DetectPane::default();
            p.accelerators = 64.0;
            p.add_activity(
                Signal::TensorActive,
                0.4 + 0.01 * (i % 7) as f32,
                64.0 * 60.0,
            );
            p.memory.add(60.0, 64.0 * 60.0);
            p
        })
        .collect();
    let devices: Vec<DeviceStat> = (0..64)
        .map(|d| DeviceStat {
            activity: 0.4 + 0.001 * d as f64,
            variance: Some(0.0004),
        })
        .collect();
    let mut g = c.benchmark_group("detection");
    g.throughput(Throughput::Elements(1));
    g.bench_function("features_and_score_of_a_64_device_job", |b| {
        b.iter(|| {
            let f = detect::features(
                std::hint::black_box(&panes),
                &devices,
                7200.0,
                cfg.detection.synchrony_min_variation,
                &panes[30..],
            );
            detect::score(&f, &cfg.detection)
        })
    });
    g.finish();
}

fn engine(c: &mut Criterion) {
    let warm = fleet_samples(120);
    let next = fleet_samples(10);
    let cfg = Config::default();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(next.len() as u64));
    g.bench_function("apply_10_minutes_of_640_devices", |b| {
        b.iter_batched(
            || {
                let mut e = Engine::new(&cfg).unwrap();
                for s in &warm {
                    e.apply(s);
                }
                e
            },
            |mut e| {
                for s in &next {
                    // The next ten minutes, shifted after the warm-up: steady state, new panes.
                    let mut s = s.clone();
                    s.ts_ms += 120 * 60_000;
                    e.apply(&s);
                }
                e
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// A batch of registry topic updates against a registry of 100k tenants in 1,000 organisations
/// (with the bench harness's two policy rules), and a copy of that registry, which is what every
/// batch of updates cost before the registry was changed in place.
fn registry(c: &mut Criterion) {
    let shape = Shape {
        gpus: 8,
        jobs: 1,
        tenants: 100_000,
        interval_ms: 10_000,
        rounds: 1,
        batch: 1,
        seed: 1,
        training_every: 0,
        organisations: 1000,
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.toml");
    std::fs::write(&file, shape.round().registry(shape.organisations)).unwrap();
    let mut cfg = Config::default();
    cfg.registry.file = file.to_string_lossy().into_owned();
    let mut p = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
    for partition in 0..2 {
        p.insert_shard(Shard::new("gpu-usage", partition), p.new_engine());
    }
    assert_eq!(p.registry().len(), 100_000);
    let update = [Update {
        tenant: "tenant-new".into(),
        value: Some(br#"{"organisation":"org-1"}"#.to_vec()),
    }];
    let mut g = c.benchmark_group("registry");
    g.bench_function("update_batch_of_one_100k_tenants", |b| {
        b.iter(|| assert!(p.apply_registry_updates(&update).is_empty()))
    });
    g.bench_function("copy_of_100k_tenants", |b| {
        b.iter(|| std::hint::black_box((**p.registry()).clone()))
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let payloads: Vec<String> = fleet_samples(7)
        .iter()
        .take(4096)
        .map(UsageSample::to_json)
        .collect();
    let cfg = Config::default();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(payloads.len() as u64));
    g.bench_function("batch_of_4096_native_events", |b| {
        b.iter_batched(
            || Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap(),
            |mut p| {
                let rejected = p.process(
                    &Shard::local(),
                    payloads.iter().map(|s| Some(s.as_bytes())),
                    DecodeLimits::OPEN,
                );
                assert!(rejected.is_empty());
                p
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Rendering an alert: the record of a transition (`AlertBook` makes one for every new or resolved
/// alert from the evidence it holds; a copy of a record stands for that here) and the record as
/// the Kafka record's CloudEvent, the demo's pretraining run's `TrainingSuspected`.
fn alerts(c: &mut Criterion) {
    let mut engine = Engine::new(&Config::default()).unwrap();
    let mut fleet = Fleet::demo(T0, 4, 7);
    let mut samples = Vec::new();
    let mut records = Vec::new();
    for m in 0..4 * 60 {
        samples.clear();
        fleet.samples_at(T0 + m * 60_000, &mut samples);
        for s in &samples {
            engine.apply(s);
        }
        records.extend(engine.drain_alerts());
    }
    let record = records
        .iter()
        .find(|r| r.job.as_deref() == Some("pretrain-70b"))
        .expect("the pretraining run is suspected within 4 hours");
    let mut g = c.benchmark_group("alerts");
    g.bench_function("record_and_cloudevent_of_a_training_alert", |b| {
        b.iter(|| record.clone().to_cloudevent("/trainspotter"))
    });
    g.finish();
}

criterion_group!(benches, decode, windows, detection, engine, registry, pipeline, alerts);
criterion_main!(benches);
