//! The state of long-lived keys, as the engine holds it (`Engine::footprint`): the figures of
//! BENCHMARKS.md's "State per long-running key".
//!
//! ```sh
//! cargo run --release --example state_probe -- ../shared/data/helios-earth-vcs
//! ```
//!
//! 1. Tenants over a real month: the eight virtual clusters of SenseTime's Helios "Earth" cluster,
//!    May 2020, one sample per cluster and minute of the GPUs its running jobs held (as
//!    `tests/helios_accounting.rs` replays them). Their allocations change from minute to minute;
//!    the samples carry no activity.
//! 2. Jobs with DCGM activity: 16 jobs of 8 H100s each, every device sampled once a minute for
//!    31 days, its tensor activity wandering around 0.45 (a seeded random walk, reported to three
//!    decimals as the exporter does), so that every pane's FLOP sum differs from the one before.
//!
//! Both print the state's bytes per key at several ages: a job's and a tenant's windows grow
//! until their longest (30 days) is full.

use std::path::PathBuf;

use trainspotter::config::Config;
use trainspotter::decode::UsageSample;
use trainspotter::engine::Engine;
use trainspotter::traces::{helios_samples, read_helios};

const DAY_MS: i64 = 86_400_000;
/// 2024-05-01T00:00:00Z.
const T0: i64 = 1_714_521_600_000;

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "../shared/data/helios-earth-vcs".into()),
    );
    let t = std::time::Instant::now();
    helios_tenants(&dir);
    println!("  ({:.2} s)", t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();
    dcgm_jobs();
    println!("  ({:.2} s)", t.elapsed().as_secs_f64());
}

fn helios_tenants(dir: &std::path::Path) {
    let vcs = read_helios(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let events = helios_samples(&vcs);
    let start = events[0].0;
    let mut engine = Engine::new(&Config::default()).expect("the default configuration");
    let mut ages = [1, 7, 14, 31].into_iter().peekable();
    println!(
        "Helios tenants ({} virtual clusters, {} samples)",
        vcs.len(),
        events.len()
    );
    for (ts, vc, gpus) in &events {
        while let Some(&days) = ages.peek() {
            if *ts < start + days * DAY_MS {
                break;
            }
            report_tenants(&engine, days);
            ages.next();
        }
        engine.apply(&UsageSample::new(
            *ts,
            vcs[*vc].0.as_str(),
            *gpus as f64,
            60.0,
        ));
    }
    for days in ages {
        report_tenants(&engine, days);
    }
}

fn report_tenants(engine: &Engine, days: i64) {
    let f = engine.footprint();
    println!(
        "  after {days:>2} days: {:>6.0} B per tenant ({} tenants)",
        f.tenant_bytes as f64 / f.tenants.max(1) as f64,
        f.tenants
    );
}

fn dcgm_jobs() {
    const JOBS: usize = 16;
    const GPUS: usize = 8;
    let mut engine = Engine::new(&Config::default()).expect("the default configuration");
    let mut activity = vec![0.45f64; JOBS * GPUS];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        // xorshift64*: a fixed, seeded sequence.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    // The 31st day is reported once the loop ends.
    let mut ages = [1i64, 6 * 60, 24 * 60, 7 * 24 * 60].into_iter().peekable();
    println!("Jobs of {GPUS} H100s, one sample per device a minute, activity varying");
    for minute in 0..31 * 24 * 60 {
        if ages.peek() == Some(&minute) {
            report_jobs(&engine, minute);
            ages.next();
        }
        for j in 0..JOBS {
            for g in 0..GPUS {
                let a = &mut activity[j * GPUS + g];
                *a = (*a + (next() - 0.5) * 0.02).clamp(0.3, 0.6);
                let tensor = (*a * 1000.0).round() / 1000.0;
                let s = UsageSample::new(T0 + minute * 60_000, format!("t{}", j % 4), 1.0, 60.0)
                    .job(format!("pretrain-{j}"))
                    .device(format!("n{j}"), g.to_string())
                    .accelerator("NVIDIA H100 80GB HBM3")
                    .tensor_active(tensor);
                engine.apply(&s);
            }
        }
    }
    report_jobs(&engine, 31 * 24 * 60);
}

fn report_jobs(engine: &Engine, minutes: i64) {
    let f = engine.footprint();
    let age = match minutes {
        m if m >= 24 * 60 => format!("{} days", m / (24 * 60)),
        m if m >= 60 => format!("{} hours", m / 60),
        m => format!("{m} minutes"),
    };
    println!(
        "  at {age:>9}: {:>6.0} B per job ({} jobs), {:>6.0} B per tenant",
        f.per_job(),
        f.jobs,
        f.tenant_bytes as f64 / f.tenants.max(1) as f64,
    );
}
