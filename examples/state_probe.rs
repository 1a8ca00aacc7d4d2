//! The state of long-lived keys, as the engine holds it (`Engine::footprint`): the figures of
//! BENCHMARKS.md's "State per long-running key".
//!
//! ```sh
//! cargo run --release --example state_probe -- ../shared/data/helios-earth-vcs \
//!     ../shared/data/alibaba-gpu-v2023-openb/openb_pod_list_default.csv
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
//! 3. The job ages of a real fleet: the GPU pods of Alibaba's openb trace (149 days, 6,203 pods
//!    with a schedule and a deletion time; at any moment up to about 40 of them running, mostly
//!    long-lived ones although the median pod lives minutes), each a job whose devices are sampled
//!    once a minute while it runs, with tensor activity wandering as in the second part (the trace
//!    has none). Printed at 50 instants spread over the trace: the job state held per running pod.
//!
//! The first two print the state's bytes per key at several ages: a job's and a tenant's windows
//! grow until their longest (30 days) is full.

use std::path::PathBuf;

use trainspotter::config::Config;
use trainspotter::decode::UsageSample;
use trainspotter::engine::Engine;
use trainspotter::traces::{helios_samples, read_helios, read_openb_pods};

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
    let openb = PathBuf::from(std::env::args().nth(2).unwrap_or_else(|| {
        "../shared/data/alibaba-gpu-v2023-openb/openb_pod_list_default.csv".into()
    }));
    let t = std::time::Instant::now();
    openb_jobs(&openb);
    println!("  ({:.2} s)", t.elapsed().as_secs_f64());
}

/// A fixed, seeded sequence in [0, 1) (xorshift64*).
fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut rng = seed;
    move || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Moves a device's tensor activity one step of its random walk (within 0.3 to 0.6) and gives
/// it as the exporter reports it, to three decimals.
fn wander(activity: &mut f64, next: &mut impl FnMut() -> f64) -> f64 {
    *activity = (*activity + (next() - 0.5) * 0.02).clamp(0.3, 0.6);
    (*activity * 1000.0).round() / 1000.0
}

fn openb_jobs(path: &std::path::Path) {
    const INSTANTS: i64 = 50;
    let mut pods = read_openb_pods(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    pods.sort_by_key(|p| p.scheduled_s);
    let end_min = pods.iter().map(|p| p.deletion_s).max().unwrap_or(0) / 60;
    let mut engine = Engine::new(&Config::default()).expect("the default configuration");
    let mut next = uniform(0x9E37_79B9_7F4A_7C15);
    // Running pods: index into `pods` and each device's activity.
    let mut running: Vec<(usize, Vec<f64>)> = Vec::new();
    let mut waiting = pods.iter().enumerate().peekable();
    let step = end_min / INSTANTS;
    let mut per_running = Vec::new();
    // Pods running and their median age (hours) at each instant with one.
    let mut seen: Vec<(usize, f64)> = Vec::new();
    println!(
        "Alibaba openb GPU pods ({} pods over {} days), each a job sampled every minute while it runs",
        pods.len(),
        end_min / (24 * 60)
    );
    println!("  instant  running  median age  jobs held  job state per running pod");
    for minute in 0..=end_min {
        let now_s = minute * 60;
        while let Some((i, p)) = waiting.next_if(|(_, p)| p.scheduled_s <= now_s) {
            running.push((i, vec![0.45; p.num_gpu as usize]));
        }
        running.retain(|(i, _)| pods[*i].deletion_s > now_s);
        if minute > 0 && minute % step == 0 && minute / step <= INSTANTS {
            let f = engine.footprint();
            let mut ages: Vec<f64> = running
                .iter()
                .map(|(i, _)| (now_s - pods[*i].scheduled_s) as f64 / 3600.0)
                .collect();
            ages.sort_by(f64::total_cmp);
            let per = f.job_bytes as f64 / running.len().max(1) as f64;
            let median_age = ages.get(ages.len() / 2).copied().unwrap_or(0.0);
            if !running.is_empty() {
                per_running.push(per);
                seen.push((running.len(), median_age));
            }
            if minute / step % 5 == 0 {
                println!(
                    "  day {:>3}  {:>7}  {:>8.1} h  {:>9}  {:>8.0} B",
                    minute / (24 * 60),
                    running.len(),
                    median_age,
                    f.jobs,
                    per
                );
            }
        }
        for (i, activity) in running.iter_mut() {
            let pod = &pods[*i];
            for (g, a) in activity.iter_mut().enumerate() {
                let tensor = wander(a, &mut next);
                let s = UsageSample::new(
                    T0 + minute * 60_000,
                    pod.qos.as_str(),
                    pod.gpu_milli as f64 / 1000.0,
                    60.0,
                )
                .job(pod.name.as_str())
                .device(pod.name.as_str(), g.to_string())
                .tensor_active(tensor);
                engine.apply(&s);
            }
        }
    }
    let fewest = seen.iter().map(|s| s.0).min().unwrap_or(0);
    let most = seen.iter().map(|s| s.0).max().unwrap_or(0);
    let youngest = seen.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    let oldest = seen.iter().map(|s| s.1).fold(0.0, f64::max);
    println!(
        "  at those instants {fewest} to {most} pods running, their median age {youngest:.0} to {oldest:.0} h"
    );
    per_running.sort_by(f64::total_cmp);
    let q = |x: f64| per_running[((per_running.len() - 1) as f64 * x).round() as usize];
    println!(
        "  job state per running pod over the {} instants with one: median {:.0} B, quartiles {:.0} to {:.0} B, from {:.0} to {:.0} B",
        per_running.len(),
        q(0.5),
        q(0.25),
        q(0.75),
        q(0.0),
        q(1.0)
    );
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
    let mut next = uniform(0x2545_F491_4F6C_DD1D);
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
                let tensor = wander(a, &mut next);
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
