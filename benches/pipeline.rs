//! Throughput of the hot path: decoding, the engine, and a whole pipeline batch.
//! Run with `cargo bench --bench pipeline`; results depend on the machine (report it with them).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use trainspotter::config::Config;
use trainspotter::decode::{decode_native, DecodeLimits, UsageSample};
use trainspotter::engine::Engine;
use trainspotter::metrics::Metrics;
use trainspotter::pipeline::{Pipeline, Shard};
use trainspotter::sim::Fleet;

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

fn decode(c: &mut Criterion) {
    let payload = fleet_samples(1)[0].to_json();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("native_json_{}_bytes", payload.len()), |b| {
        b.iter(|| {
            decode_native(std::hint::black_box(payload.as_bytes()), DecodeLimits::OPEN).unwrap()
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

criterion_group!(benches, decode, engine, pipeline);
criterion_main!(benches);
