//! trainspotter: windowed accelerator accounting and large-training detection from Kafka telemetry.
//!
//! # Layout
//! Data flows one way: ingest -> decode -> engine (windows, detection, alerts) -> sinks.
//!
//! - [`decode`]: payload bytes to validated [`decode::UsageSample`]s or bounded rejection reasons;
//!   every input format is a [`decode::Decoder`].
//! - [`flatjson`]: the one-pass reader of flat JSON objects behind the native decoder.
//! - [`catalog`]: accelerator model names to peak dense FLOP/s.
//! - [`estimate`]: accelerator time and FLOP estimates (low / central / high).
//! - [`window`]: event-time sliding windows by pane aggregation (exact integer sums).
//! - [`pane_archive`]: the older panes of a usage window, encoded compactly and exactly.
//! - [`detect`]: per-job features and the training-likeness score.
//! - [`alert`]: alert identity, lifecycle and the CloudEvents rendering.
//! - [`evidence`]: what an alert condition rests on, rendered to JSON when a record is made.
//! - [`engine`]: the one owner of all state; applies samples, evaluates at event-time ticks.
//! - [`stamps`]: exact timestamp sets for de-duplication, as arithmetic runs.
//! - [`series`]: a job's device series, stored densely in arrival order.
//! - [`name`]: tenant and job names held inline in their keys (long ones shared).
//! - [`footprint`]: heap bytes of the engine state by owner.
//! - [`prefetch`]: software prefetch hints, so that the cache misses of a batch's events overlap.
//! - [`checkpoint`]: a partition's engine state and offset, written atomically and verified.
//! - [`pipeline`]: a batch of payloads through decode and engine, with metrics; shared by `run`,
//!   `replay` and `demo`.
//! - [`config`]: typed, layered, validated configuration.
//! - [`registry`]: tenant KYC context (organisation, jurisdiction, verification) and the policy it implies;
//!   [`registry_topic`] follows its compacted topic of per-tenant updates.
//! - [`metrics`]: every Prometheus metric, in one registry per pipeline.
//! - [`pipeline::Report`]: the replay report and API shapes.
//! - [`replay`]: the pipeline over an NDJSON file.
//! - [`partitions`]: per-partition engines with the offsets they cover; checkpoint and restore.
//! - [`kafka`]: the consumer loop, rebalances, dead-letter and alert producers (`run`).
//! - [`http`]: /metrics, /livez, /readyz and the JSON API.
//! - [`sim`]: a fleet simulator producing realistic telemetry.
//! - [`demo`]: the zero-setup demonstration (embedded broker + simulator + daemon).
//! - [`scenario`]: labelled workloads (training and hard negatives) with ground-truth FLOP,
//!   calibrated to real traces; produced through [`sim`].
//! - [`simulate`]: `simulate --scenario`, a scenario's events to a file or a Kafka topic.
//! - [`eval`]: scenario mixes through [`pipeline`], scored against their labels; the report.
//! - [`traces`]: readers of the real traces (Helios, openb) used by the report and tests.
//! - [`svg`]: the report's charts.
//! - [`bench`](mod@bench): the throughput and memory harness (`trainspotter bench`).
//! - [`cpu`]: the processor features a build assumes, checked at start.

pub mod alert;
pub mod alertmanager;
pub mod bench;
pub mod catalog;
pub mod changelog;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod decode;
pub mod demo;
pub mod detect;
pub mod engine;
pub mod estimate;
pub mod eval;
pub mod evidence;
pub mod flatjson;
pub mod footprint;
pub mod health;
pub mod http;
pub mod join;
pub mod kafka;
pub mod labels;
pub mod line_table;
pub mod metrics;
pub mod name;
pub mod otlp;
pub mod pane_archive;
pub mod partitions;
pub mod persist;
pub mod pipeline;
pub mod prefetch;
pub mod prom_adapter;
pub mod registry;
pub mod registry_topic;
pub mod replay;
pub mod scenario;
pub mod series;
pub mod sim;
pub mod simulate;
pub mod slide_archive;
pub mod stamps;
pub mod svg;
pub mod topics;
pub mod traces;
pub mod vector;
pub mod window;
