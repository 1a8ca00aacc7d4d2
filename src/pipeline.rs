//! The pipeline: a batch of message payloads through decode and the engine, with metrics.
//!
//! `run`, `replay` and `demo` all drive this one type, so they cannot disagree about what an event
//! means. A batch is decoded first, then applied in order; rejections come back by position so the
//! caller can send each one to its dead-letter path before moving the offset on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::alert::AlertRecord;
use crate::config::{Config, ConfigError};
use crate::decode::{
    format_rfc3339_ms, DecodeLimits, Decoder, NativeJson, RejectReason, Rejection, UsageSample,
};
use crate::engine::{Engine, EngineStats, JobReport, TenantReport};
use crate::metrics::{Metrics, StateGauges};

/// How often per-tenant gauges (which walk every tenant) are refreshed at most.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// A message of a batch that the decoder rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Position in the batch.
    pub index: usize,
    pub rejection: Rejection,
}

/// Input counts of the replay report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EventCounts {
    pub accepted: u64,
    pub rejected: u64,
    pub late: u64,
    pub duplicate: u64,
    /// Accepted but too old to be checked for duplicates.
    pub unverified: u64,
}

/// The replay report (`replay --report FILE`), a contract tests and analysts rely on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub events: EventCounts,
    pub max_event_time: Option<String>,
    pub watermark: Option<String>,
    pub tenants: Vec<TenantReport>,
    pub jobs: Vec<JobReport>,
}

pub struct Pipeline {
    engine: Engine,
    decoder: Box<dyn Decoder>,
    metrics: Arc<Metrics>,
    top_tenants: usize,
    stats: EngineStats,
    rejected: u64,
    samples: Vec<(usize, UsageSample)>,
    scratch: Vec<UsageSample>,
    last_refresh: Option<Instant>,
}

impl Pipeline {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Pipeline, ConfigError> {
        Ok(Pipeline {
            engine: Engine::new(cfg)?,
            decoder: Box::new(NativeJson),
            metrics,
            top_tenants: cfg.metrics.top_tenants,
            stats: EngineStats::default(),
            rejected: 0,
            samples: Vec::new(),
            scratch: Vec::new(),
            last_refresh: None,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Decodes and applies one batch. `None` payloads (tombstones) are rejected as malformed.
    pub fn process<'a, I>(&mut self, payloads: I, limits: DecodeLimits) -> Vec<Rejected>
    where
        I: IntoIterator<Item = Option<&'a [u8]>>,
    {
        let started = Instant::now();
        let mut rejected = Vec::new();
        let mut consumed = 0u64;
        self.samples.clear();
        for (index, payload) in payloads.into_iter().enumerate() {
            consumed += 1;
            let result = match payload {
                Some(p) => self.decoder.decode(p, limits, &mut self.scratch),
                None => Err(Rejection {
                    reason: RejectReason::MalformedJson,
                    detail: "message has no payload".into(),
                }),
            };
            match result {
                Ok(()) => self
                    .samples
                    .extend(self.scratch.drain(..).map(|s| (index, s))),
                Err(rejection) => {
                    self.scratch.clear();
                    self.metrics.event_rejected(rejection.reason);
                    rejected.push(Rejected { index, rejection });
                }
            }
        }
        for (_, s) in &self.samples {
            self.engine.apply(s);
        }
        self.metrics.events_consumed(consumed);
        self.rejected += rejected.len() as u64;
        let now = self.engine.stats();
        self.metrics.engine_progress(&self.stats, &now);
        self.stats = now;
        self.metrics
            .batch_processed(started.elapsed().as_secs_f64());
        self.refresh_gauges(false);
        rejected
    }

    /// Alert records since the last call (counted in metrics).
    pub fn drain_alerts(&mut self) -> Vec<AlertRecord> {
        let alerts = self.engine.drain_alerts();
        for a in &alerts {
            self.metrics.alert_emitted(a);
        }
        alerts
    }

    /// End of a finite input: the watermark moves to the latest event time and detection runs there.
    pub fn finish(&mut self) {
        self.engine.finish();
        self.refresh_gauges(true);
    }

    /// Updates state and per-tenant gauges (at most once a second unless `force`).
    pub fn refresh_gauges(&mut self, force: bool) {
        if !force
            && self
                .last_refresh
                .is_some_and(|t| t.elapsed() < GAUGE_REFRESH)
        {
            return;
        }
        self.last_refresh = Some(Instant::now());
        let e = &self.engine;
        self.metrics.state(&StateGauges {
            tenants: e.tenant_count(),
            jobs: e.job_count(),
            series: e.series_count(),
            suspected: e.suspected_jobs(),
            watermark_ms: e.watermark_ms(),
            max_event_ms: e.max_event_ms(),
            now_ms: chrono::Utc::now().timestamp_millis(),
            active_alerts: e.active_alerts(),
        });
        self.metrics.tenants(&e.tenant_totals(), self.top_tenants);
    }

    pub fn report(&self) -> Report {
        let s = self.engine.stats();
        Report {
            events: EventCounts {
                accepted: s.accepted,
                rejected: self.rejected,
                late: s.late,
                duplicate: s.duplicate,
                unverified: s.unverified,
            },
            max_event_time: self.engine.max_event_ms().map(format_rfc3339_ms),
            watermark: self.engine.watermark_ms().map(format_rfc3339_ms),
            tenants: self.engine.tenant_reports(),
            jobs: self.engine.job_reports(),
        }
    }
}
