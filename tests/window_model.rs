//! Model test: random, shuffled, duplicated event streams through the engine, every lifetime and
//! window value compared with a naive recomputation over the de-duplicated input.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use trainspotter::config::Config;
use trainspotter::decode::UsageSample;
use trainspotter::engine::Engine;
use trainspotter::estimate::accelerator_ms;

const T0: i64 = 1_714_521_600_000;

#[derive(Debug, Clone)]
struct Ev {
    tenant: u8,
    job: Option<u8>,
    gpu: u8,
    ts: i64,
    gpus: u8,
    interval_s: u16,
}

impl Ev {
    fn sample(&self) -> UsageSample {
        let mut s = UsageSample::new(
            self.ts,
            format!("t{}", self.tenant),
            self.gpus as f64,
            self.interval_s as f64,
        )
        .device("n0", self.gpu.to_string());
        if let Some(j) = self.job {
            s = s.job(format!("j{j}"));
        }
        s
    }

    fn identity(&self) -> (u8, Option<u8>, u8, i64) {
        (self.tenant, self.job, self.gpu, self.ts)
    }
}

fn event(span_ms: i64) -> impl Strategy<Value = Ev> {
    (
        0u8..3,
        prop::option::of(0u8..3),
        0u8..4,
        0..span_ms,
        1u8..=8,
        prop::sample::select(vec![1u16, 30, 60, 300]),
    )
        .prop_map(|(tenant, job, gpu, off, gpus, interval_s)| Ev {
            tenant,
            job,
            gpu,
            ts: T0 + off,
            gpus,
            interval_s,
        })
}

/// Events, some delivered twice, in random order.
fn stream(span_ms: i64) -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec((event(span_ms), any::<bool>()), 1..400).prop_flat_map(|evs| {
        let mut v = Vec::new();
        for (e, dup) in evs {
            if dup {
                v.push(e.clone());
            }
            v.push(e);
        }
        Just(v).prop_shuffle()
    })
}

fn config(windows: &str) -> Config {
    Config::from_toml(&format!(
        "[windows]\ndedup_horizon = \"3h\"\n{windows}\n[alerts]\nprojection_window = \"a\"\n"
    ))
    .unwrap()
}

/// Naive expectation: the first delivery of each identity counts, and so does any delivery older
/// than the de-duplication horizon behind the watermark (it cannot be checked, and is reported as
/// unverified); a window ending at E covers `E - width <= ts < E`, E being the first slide boundary
/// after the latest event.
fn check(cfg: &Config, events: &[Ev]) -> Result<(), TestCaseError> {
    let specs = cfg.validate().unwrap().windows;
    let lateness = cfg.windows.allowed_lateness.ms();
    let settings = cfg.validate().unwrap();
    // A job may leave once idle for the longest window, or, if never suspected of training,
    // for the ended-job retention.
    let longest = specs
        .iter()
        .map(|w| w.width_ms() + w.slide_ms())
        .max()
        .unwrap()
        .min(settings.ended_job_retention_ms);
    let mut engine = Engine::new(cfg).unwrap();
    // A job idle for longer than that may be evicted (and forgotten); note every job that was ever
    // that idle, judged on what had arrived so far.
    let mut job_latest: BTreeMap<(u8, u8), i64> = BTreeMap::new();
    let mut forgettable: HashSet<(String, String)> = HashSet::new();
    let horizon = cfg.windows.dedup_horizon.ms();
    let mut verified: HashSet<(u8, Option<u8>, u8, i64)> = HashSet::new();
    let mut counted: Vec<&Ev> = Vec::new();
    let mut unverified = 0usize;
    let mut max_ts = i64::MIN;
    for e in events {
        if max_ts != i64::MIN && e.ts < max_ts - lateness - horizon {
            counted.push(e);
            unverified += 1;
        } else if verified.insert(e.identity()) {
            counted.push(e);
        }
        if e.ts > max_ts {
            max_ts = e.ts;
            for (&(t, j), &last) in &job_latest {
                if last < max_ts - lateness - longest {
                    forgettable.insert((format!("t{t}"), format!("j{j}")));
                }
            }
        }
        if let Some(j) = e.job {
            let l = job_latest.entry((e.tenant, j)).or_insert(e.ts);
            *l = (*l).max(e.ts);
        }
        engine.apply(&e.sample());
    }
    let unique = counted;
    let latest = max_ts;

    let mut tenants: BTreeMap<String, Vec<&Ev>> = BTreeMap::new();
    let mut jobs: BTreeMap<(String, String), Vec<&Ev>> = BTreeMap::new();
    for e in &unique {
        tenants.entry(format!("t{}", e.tenant)).or_default().push(e);
        if let Some(j) = e.job {
            jobs.entry((format!("t{}", e.tenant), format!("j{j}")))
                .or_default()
                .push(e);
        }
    }
    let expect = |evs: &[&Ev]| -> (u64, Vec<u64>) {
        let total = evs
            .iter()
            .map(|e| accelerator_ms(e.gpus as f64, e.interval_s as f64))
            .sum();
        let windows = specs
            .iter()
            .map(|w| {
                let end = w.end_after(latest);
                evs.iter()
                    .filter(|e| e.ts >= end - w.width_ms() && e.ts < end)
                    .map(|e| accelerator_ms(e.gpus as f64, e.interval_s as f64))
                    .sum()
            })
            .collect();
        (total, windows)
    };
    let ms = |s: f64| (s * 1000.0).round() as u64;

    // Tenants are never forgotten.
    let got_tenants = engine.tenant_reports();
    prop_assert_eq!(got_tenants.len(), tenants.len());
    for t in &got_tenants {
        let (total, windows) = expect(&tenants[&t.tenant]);
        prop_assert_eq!(
            ms(t.accelerator_seconds),
            total,
            "tenant {} lifetime",
            t.tenant
        );
        for (i, (name, v)) in t.windows.0.iter().enumerate() {
            prop_assert_eq!(ms(*v), windows[i], "tenant {} window {}", t.tenant, name);
        }
    }
    let got_jobs = engine.job_reports();
    for key in jobs.keys() {
        if !got_jobs
            .iter()
            .any(|j| (&j.tenant, &j.job) == (&key.0, &key.1))
        {
            prop_assert!(
                forgettable.contains(key),
                "job {:?} missing but never idle long enough",
                key
            );
        }
    }
    for j in got_jobs
        .iter()
        .filter(|j| !forgettable.contains(&(j.tenant.clone(), j.job.clone())))
    {
        let (total, windows) = expect(&jobs[&(j.tenant.clone(), j.job.clone())]);
        prop_assert_eq!(
            ms(j.accelerator_seconds),
            total,
            "job {}/{} lifetime",
            j.tenant,
            j.job
        );
        for (i, (name, v)) in j.windows.0.iter().enumerate() {
            prop_assert_eq!(
                ms(*v),
                windows[i],
                "job {}/{} window {}",
                j.tenant,
                j.job,
                name
            );
        }
    }
    let s = engine.stats();
    prop_assert_eq!(s.accepted as usize, unique.len());
    prop_assert_eq!(s.duplicate as usize, events.len() - unique.len());
    prop_assert_eq!(s.unverified as usize, unverified);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Small windows over a few hours: many window boundaries, evictions and late events.
    #[test]
    fn small_windows_equal_naive_recomputation(events in stream(6 * 3_600_000)) {
        let cfg = config(
            "[[windows.sliding]]\nname = \"a\"\nwidth = \"10m\"\nslide = \"1m\"\n\
             [[windows.sliding]]\nname = \"b\"\nwidth = \"1h\"\nslide = \"15m\"\n\
             [[windows.sliding]]\nname = \"c\"\nwidth = \"3h\"\nslide = \"3h\"\n",
        );
        check(&cfg, &events)?;
    }

    /// The default windows (1h/1m, 24h/5m, 7d/1h, 30d/1d) over 40 days: jobs idle for more than
    /// 30 days may be evicted; tenants keep their lifetime and windows stay exact.
    #[test]
    fn default_windows_equal_naive_recomputation(events in stream(40 * 86_400_000)) {
        let cfg = Config::from_toml("[windows]\ndedup_horizon = \"30d\"\n").unwrap();
        check(&cfg, &events)?;
    }
}
