//! Replay: the pipeline over a file of native events (NDJSON, optionally gzip), no Kafka needed.
//!
//! Alerts go to `alerts` as one CloudEvent JSON per line; rejected lines go to the optional
//! dead-letter writer with their line number and reason; progress goes to stderr every few seconds.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::decode::{format_rfc3339_ms, DecodeLimits};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Report, Shard};

const BATCH: usize = 4096;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Input { path: String, source: io::Error },
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Opens `path` (`-` for stdin), transparently decompressing gzip (detected by its magic bytes).
pub fn open_input(path: &str) -> Result<Box<dyn BufRead>, ReplayError> {
    let err = |source| ReplayError::Input {
        path: path.to_string(),
        source,
    };
    let raw: Box<dyn Read> = if path == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(Path::new(path)).map_err(err)?)
    };
    let mut r = BufReader::with_capacity(1 << 20, raw);
    let gz = r.fill_buf().map_err(err)?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(r),
        ))
    } else {
        Box::new(r)
    })
}

/// Runs the whole input through a fresh pipeline and returns the final report.
pub fn replay(
    cfg: &Config,
    input: &mut dyn BufRead,
    alerts: &mut dyn Write,
    dead_letter: Option<&mut dyn Write>,
    progress: bool,
) -> Result<Report, ReplayError> {
    Ok(replay_into_pipeline(cfg, input, alerts, dead_letter, progress)?.report())
}

/// Runs the whole input through a fresh pipeline and returns the pipeline at the end of input,
/// for questions the report does not answer (`explain`).
pub fn replay_into_pipeline(
    cfg: &Config,
    input: &mut dyn BufRead,
    alerts: &mut dyn Write,
    mut dead_letter: Option<&mut dyn Write>,
    progress: bool,
) -> Result<Pipeline, ReplayError> {
    let mut pipeline = Pipeline::new(cfg, Arc::new(Metrics::new()))?;
    let shard = Shard::local();
    let source = cfg.alerts.source.clone();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut line_no: u64 = 0;
    let mut lines: Vec<(u64, Vec<u8>)> = Vec::with_capacity(BATCH);
    let mut done = false;
    while !done {
        lines.clear();
        while lines.len() < BATCH {
            let mut buf = Vec::new();
            let n = input
                .read_until(b'\n', &mut buf)
                .map_err(|source| ReplayError::Input {
                    path: "input".into(),
                    source,
                })?;
            if n == 0 {
                done = true;
                break;
            }
            line_no += 1;
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines separate nothing and are not events
            }
            lines.push((line_no, buf));
        }
        let rejected = pipeline.process(
            &shard,
            lines.iter().map(|(_, l)| Some(l.as_slice())),
            DecodeLimits::OPEN,
        );
        if let Some(dl) = dead_letter.as_deref_mut() {
            for r in &rejected {
                let (line, payload) = &lines[r.index];
                let rec = serde_json::json!({
                    "line": line,
                    "reason": r.rejection.reason.code(),
                    "detail": r.rejection.detail,
                    "payload": String::from_utf8_lossy(payload),
                });
                writeln!(dl, "{rec}")?;
            }
        }
        if done {
            pipeline.finish();
        }
        for a in pipeline.drain_alerts() {
            writeln!(alerts, "{}", a.to_cloudevent(&source))?;
        }
        if progress && last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let rate = line_no as f64 / started.elapsed().as_secs_f64();
            let at = pipeline
                .max_event_ms()
                .map(format_rfc3339_ms)
                .unwrap_or_default();
            eprintln!("replay: {line_no} lines ({rate:.0}/s), event time {at}");
        }
    }
    alerts.flush()?;
    Ok(pipeline)
}
