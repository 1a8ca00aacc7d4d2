//! Decoding alone, as the pipeline decodes a native event (`FlatNative::read`, then its sample
//! with names borrowed), over one round of the benchmark fleet's events: the figures of the
//! decoder's design steps in BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release --example decode_probe -- 1000000 7   # devices, passes: best ns an event
//! valgrind --tool=callgrind --toggle-collect='decode_probe::probe' \
//!   target/release/examples/decode_probe 100000 1           # instructions an event: Ir / 100000
//! ```
//!
//! The fleet is `trainspotter bench`'s with a job per five devices, a tenant per ten and every
//! device sampled once a second.

use std::time::Instant;

use trainspotter::bench::Shape;
use trainspotter::decode::{DecodeLimits, FlatNative};
use trainspotter::flatjson::KeyOrder;

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args().nth(i).map_or(default, |a| {
            a.parse()
                .unwrap_or_else(|_| panic!("argument {i} ({a:?}) is not a count"))
        })
    };
    let (gpus, passes) = (arg(1, 100_000).max(10), arg(2, 1).max(1));
    let round = Shape {
        gpus,
        jobs: gpus / 5,
        tenants: gpus / 10,
        interval_ms: 1000,
        rounds: 2,
        batch: 4096,
        seed: 1,
        training_every: 0,
        organisations: 0,
    }
    .round();
    let mut best = f64::MAX;
    for _ in 0..passes {
        let started = Instant::now();
        let mut order = KeyOrder::default();
        let decoded = round
            .payloads()
            .filter(|p| probe(std::hint::black_box(p), &mut order))
            .count();
        assert_eq!(decoded, round.len(), "every generated event decodes");
        best = best.min(started.elapsed().as_nanos() as f64 / round.len() as f64);
    }
    println!("{best:.1} ns an event (best of {passes} passes over {gpus} events)");
}

/// One event read and validated; out of line, so that callgrind can count it apart.
#[inline(never)]
fn probe(payload: &[u8], order: &mut KeyOrder) -> bool {
    FlatNative::read(payload, order)
        .is_some_and(|f| std::hint::black_box(f.sample(DecodeLimits::OPEN)).is_ok())
}
