//! Readers of the real cluster traces in the shared data folder (`../shared/data`, see its
//! README): SenseTime Helios per-minute virtual-cluster usage and Alibaba openb pods. Used by the
//! evaluation's real-trace section and the accounting tests.

use std::io::{BufRead, BufReader};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Format {
        path: String,
        line: usize,
        message: String,
    },
}

/// One minute of one Helios virtual cluster: `gpus` GPUs held by running jobs in the minute of
/// the row's `time` (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeliosRow {
    pub ts_ms: i64,
    pub gpus: u64,
}

fn lines(path: &Path) -> Result<Vec<String>, TraceError> {
    let io = |source| TraceError::Io {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    let r: Box<dyn BufRead> = if gz {
        Box::new(BufReader::new(flate2::read::GzDecoder::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    r.lines().collect::<Result<_, _>>().map_err(io)
}

fn column(path: &Path, header: &[&str], name: &str) -> Result<usize, TraceError> {
    header
        .iter()
        .position(|h| *h == name)
        .ok_or_else(|| TraceError::Format {
            path: path.display().to_string(),
            line: 1,
            message: format!("no column {name}"),
        })
}

/// One virtual cluster's `cluster_sequence_vc.csv` (optionally gzip): `time` and
/// `running_gpu_num` of every row.
pub fn read_helios_vc(path: &Path) -> Result<Vec<HeliosRow>, TraceError> {
    let all = lines(path)?;
    let header: Vec<&str> = all
        .first()
        .map(|h| h.split(',').collect())
        .unwrap_or_default();
    let time_col = column(path, &header, "time")?;
    let gpu_col = column(path, &header, "running_gpu_num")?;
    all.iter()
        .enumerate()
        .skip(1)
        .map(|(i, l)| {
            let cols: Vec<&str> = l.split(',').collect();
            let bad = |message: String| TraceError::Format {
                path: path.display().to_string(),
                line: i + 1,
                message,
            };
            let t = cols
                .get(time_col)
                .and_then(|c| chrono::NaiveDateTime::parse_from_str(c, "%Y-%m-%d %H:%M:%S").ok())
                .ok_or_else(|| bad("bad time".into()))?;
            let gpus = cols
                .get(gpu_col)
                .and_then(|c| c.parse::<f64>().ok())
                .ok_or_else(|| bad("bad running_gpu_num".into()))?;
            Ok(HeliosRow {
                ts_ms: t.and_utc().timestamp_millis(),
                gpus: gpus as u64,
            })
        })
        .collect()
}

/// The minutes of [`read_helios`]'s clusters that had GPUs running, as `(ts_ms, cluster index,
/// gpus)` in time order (the cluster's index into `vcs`): the samples a collector would send.
pub fn helios_samples(vcs: &[(String, Vec<HeliosRow>)]) -> Vec<(i64, usize, u64)> {
    let mut events: Vec<(i64, usize, u64)> = Vec::new();
    for (i, (_, rows)) in vcs.iter().enumerate() {
        events.extend(
            rows.iter()
                .filter(|r| r.gpus > 0)
                .map(|r| (r.ts_ms, i, r.gpus)),
        );
    }
    events.sort_unstable();
    events
}

/// Every virtual cluster of a `helios-earth-vcs` folder, by name (file name without `.csv.gz`).
pub fn read_helios(dir: &Path) -> Result<Vec<(String, Vec<HeliosRow>)>, TraceError> {
    let io = |source| TraceError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    names.sort();
    names
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".csv.gz"))
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".csv.gz").to_string())
                .unwrap_or_default();
            Ok((name, read_helios_vc(&p)?))
        })
        .collect()
}

/// One pod of Alibaba's openb trace that held GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenbPod {
    pub name: String,
    pub num_gpu: u32,
    pub gpu_milli: u32,
    pub qos: String,
    /// Seconds from the trace start.
    pub scheduled_s: i64,
    pub deletion_s: i64,
}

impl OpenbPod {
    /// GPUs held: `num_gpu` x `gpu_milli` / 1000 (a 1-GPU pod may hold a share of one GPU).
    pub fn gpus(&self) -> f64 {
        self.num_gpu as f64 * self.gpu_milli as f64 / 1000.0
    }
}

/// Pods of `openb_pod_list_default.csv` with GPUs, a schedule and a later deletion time.
pub fn read_openb_pods(path: &Path) -> Result<Vec<OpenbPod>, TraceError> {
    let all = lines(path)?;
    let header: Vec<&str> = all
        .first()
        .map(|h| h.split(',').collect())
        .unwrap_or_default();
    let col = |n| column(path, &header, n);
    let (name, num, milli, qos, sched, del) = (
        col("name")?,
        col("num_gpu")?,
        col("gpu_milli")?,
        col("qos")?,
        col("scheduled_time")?,
        col("deletion_time")?,
    );
    let mut pods = Vec::new();
    for l in all.iter().skip(1) {
        let c: Vec<&str> = l.split(',').collect();
        let int = |i: usize| c.get(i).and_then(|v| v.parse::<f64>().ok());
        let (Some(n), Some(m), Some(s), Some(d)) = (int(num), int(milli), int(sched), int(del))
        else {
            continue; // pods never scheduled or not deleted within the trace hold no known time
        };
        if n <= 0.0 || d <= s {
            continue;
        }
        pods.push(OpenbPod {
            name: c[name].to_string(),
            num_gpu: n as u32,
            gpu_milli: m as u32,
            qos: c.get(qos).copied().unwrap_or("").to_string(),
            scheduled_s: s as i64,
            deletion_s: d as i64,
        });
    }
    Ok(pods)
}
