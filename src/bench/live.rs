//! The live measurement of `trainspotter bench --brokers ... --live DURATION`: the daemon
//! (`kafka::start`, as `run` starts it) consumes a topic that a producer fills at the fleet's
//! live rate (every device once per `interval`, events stamped with the wall clock), while a
//! consumer of the alert topic timestamps every alert record it receives. Jobs churn: each job
//! is renamed every `job_lifetime` (staggered per job), so jobs keep starting, being suspected,
//! ending and resolving, and ended jobs' state keeps piling up unless it is let go.
//!
//! Measured:
//! - **alert latency**, end to end: from the moment the condition of a record became decidable
//!   (the producer started the first round whose events move the watermark past the record's
//!   evaluation tick: event time `tick + allowed_lateness`) to the harness receiving the record
//!   from the broker. It includes the broker both ways, the consumer's fetch wait, batching,
//!   evaluation and the producer's acknowledgement, so it bounds the daemon's own part from above;
//!   also without the first evaluation tick that raised records, where every training job the
//!   run started with fires at once;
//! - the daemon's own part, `trainspotter_alerts_delivery_seconds`: from receiving the batch that
//!   raised a record to the broker's acknowledgement of it (its mean, and the bucket holding its
//!   p99); the rest of the end-to-end time lies before the daemon receives the batch (the
//!   producer, the broker, the consumer's lag) or after the acknowledgement (the reader's fetch);
//! - what the consumer's thread stops for: the evaluations at detection boundaries
//!   (`trainspotter_detect_evaluation_duration_seconds`) and the checkpoint encodings
//!   (`trainspotter_checkpoint_encode_seconds`), how many, their mean and the bucket holding
//!   their p99;
//! - **memory over time**: the process's RSS (daemon and harness share it; the harness's part,
//!   the rendered round and the producer's bounded queue, does not grow) and the state gauges,
//!   sampled every 10 s; growth is the least-squares slope after the warm-up, per hour, as a share
//!   of the mean.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, TopicPartitionList};
use serde::Serialize;

use super::Shape;
use crate::config::Config;
use crate::decode::{now_ms, parse_rfc3339_ms};
use crate::kafka::client_config;

#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// How long the producer runs.
    pub duration: Duration,
    /// Memory samples before this are left out of the growth figure.
    pub warmup: Duration,
    /// Each job is renamed this often (event time); zero for no churn.
    pub job_lifetime: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemorySample {
    pub at_s: f64,
    pub rss_bytes: u64,
    pub jobs: i64,
    pub series: i64,
    pub consumed: u64,
    pub produced: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveOutcome {
    pub topic: String,
    pub duration_s: f64,
    pub target_events_per_s: f64,
    pub produced: u64,
    pub produced_events_per_s: f64,
    /// Rounds the producer started more than one interval behind schedule.
    pub rounds_behind: u64,
    pub consumed: u64,
    /// Largest produced-minus-consumed count seen at a sample.
    pub max_lag_events: u64,
    pub alerts_firing: usize,
    pub alerts_resolved: usize,
    /// End to end, milliseconds: median, 99th percentile, largest.
    pub e2e_ms: Option<(f64, f64, f64)>,
    /// The same without the records of the first evaluation tick that raised any: the jobs of the
    /// generated fleet all start with the run, so that tick fires every training job at once.
    pub e2e_after_first_tick_ms: Option<(f64, f64, f64)>,
    /// The end-to-end latency of the slowest record of each evaluation tick that raised records,
    /// in tick order, milliseconds: a tick is as late as its slowest record.
    pub slowest_per_tick_ms: Vec<i64>,
    /// The daemon's part (`trainspotter_alerts_delivery_seconds`): records observed, their mean,
    /// and the upper bound of the bucket holding the 99th percentile, seconds.
    pub delivery_count: u64,
    pub delivery_mean_s: f64,
    pub delivery_p99_bound_s: Option<f64>,
    /// Of the daemon's part, the mean wait for the broker's acknowledgement
    /// (`trainspotter_alerts_acknowledgement_seconds`), seconds.
    pub acknowledgement_mean_s: f64,
    /// The daemon's evaluations at detection boundaries
    /// (`trainspotter_detect_evaluation_duration_seconds`): how many, their mean, and the upper
    /// bound of the bucket holding the 99th percentile, seconds.
    pub evaluations: u64,
    pub evaluation_mean_s: f64,
    pub evaluation_p99_bound_s: Option<f64>,
    /// The daemon's checkpoint encodings, on its consumer's thread
    /// (`trainspotter_checkpoint_encode_seconds`), as the evaluations.
    pub checkpoint_encodings: u64,
    pub checkpoint_encode_mean_s: f64,
    pub checkpoint_encode_p99_bound_s: Option<f64>,
    pub samples: Vec<MemorySample>,
    /// Every record received: evaluation tick (epoch ms), firing, end-to-end latency (ms).
    pub records: Vec<(i64, bool, Option<i64>)>,
    /// RSS growth after the warm-up, percent per hour of the mean RSS.
    pub rss_growth_pct_per_h: Option<f64>,
}

/// The largest latency of each tick's records, in tick order (records of unknown latency left out).
fn slowest_per_tick(records: &[(i64, bool, Option<i64>)]) -> Vec<i64> {
    let mut by_tick: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
    for &(tick, _, latency) in records {
        if let Some(ms) = latency {
            let slowest = by_tick.entry(tick).or_insert(ms);
            *slowest = (*slowest).max(ms);
        }
    }
    by_tick.into_values().collect()
}

/// Median, 99th percentile and largest of `ms`; `None` when empty.
fn spread(ms: impl Iterator<Item = i64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = ms.map(|ms| ms as f64).collect();
    v.sort_by(f64::total_cmp);
    let max = *v.last()?;
    Some((quantile(&v, 0.5), quantile(&v, 0.99), max))
}

/// A received alert record: its evaluation tick, status and when it arrived (epoch ms).
struct Received {
    tick_ms: i64,
    firing: bool,
    at_ms: i64,
}

/// Reads the alert topic from its end at start until `stop`.
fn alert_reader(
    cfg: &Config,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<Vec<Received>>> {
    let topic = cfg.kafka.alert_topic.clone();
    let mut c = client_config(cfg);
    c.set("group.id", format!("{}-alerts", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer = c.create()?;
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32);
    anyhow::ensure!(n > 0, "alert topic {topic} does not exist");
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(5))?;
        tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    Ok(std::thread::spawn(move || {
        let mut out = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let at_ms = now_ms();
            let Some(doc) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            else {
                continue;
            };
            let tick = doc["time"].as_str().and_then(parse_rfc3339_ms);
            if let Some(tick_ms) = tick {
                out.push(Received {
                    tick_ms,
                    firing: doc["data"]["status"] == "firing",
                    at_ms,
                });
            }
        }
        out
    }))
}

/// Shared between the producer thread and the sampler.
#[derive(Default)]
struct Progress {
    produced: AtomicU64,
    rounds_behind: AtomicU64,
    /// Event time of each round and the wall clock (epoch ms) when its first event was sent.
    rounds: Mutex<Vec<(i64, i64)>>,
}

/// Produces the fleet's rounds at their live pace until `duration` has passed, each round's events
/// spread evenly over its interval.
fn producer(
    cfg: &Config,
    topic: &str,
    shape: &Shape,
    opts: &LiveOptions,
    progress: Arc<Progress>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(cfg)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut round = shape.round();
    let topic = topic.to_string();
    let interval_ms = shape.interval_ms;
    let lifetime_ms = opts.job_lifetime.as_millis() as i64;
    let duration = opts.duration;
    let offsets = stagger(round.jobs(), lifetime_ms);
    Ok(std::thread::spawn(move || {
        const SLICES: usize = 100;
        let started = Instant::now();
        let t0_ms = now_ms();
        let n = round.len();
        let mut r = 0i64;
        while started.elapsed() < duration {
            let due = started + Duration::from_millis((r * interval_ms) as u64);
            let now = Instant::now();
            if now < due {
                std::thread::sleep(due - now);
            } else if now - due > Duration::from_millis(interval_ms as u64) {
                progress.rounds_behind.fetch_add(1, Ordering::Relaxed);
            }
            let ts = t0_ms + r * interval_ms;
            round.set_ts(ts);
            if lifetime_ms > 0 {
                round.set_generations(|j| (ts + offsets[j]).div_euclid(lifetime_ms) as u64);
            }
            progress
                .rounds
                .lock()
                .expect("not poisoned")
                .push((ts, now_ms()));
            let payloads: Vec<(&[u8], &[u8])> = round.payloads().zip(round.keys()).collect();
            for (k, chunk) in payloads.chunks(n.div_ceil(SLICES)).enumerate() {
                let slice_due =
                    due + Duration::from_millis((k as i64 * interval_ms / SLICES as i64) as u64);
                let now = Instant::now();
                if now < slice_due {
                    std::thread::sleep(slice_due - now);
                }
                for (payload, key) in chunk {
                    super::kafka::send(&producer, &topic, payload, key)?;
                }
                progress
                    .produced
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            r += 1;
        }
        producer.flush(Duration::from_secs(60))?;
        Ok(())
    }))
}

/// Each job's offset within the lifetime, so that the jobs' generations start at spread times.
pub(super) fn stagger(jobs: usize, lifetime_ms: i64) -> Vec<i64> {
    (0..jobs)
        .map(|j| match lifetime_ms {
            0 => 0,
            l => ((j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) as i64 % l,
        })
        .collect()
}

/// Linear least-squares slope of `y` over `x`.
pub(super) fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The `q` quantile of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The upper bound of the histogram bucket holding the `q` quantile (`None` past the last bound).
fn bucket_quantile(buckets: &[(f64, u64)], count: u64, q: f64) -> Option<f64> {
    let rank = (q * count as f64).ceil() as u64;
    buckets.iter().find(|(_, c)| *c >= rank).map(|(b, _)| *b)
}

async fn drive(
    cfg: &Config,
    shape: &Shape,
    topic: &str,
    opts: &LiveOptions,
    state_dir: &std::path::Path,
) -> anyhow::Result<LiveOutcome> {
    let mut cfg = cfg.clone();
    cfg.kafka.topics = vec![topic.to_string()];
    cfg.kafka.group_id = format!("{}-live", cfg.kafka.group_id);
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.state.dir = state_dir.display().to_string();
    let lateness_ms = cfg.windows.allowed_lateness.ms();

    let stop_reader = Arc::new(AtomicBool::new(false));
    let reader = alert_reader(&cfg, stop_reader.clone())?;
    let running = crate::kafka::start(cfg.clone()).await?;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let producing = producer(&cfg, topic, shape, opts, progress.clone())?;

    let mut samples = Vec::new();
    let mut max_lag = 0u64;
    let sample = |samples: &mut Vec<MemorySample>, max_lag: &mut u64| {
        let produced = progress.produced.load(Ordering::Relaxed);
        let consumed = running.metrics.events_consumed_total();
        *max_lag = (*max_lag).max(produced.saturating_sub(consumed));
        let (jobs, series) = running.metrics.state_sizes();
        samples.push(MemorySample {
            at_s: started.elapsed().as_secs_f64(),
            rss_bytes: super::rss().0.unwrap_or(0),
            jobs,
            series,
            consumed,
            produced,
        });
    };
    while !producing.is_finished() {
        tokio::time::sleep(Duration::from_secs(10)).await;
        sample(&mut samples, &mut max_lag);
    }
    producing
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let duration_s = started.elapsed().as_secs_f64();
    let produced = progress.produced.load(Ordering::Relaxed);
    // Let the daemon catch up and its last alerts arrive.
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.metrics.events_consumed_total() < produced && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    sample(&mut samples, &mut max_lag);
    let consumed = running.metrics.events_consumed_total();
    let (buckets, delivery_count) = running.metrics.alert_delivery_buckets();
    let (_, delivery_s) = running.metrics.alert_delivery_totals();
    let (_, acknowledgement_s) = running.metrics.alert_acknowledgement_totals();
    let (evaluation_buckets, evaluations) = running.metrics.evaluation_buckets();
    let (_, evaluation_s) = running.metrics.evaluation_totals();
    let (encode_buckets, encodings) = running.metrics.checkpoint_encode_buckets();
    let (_, encode_s) = running.metrics.checkpoint_encode_totals();
    running.stop().await?;
    stop_reader.store(true, Ordering::SeqCst);
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the alert reader thread panicked"))?;

    // A record of tick T became decidable when the first round stamped T + lateness or later
    // started going out.
    let rounds = progress.rounds.lock().expect("not poisoned").clone();
    let records: Vec<(i64, bool, Option<i64>)> = received
        .iter()
        .map(|a| {
            let i = rounds.partition_point(|&(ts, _)| ts < a.tick_ms + lateness_ms);
            let latency = rounds.get(i).map(|&(_, sent)| a.at_ms - sent);
            (a.tick_ms, a.firing, latency)
        })
        .collect();
    let first_tick = records.iter().map(|r| r.0).min();
    let e2e_ms = spread(records.iter().filter_map(|r| r.2));
    let e2e_after_first_tick_ms = spread(
        records
            .iter()
            .filter(|r| Some(r.0) != first_tick)
            .filter_map(|r| r.2),
    );
    let warm: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.at_s >= opts.warmup.as_secs_f64() && s.at_s <= duration_s)
        .map(|s| (s.at_s / 3600.0, s.rss_bytes as f64))
        .collect();
    let mean = warm.iter().map(|p| p.1).sum::<f64>() / warm.len().max(1) as f64;
    let rss_growth = slope(&warm).map(|per_h| 100.0 * per_h / mean);
    Ok(LiveOutcome {
        topic: topic.to_string(),
        duration_s,
        target_events_per_s: shape.gpus as f64 * 1000.0 / shape.interval_ms as f64,
        produced,
        produced_events_per_s: produced as f64 / duration_s,
        rounds_behind: progress.rounds_behind.load(Ordering::Relaxed),
        consumed,
        max_lag_events: max_lag,
        alerts_firing: received.iter().filter(|a| a.firing).count(),
        alerts_resolved: received.iter().filter(|a| !a.firing).count(),
        e2e_ms,
        e2e_after_first_tick_ms,
        slowest_per_tick_ms: slowest_per_tick(&records),
        delivery_count,
        delivery_mean_s: delivery_s / delivery_count.max(1) as f64,
        acknowledgement_mean_s: acknowledgement_s / delivery_count.max(1) as f64,
        delivery_p99_bound_s: bucket_quantile(&buckets, delivery_count, 0.99),
        evaluations,
        evaluation_mean_s: evaluation_s / evaluations.max(1) as f64,
        evaluation_p99_bound_s: bucket_quantile(&evaluation_buckets, evaluations, 0.99),
        checkpoint_encodings: encodings,
        checkpoint_encode_mean_s: encode_s / encodings.max(1) as f64,
        checkpoint_encode_p99_bound_s: bucket_quantile(&encode_buckets, encodings, 0.99),
        samples,
        records,
        rss_growth_pct_per_h: rss_growth,
    })
}

/// Runs the live measurement on `topic` (which must exist; it need not be empty).
pub fn run(
    cfg: &Config,
    shape: &Shape,
    topic: &str,
    opts: &LiveOptions,
    state_dir: &std::path::Path,
) -> anyhow::Result<LiveOutcome> {
    anyhow::ensure!(shape.interval_ms > 0, "the interval must be positive");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(drive(cfg, shape, topic, opts, state_dir))
}

/// How many of a timed step, their mean, and the bucket holding their p99.
fn timed(count: u64, mean_s: f64, p99_bound_s: Option<f64>) -> String {
    match p99_bound_s {
        _ if count == 0 => "none".into(),
        Some(b) => format!("{count}, mean {:.0} ms, p99 <= {b} s", mean_s * 1e3),
        None => format!(
            "{count}, mean {:.0} ms, p99 above the last bucket",
            mean_s * 1e3
        ),
    }
}

/// A latency spread as a table cell.
fn latencies(spread: Option<(f64, f64, f64)>) -> String {
    spread.map_or("no records".into(), |(p50, p99, max)| {
        format!("p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms")
    })
}

/// The outcome as a markdown table.
pub fn table(o: &LiveOutcome) -> String {
    let first = o.samples.first();
    let last = o.samples.last();
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64);
    let rows = [
        (
            "live load".to_string(),
            format!(
                "{:.0} s at {:.0} events/s target: {} events produced ({:.0}/s), {} rounds started late",
                o.duration_s, o.target_events_per_s, o.produced, o.produced_events_per_s, o.rounds_behind
            ),
        ),
        (
            "daemon".into(),
            format!(
                "{} events consumed; largest lag at a sample {} events",
                o.consumed, o.max_lag_events
            ),
        ),
        (
            "alert records received".into(),
            format!("{} firing, {} resolved", o.alerts_firing, o.alerts_resolved),
        ),
        (
            "alert latency, end to end (decidable to received)".into(),
            latencies(o.e2e_ms),
        ),
        (
            "the same after the first tick (which fires every job started with the run)".into(),
            latencies(o.e2e_after_first_tick_ms),
        ),
        (
            "slowest record of each tick, in order".into(),
            match o.slowest_per_tick_ms.split_first() {
                None => "no records".into(),
                Some((_, rest)) => format!(
                    "{} ms; after the first tick, {} of {} ticks slower than 1 s",
                    o.slowest_per_tick_ms
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    rest.iter().filter(|&&ms| ms > 1000).count(),
                    rest.len()
                ),
            },
        ),
        (
            "alert latency, daemon (batch received to acknowledged)".into(),
            match o.delivery_p99_bound_s {
                _ if o.delivery_count == 0 => "no records".into(),
                p99 => format!(
                    "mean {:.0} ms (of it {:.0} ms waiting for the acknowledgement), p99 {} ({} records)",
                    o.delivery_mean_s * 1e3,
                    o.acknowledgement_mean_s * 1e3,
                    p99.map_or("above the last bucket".into(), |b| format!("<= {b} s")),
                    o.delivery_count
                ),
            },
        ),
        (
            "evaluations at detection boundaries (the batch waits)".into(),
            timed(
                o.evaluations,
                o.evaluation_mean_s,
                o.evaluation_p99_bound_s,
            ),
        ),
        (
            "checkpoint encodings (the consumer waits)".into(),
            timed(
                o.checkpoint_encodings,
                o.checkpoint_encode_mean_s,
                o.checkpoint_encode_p99_bound_s,
            ),
        ),
        (
            "RSS first / last sample".into(),
            format!(
                "{} / {}",
                first.map_or("n/a".into(), |s| mib(s.rss_bytes)),
                last.map_or("n/a".into(), |s| mib(s.rss_bytes))
            ),
        ),
        (
            "state at the end".into(),
            last.map_or("n/a".into(), |s| {
                format!("{} jobs, {} series", s.jobs, s.series)
            }),
        ),
        (
            "RSS growth after the warm-up (job churn included: the state grows while ended jobs are retained; `--soak` measures steady memory)".into(),
            o.rss_growth_pct_per_h
                .map_or("too few samples".into(), |g| format!("{g:+.2}% per hour")),
        ),
    ];
    super::markdown_table(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_quantiles_by_nearest_rank_and_latency_spreads_and_each_ticks_slowest() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 + 2.0 * i as f64)).collect();
        assert!((slope(&line).unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(slope(&line[..2]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v[..1], 0.99), 1.0);
        assert_eq!(spread([30, 10, 20].into_iter()), Some((20.0, 30.0, 30.0)));
        assert_eq!(spread(std::iter::empty()), None);
        let records = [
            (20, true, Some(900)),
            (10, true, Some(2500)),
            (20, false, Some(1300)),
            (10, true, Some(800)),
            (30, true, None),
        ];
        assert_eq!(slowest_per_tick(&records), [2500, 1300]);
        let buckets = [(0.01, 90), (0.1, 99), (1.0, 100)];
        assert_eq!(bucket_quantile(&buckets, 100, 0.99), Some(0.1));
        assert_eq!(bucket_quantile(&buckets, 100, 1.0), Some(1.0));
        assert_eq!(bucket_quantile(&[(0.01, 5)], 10, 0.99), None);
    }
}
