//! `trainspotter simulate --scenario`: a scenario's telemetry as native events, to a file or a
//! Kafka topic, with the runs' labels and ground truth on the side.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::Serialize;

use crate::decode::UsageSample;
use crate::scenario::{Class, Horizon, Run, Scenario};
use crate::sim::{Fleet, SplitMix64};

const HOUR_MS: i64 = 3_600_000;
const STEP_MS: i64 = 30_000;

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct ScenarioSpec {
    pub scenario: Scenario,
    /// Instances of the scenario.
    pub count: usize,
    pub hours: u32,
    pub seed: u64,
    /// Telemetry ends here (epoch ms, rounded down to the minute).
    pub end_ms: i64,
}

impl ScenarioSpec {
    /// The runs, placed so that their telemetry ends at `end_ms`.
    pub fn runs(&self) -> Vec<Run> {
        let end = self.end_ms.div_euclid(60_000) * 60_000;
        let span = self.hours as i64 * HOUR_MS;
        let h = Horizon {
            t0_ms: end - span,
            positive_ms: span,
            negative_ms: span,
            fleet_pods: 300,
        };
        let mut runs = Vec::new();
        for i in 0..self.count {
            let mut rng =
                SplitMix64::new(self.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for mut r in self.scenario.build(i, &mut rng, &h) {
                r.sim_end_ms = r.sim_end_ms.min(end);
                for w in &mut r.workloads {
                    w.end_ms = w.end_ms.min(end);
                }
                runs.push(r);
            }
        }
        runs
    }
}

/// Feeds every sample of `runs`, in time order, to `emit`; returns how many.
pub fn stream<E>(
    runs: &[Run],
    seed: u64,
    mut emit: impl FnMut(&UsageSample) -> Result<(), E>,
) -> Result<u64, E> {
    let from = runs
        .iter()
        .map(|r| r.start_ms)
        .min()
        .unwrap_or(0)
        .div_euclid(STEP_MS)
        * STEP_MS;
    let to = runs.iter().map(|r| r.sim_end_ms).max().unwrap_or(0);
    let mut fleet = Fleet::new(
        runs.iter()
            .flat_map(|r| r.workloads.iter().cloned())
            .collect(),
        seed,
    );
    let mut samples = Vec::new();
    let mut n = 0;
    let mut t = from;
    while t <= to {
        samples.clear();
        fleet.samples_at(t, &mut samples);
        for s in &samples {
            emit(s)?;
        }
        n += samples.len() as u64;
        t += STEP_MS;
    }
    Ok(n)
}

/// A run's label and ground truth, one JSON line per run in `--labels`.
#[derive(Debug, Serialize)]
pub struct Label<'a> {
    pub run: &'a str,
    pub scenario: &'static str,
    pub class: Class,
    pub org: Option<&'a str>,
    pub members: &'a [(String, String)],
    pub accelerators: f64,
    pub accelerator: &'a str,
    pub telemetry: &'static str,
    pub start_ms: i64,
    pub planned_end_ms: i64,
    pub end_ms: i64,
    /// Ground-truth FLOP performed by `end_ms`.
    pub true_flop: f64,
}

pub fn label(r: &Run) -> Label<'_> {
    Label {
        run: &r.name,
        scenario: r.scenario.name(),
        class: r.class,
        org: r.org.as_deref(),
        members: &r.members,
        accelerators: r.accelerators,
        accelerator: &r.accelerator,
        telemetry: r.telemetry.name(),
        start_ms: r.start_ms,
        planned_end_ms: r.planned_end_ms,
        end_ms: r.sim_end_ms,
        true_flop: r.true_flop_until(r.sim_end_ms),
    }
}

/// Produces every sample `feed` emits to `topic`, keyed by tenant (the daemon's partitioning
/// rule), and waits for the broker to acknowledge them all; returns how many.
pub fn produce<F>(brokers: &str, topic: &str, feed: F) -> Result<u64, KafkaError>
where
    F: FnOnce(&mut dyn FnMut(&UsageSample) -> Result<(), KafkaError>) -> Result<u64, KafkaError>,
{
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "200000")
        .create()?;
    let mut send = |s: &UsageSample| {
        let payload = s.to_json();
        loop {
            match producer.send(BaseRecord::to(topic).key(&s.tenant).payload(&payload)) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    };
    let n = feed(&mut send)?;
    producer.flush(rdkafka::util::Timeout::After(Duration::from_secs(60)))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;

    #[test]
    fn scenario_events_reach_the_topic_keyed_by_tenant() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("usage", 2, 1).unwrap();
        let spec = ScenarioSpec {
            scenario: Scenario::SplitTenants,
            count: 1,
            hours: 1,
            seed: 5,
            end_ms: 1_736_121_600_000,
        };
        let runs = spec.runs();
        let n = produce(&cluster.bootstrap_servers(), "usage", |send| {
            stream(&runs, 5, send)
        })
        .unwrap();
        assert!(n > 0);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "count")
            .create()
            .unwrap();
        let timeout = Duration::from_secs(10);
        let total: i64 = (0..2)
            .map(|p| consumer.fetch_watermarks("usage", p, timeout).unwrap())
            .map(|(lo, hi)| hi - lo)
            .sum();
        assert_eq!(total as u64, n);
    }
}
