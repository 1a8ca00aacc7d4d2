//! The soak of `trainspotter bench --soak DURATION`: the pipeline on one thread, in process, for
//! DURATION of wall time, with job churn, as fast as it goes (event time runs ahead of the wall
//! clock, so one wall hour covers many hours of event time: sweeps, ended-job retention and the
//! 1-hour and 24-hour windows all reach their steady state within the run). Every
//! `sample_every` of wall time it records the state's heap bytes by owner
//! ([`crate::footprint`]) and the process's RSS. Growth is the least-squares slope after the
//! warm-up, per wall hour and per event hour, as a share of the mean.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Shape, T0_MS};
use crate::config::Config;
use crate::decode::DecodeLimits;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Shard};

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    pub warmup: Duration,
    /// Each job is renamed this often in event time, staggered per job; zero for no churn.
    pub job_lifetime: Duration,
    pub sample_every: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    pub wall_s: f64,
    pub event_h: f64,
    pub events: u64,
    pub jobs: usize,
    pub series: usize,
    pub tenant_bytes: usize,
    pub job_bytes: usize,
    pub series_bytes: usize,
    pub other_bytes: usize,
    pub state_bytes: usize,
    pub rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakOutcome {
    pub shape: Shape,
    pub job_lifetime_s: f64,
    pub samples: Vec<SoakSample>,
    pub events_per_s: f64,
    /// After the warm-up: (percent per wall hour, percent per event hour) of the mean state (of
    /// the mean RSS for `rss_growth`); the parts add up to `state_growth`.
    pub state_growth: Option<(f64, f64)>,
    pub rss_growth: Option<(f64, f64)>,
    pub tenant_growth: Option<(f64, f64)>,
    pub job_and_series_growth: Option<(f64, f64)>,
}

/// Growth of `value` after the warm-up, as (percent per wall hour, percent per event hour) of the
/// mean of `base`.
fn growth(
    samples: &[&SoakSample],
    value: impl Fn(&SoakSample) -> f64,
    base: impl Fn(&SoakSample) -> f64,
) -> Option<(f64, f64)> {
    let mean = samples.iter().map(|s| base(s)).sum::<f64>() / samples.len().max(1) as f64;
    let wall: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.wall_s / 3600.0, value(s)))
        .collect();
    let event: Vec<(f64, f64)> = samples.iter().map(|s| (s.event_h, value(s))).collect();
    Some((
        100.0 * super::live::slope(&wall)? / mean,
        100.0 * super::live::slope(&event)? / mean,
    ))
}

pub fn run(shape: &Shape, cfg: &Config, opts: &SoakOptions) -> anyhow::Result<SoakOutcome> {
    anyhow::ensure!(
        shape.jobs > 0 && shape.jobs <= shape.gpus,
        "jobs must be 1..=gpus"
    );
    let mut round = shape.round();
    let lifetime_ms = opts.job_lifetime.as_millis() as i64;
    let offsets = super::live::stagger(round.jobs(), lifetime_ms);
    let mut pipeline = Pipeline::new(cfg, Arc::new(Metrics::new()))?;
    let shard = Shard::local();
    let limits = DecodeLimits::OPEN;
    let started = Instant::now();
    let mut next_sample = Duration::ZERO;
    let mut samples = Vec::new();
    let mut events = 0u64;
    let mut r = 0i64;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= next_sample {
            let engine = pipeline.shard(&shard);
            let f = engine.map(|e| e.footprint()).unwrap_or_default();
            samples.push(SoakSample {
                wall_s: elapsed.as_secs_f64(),
                event_h: (r * shape.interval_ms) as f64 / 3.6e6,
                events,
                jobs: f.jobs,
                series: f.series,
                tenant_bytes: f.tenant_bytes + f.organisation_bytes,
                job_bytes: f.job_bytes,
                series_bytes: f.series_bytes,
                other_bytes: f.other_bytes,
                state_bytes: f.total(),
                rss_bytes: super::rss().0.unwrap_or(0),
            });
            next_sample += opts.sample_every;
        }
        if elapsed >= opts.duration {
            break;
        }
        let ts = T0_MS + r * shape.interval_ms;
        round.set_ts(ts);
        if lifetime_ms > 0 {
            round.set_generations(|j| (ts + offsets[j]).div_euclid(lifetime_ms) as u64);
        }
        let payloads: Vec<&[u8]> = round.payloads().collect();
        for batch in payloads.chunks(shape.batch) {
            let rejected = pipeline
                .process(&shard, batch.iter().map(|p| Some(*p)), limits)
                .len();
            anyhow::ensure!(rejected == 0, "{rejected} generated events were rejected");
            pipeline.drain_alerts();
        }
        events += round.len() as u64;
        r += 1;
    }
    let wall_s = started.elapsed().as_secs_f64();
    let state = |s: &SoakSample| s.state_bytes as f64;
    let warm: Vec<&SoakSample> = samples
        .iter()
        .filter(|s| s.wall_s >= opts.warmup.as_secs_f64())
        .collect();
    Ok(SoakOutcome {
        shape: shape.clone(),
        job_lifetime_s: opts.job_lifetime.as_secs_f64(),
        events_per_s: events as f64 / wall_s,
        state_growth: growth(&warm, state, state),
        rss_growth: growth(&warm, |s| s.rss_bytes as f64, |s| s.rss_bytes as f64),
        tenant_growth: growth(&warm, |s| s.tenant_bytes as f64, state),
        job_and_series_growth: growth(&warm, |s| (s.job_bytes + s.series_bytes) as f64, state),
        samples,
    })
}

/// The outcome as a markdown table.
pub fn table(o: &SoakOutcome) -> String {
    let mib = |b: f64| format!("{:.1} MiB", b / (1u64 << 20) as f64);
    let pct = |g: Option<(f64, f64)>| {
        g.map_or("too few samples".into(), |(w, e)| {
            format!("{w:+.2}% per wall hour ({e:+.3}% per event hour)")
        })
    };
    let first = o.samples.first();
    let last = o.samples.last();
    let s = &o.shape;
    let mut rows = vec![
        (
            "workload".to_string(),
            format!(
                "{} devices, {} jobs (renamed every {:.0} s of event time, staggered), {} tenants, one event per device every {} ms; {:.2}M events/s",
                s.gpus, s.jobs, o.job_lifetime_s, s.tenants, s.interval_ms, o.events_per_s / 1e6
            ),
        ),
        (
            "covered".into(),
            last.map_or("n/a".into(), |l| {
                format!("{:.0} s of wall time, {:.1} h of event time, {} events", l.wall_s, l.event_h, l.events)
            }),
        ),
    ];
    if let (Some(f), Some(l)) = (first, last) {
        rows.push((
            "state, first / last sample".into(),
            format!(
                "{} / {} ({} / {} jobs held)",
                mib(f.state_bytes as f64),
                mib(l.state_bytes as f64),
                f.jobs,
                l.jobs
            ),
        ));
        rows.push((
            "RSS, first / last sample".into(),
            format!("{} / {}", mib(f.rss_bytes as f64), mib(l.rss_bytes as f64)),
        ));
    }
    rows.push(("state growth after the warm-up".into(), pct(o.state_growth)));
    rows.push((
        "  of it, jobs and series".into(),
        pct(o.job_and_series_growth),
    ));
    rows.push((
        "  of it, tenants and organisations".into(),
        pct(o.tenant_growth),
    ));
    rows.push(("RSS growth after the warm-up".into(), pct(o.rss_growth)));
    super::markdown_table(rows)
}
