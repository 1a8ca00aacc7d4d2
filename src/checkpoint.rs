//! Checkpoint files: the state of one partition's engine together with the offset it covers.
//!
//! One file per partition, `<dir>/<topic>-<partition>.ckpt`, replaced atomically: the new content is
//! written to a temporary file and fsynced, the current file becomes `.prev`, the temporary file is
//! renamed into place and the directory is fsynced. A crash at any point leaves a complete current
//! file, or a complete `.prev` file, or both.
//!
//! Layout: magic `TSCKPT\0\0` (8 bytes), format version (u32 LE), payload length (u64 LE), CRC-32 of
//! the payload (u32 LE), payload (bincode of [`Header`] fields followed by the engine [`State`]).
//! Reading checks all four and never panics on any input.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::State;

const MAGIC: &[u8; 8] = b"TSCKPT\0\0";
/// Format version written by this build; versions before [`OLDEST_READ`] and after this one are
/// refused. Version 2 added
/// the join buffer of metric-per-message formats to the engine state; version 3 the per-device
/// activity moments of gang synchrony; version 4 pane rings sized to the span written, timestamp
/// sets as runs, and lists of keys touched since the last evaluation; version 5 each job's
/// arrival clock (the event time its latest sample arrived at), which decides when it leaves state,
/// and the newest pane of each ring held inline; version 6 a training verdict's evidence in active
/// alerts as its values instead of JSON text; version 7 the sum of each key's newest span held
/// apart from its window rings; version 8 tenants and organisations credited by their jobs a span
/// at a time, so that their accounts lack what the jobs with samples since the last evaluation
/// still owe them; version 9 a ring holding a single pane without a pane array (a version-8 state is
/// a valid version-9 state, and is read as one); version 10 a usage window ring's older panes in
/// their encoded form (`pane_archive`) instead of every pane in its array (versions 8 and 9 are
/// read with the rings in that array form, as they were written).
pub const VERSION: u32 = 10;
/// The first format version holding a usage window ring's older panes encoded.
pub(crate) const ENCODED_RINGS: u32 = 10;
/// Oldest format version this build reads: each later version's state reads the same as it did.
pub const OLDEST_READ: u32 = 8;
const PREFIX_LEN: usize = 8 + 4 + 8 + 4;
/// Refuse payloads larger than this rather than allocate on a corrupt length field.
const MAX_PAYLOAD: u64 = 64 << 30;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: truncated ({len} bytes, expected {expected})")]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: u64,
    },
    #[error("{path}: not a trainspotter checkpoint (bad magic)")]
    BadMagic { path: PathBuf },
    #[error(
        "{path}: checkpoint format version {found}, this build reads versions {OLDEST_READ} to {VERSION}"
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("{path}: checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("{path}: cannot decode state: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("cannot encode state: {0}")]
    Encode(String),
}

/// What a checkpoint covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub topic: String,
    pub partition: i32,
    /// The next offset to consume: every message before it is in the state, none after.
    pub next_offset: i64,
    /// [`crate::engine::Engine::shape`] of the engine the state came from.
    pub shape: String,
    /// Wall clock when written, epoch ms.
    pub written_at_ms: i64,
}

#[derive(Serialize)]
struct Borrowed<'a> {
    header: &'a Header,
    state: &'a State,
}

/// A checkpoint read back.
#[derive(Debug, Deserialize)]
pub struct Checkpoint {
    pub header: Header,
    pub state: State,
}

/// The outcome of looking for a partition's checkpoint.
#[derive(Debug)]
pub enum Loaded {
    /// The current file was good.
    Current(Checkpoint),
    /// The current file was missing or bad (the error says how); the previous one was good.
    Previous(Checkpoint, Option<CheckpointError>),
    /// No checkpoint exists for the partition.
    None,
}

pub fn path(dir: &Path, topic: &str, partition: i32) -> PathBuf {
    // Kafka topic names are limited to [a-zA-Z0-9._-], so they are safe file names.
    dir.join(format!("{topic}-{partition}.ckpt"))
}

fn prev_path(p: &Path) -> PathBuf {
    p.with_extension("ckpt.prev")
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes a checkpoint into its file bytes. The state is serialised once, straight after room
/// left for the prefix (bincode's `serialize` would walk it twice, sizing first, and the payload
/// would then be copied behind the prefix).
pub fn encode(header: &Header, state: &State) -> Result<Vec<u8>, CheckpointError> {
    let mut out = Vec::new();
    encode_into(header, state, &mut out)?;
    Ok(out)
}

/// [`encode`] into `out`, replacing what it held. Encoding into a buffer kept from the previous
/// checkpoint writes to memory the process already has: a new buffer of a few hundred MiB is
/// paged in on first write, each page zeroed by the kernel (and, on a virtual machine that gives
/// freed memory back to its host, fetched from the host first), which can take longer than the
/// encoding itself.
pub fn encode_into(
    header: &Header,
    state: &State,
    out: &mut Vec<u8>,
) -> Result<(), CheckpointError> {
    out.clear();
    out.resize(PREFIX_LEN, 0);
    opts()
        .serialize_into(&mut *out, &Borrowed { header, state })
        .map_err(|e| CheckpointError::Encode(e.to_string()))?;
    let prefix = prefix(&out[PREFIX_LEN..]);
    out[..PREFIX_LEN].copy_from_slice(&prefix);
    Ok(())
}

/// The prefix of an encoded payload's file: magic, version, payload length, CRC-32.
fn prefix(payload: &[u8]) -> [u8; PREFIX_LEN] {
    let mut p = [0; PREFIX_LEN];
    p[..8].copy_from_slice(MAGIC);
    p[8..12].copy_from_slice(&VERSION.to_le_bytes());
    p[12..20].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    p[20..24].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    p
}

/// Decodes file bytes; `path` only labels errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let p = || path.to_path_buf();
    if bytes.len() < PREFIX_LEN {
        return Err(CheckpointError::Truncated {
            path: p(),
            len: bytes.len() as u64,
            expected: PREFIX_LEN as u64,
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(CheckpointError::BadMagic { path: p() });
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let version = u32_at(8);
    if !(OLDEST_READ..=VERSION).contains(&version) {
        return Err(CheckpointError::UnsupportedVersion {
            path: p(),
            found: version,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(len);
    let stored = u32_at(20);
    let expected = (PREFIX_LEN as u64).saturating_add(len.min(MAX_PAYLOAD));
    if len > MAX_PAYLOAD || bytes.len() as u64 != expected {
        return Err(CheckpointError::Truncated {
            path: p(),
            len: bytes.len() as u64,
            expected,
        });
    }
    let payload = &bytes[PREFIX_LEN..];
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(CheckpointError::Checksum {
            path: p(),
            stored,
            computed,
        });
    }
    let _reading = Reading::version(version);
    crate::engine::decoding(
        || opts().with_limit(len).deserialize::<Checkpoint>(payload),
        |cp| &mut cp.state,
    )
    .map_err(|e| CheckpointError::Decode {
        path: p(),
        message: e.to_string(),
    })
}

thread_local! {
    /// The format version of the checkpoint this thread is decoding ([`VERSION`] when none is).
    static READING: std::cell::Cell<u32> = const { std::cell::Cell::new(VERSION) };
}

/// The format version of the checkpoint being decoded on this thread, [`VERSION`] outside
/// [`decode`]: the types whose form changed between the versions this build reads ask it, since
/// bincode passes a deserializer nothing else.
pub(crate) fn format_read() -> u32 {
    READING.with(std::cell::Cell::get)
}

/// Sets the version [`format_read`] gives for as long as it lives.
pub(crate) struct Reading(u32);

impl Reading {
    pub(crate) fn version(version: u32) -> Reading {
        Reading(READING.with(|r| r.replace(version)))
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        READING.with(|r| r.set(self.0));
    }
}

/// The one bincode configuration used for writing and reading (little endian, fixed-width ints).
pub(crate) fn opts() -> impl bincode::Options {
    bincode::options()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

use bincode::Options as _;

/// Reads and verifies one checkpoint file.
pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    decode(path, &bytes)
}

/// Writes the checkpoint of `header.topic`/`header.partition` atomically; returns its size.
pub fn write(dir: &Path, header: &Header, state: &State) -> Result<u64, CheckpointError> {
    let bytes = encode(header, state)?;
    write_bytes(dir, &header.topic, header.partition, &bytes)?;
    Ok(bytes.len() as u64)
}

/// Writes encoded checkpoint bytes (see [`encode`]) of a partition atomically.
pub fn write_bytes(
    dir: &Path,
    topic: &str,
    partition: i32,
    bytes: &[u8],
) -> Result<(), CheckpointError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let target = path(dir, topic, partition);
    let tmp = target.with_extension("ckpt.tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    if target.exists() {
        let prev = prev_path(&target);
        fs::rename(&target, &prev).map_err(io_err(&prev))?;
    }
    fs::rename(&tmp, &target).map_err(io_err(&target))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Finds the newest good checkpoint of a partition: the current file, else the previous one.
/// `Err` when a checkpoint exists but neither file can be read: the caller must not silently start
/// empty.
pub fn load(dir: &Path, topic: &str, partition: i32) -> Result<Loaded, CheckpointError> {
    let current = path(dir, topic, partition);
    let prev = prev_path(&current);
    let current_result = if current.exists() {
        Some(read(&current))
    } else {
        None
    };
    match current_result {
        Some(Ok(cp)) => Ok(Loaded::Current(cp)),
        other => {
            let current_error = other.and_then(Result::err);
            if prev.exists() {
                match read(&prev) {
                    Ok(cp) => Ok(Loaded::Previous(cp, current_error)),
                    Err(prev_error) => Err(current_error.unwrap_or(prev_error)),
                }
            } else {
                match current_error {
                    Some(e) => Err(e),
                    None => Ok(Loaded::None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::decode::UsageSample;
    use crate::engine::Engine;

    const T0: i64 = 1_714_521_600_000;

    fn engine_with_data() -> Engine {
        let mut e = Engine::new(&Config::default()).unwrap();
        for m in 0..90 {
            for gpu in 0..80 {
                let s = UsageSample::new(T0 + m * 60_000, "acme", 1.0, 60.0)
                    .job("pretrain")
                    .device(format!("n{}", gpu / 8), (gpu % 8).to_string())
                    .accelerator("NVIDIA H100 80GB HBM3")
                    .tensor_active(0.45);
                e.apply(&s);
            }
        }
        e.drain_alerts();
        e
    }

    fn header(e: &Engine, next_offset: i64) -> Header {
        Header {
            topic: "gpu-usage".into(),
            partition: 3,
            next_offset,
            shape: e.shape(),
            written_at_ms: 0,
        }
    }

    #[test]
    fn round_trip_restores_an_engine_that_continues_identically() {
        let dir = tempfile::tempdir().unwrap();
        let mut original = engine_with_data();
        write(dir.path(), &header(&original, 7200), original.state()).unwrap();
        let Loaded::Current(cp) = load(dir.path(), "gpu-usage", 3).unwrap() else {
            panic!("no checkpoint")
        };
        assert_eq!(cp.header.next_offset, 7200);
        let mut restored = Engine::with_state(&Config::default(), cp.state).unwrap();
        assert_eq!(restored.tenant_reports(), original.tenant_reports());
        assert_eq!(restored.job_reports(), original.job_reports());
        assert_eq!(restored.active_alerts(), original.active_alerts());
        // Both continue the same way, alerts included.
        for m in 90..150 {
            let s = UsageSample::new(T0 + m * 60_000, "acme", 8.0, 60.0).job("pretrain");
            original.apply(&s);
            restored.apply(&s);
        }
        original.finish();
        restored.finish();
        assert_eq!(restored.job_reports(), original.job_reports());
        assert_eq!(restored.drain_alerts(), original.drain_alerts());
    }

    /// Checkpoints of format versions 8 and 9, each written by the last build of its format (the
    /// fuzz corpus's seed of that time), restore to the state this build makes of the same
    /// samples: the same reports and alerts, and both continue the same way.
    #[test]
    fn version_8_and_9_checkpoints_restore_the_state_this_build_makes_of_the_same_samples() {
        let fixtures: [(u32, &[u8]); 2] = [
            (8, include_bytes!("../tests/golden/checkpoint-v8.ckpt")),
            (9, include_bytes!("../tests/golden/checkpoint-v9.ckpt")),
        ];
        for (version, bytes) in fixtures {
            assert_eq!(bytes[8..12], version.to_le_bytes(), "the fixture's version");
            restores_as_the_same_samples(bytes);
        }
    }

    fn restores_as_the_same_samples(bytes: &[u8]) {
        let cp = decode(Path::new("old.ckpt"), bytes).unwrap();
        assert_eq!(cp.header.next_offset, 2600);
        let mut restored = Engine::with_state(&Config::default(), cp.state).unwrap();
        // A sample of the fixture's job: minute `m`, device `gpu`.
        let h100 = |m: i64, gpu: i64| {
            UsageSample::new(T0 + m * 60_000, "acme", 1.0, 60.0)
                .job("pretrain-7b")
                .device(format!("n{}", gpu / 8), (gpu % 8).to_string())
                .accelerator("NVIDIA H100 80GB HBM3")
        };
        // The samples the fixture was made of (`fuzz/examples/gen_seeds.rs`).
        let mut fresh = Engine::new(&Config::default()).unwrap();
        for m in 0..40 {
            for gpu in 0..64 {
                fresh.apply(&h100(m, gpu).tensor_active(0.45).gpu_util(0.97));
            }
            fresh.apply(&UsageSample::new(T0 + m * 60_000, "globex", 0.5, 60.0));
        }
        assert!(!fresh.drain_alerts().is_empty(), "the job is suspected");
        let device = crate::join::Device {
            tenant: "acme".into(),
            job: Some("pretrain-7b".into()),
            node: Some("n8".into()),
            gpu: Some("0".into()),
        };
        let reading = |field, value| crate::join::Reading {
            device: device.clone(),
            accelerator: Some("NVIDIA H100 80GB HBM3".into()),
            ts_ms: T0 + 40 * 60_000,
            field,
            value,
        };
        fresh.apply_readings([
            reading(crate::join::Field::TensorActive, 0.41),
            reading(crate::join::Field::PowerW, 612.5),
        ]);
        assert_eq!(restored.tenant_reports(), fresh.tenant_reports());
        assert_eq!(restored.job_reports(), fresh.job_reports());
        assert_eq!(restored.active_alerts(), fresh.active_alerts());
        assert_eq!(restored.join_pending(), fresh.join_pending());
        // Every ring moves on (past a day, so the day's and week's rings hold a second pane), and
        // both engines give the same reports and alerts throughout.
        for m in 40..1600 {
            for gpu in 0..64 {
                let s = h100(m, gpu).tensor_active(if m < 1000 { 0.45 } else { 0.0 });
                fresh.apply(&s);
                restored.apply(&s);
            }
            if m % 97 == 0 {
                assert_eq!(
                    restored.tenant_reports(),
                    fresh.tenant_reports(),
                    "minute {m}"
                );
                assert_eq!(restored.drain_alerts(), fresh.drain_alerts(), "minute {m}");
            }
        }
        fresh.finish();
        restored.finish();
        assert_eq!(restored.tenant_reports(), fresh.tenant_reports());
        assert_eq!(restored.job_reports(), fresh.job_reports());
        assert_eq!(restored.drain_alerts(), fresh.drain_alerts());
    }

    #[test]
    fn encoding_into_a_used_buffer_gives_the_bytes_of_a_fresh_encoding() {
        let big = engine_with_data();
        let small = Engine::new(&Config::default()).unwrap();
        let mut buf = Vec::new();
        encode_into(&header(&big, 7200), big.state(), &mut buf).unwrap();
        let big_len = buf.len();
        // A smaller checkpoint after a larger one: nothing of the larger is left behind.
        encode_into(&header(&small, 1), small.state(), &mut buf).unwrap();
        assert!(buf.len() < big_len);
        assert_eq!(buf, encode(&header(&small, 1), small.state()).unwrap());
        assert!(decode(Path::new("buf"), &buf).is_ok());
        encode_into(&header(&big, 7200), big.state(), &mut buf).unwrap();
        assert_eq!(buf, encode(&header(&big, 7200), big.state()).unwrap());
    }

    #[test]
    fn corrupt_files_are_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine_with_data();
        let good = encode(&header(&e, 1), e.state()).unwrap();
        let p = Path::new("x.ckpt");
        let truncated = &good[..good.len() - 10];
        assert!(matches!(
            decode(p, truncated),
            Err(CheckpointError::Truncated { .. })
        ));
        assert!(matches!(
            decode(p, &good[..5]),
            Err(CheckpointError::Truncated { .. })
        ));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            decode(p, &flipped),
            Err(CheckpointError::Checksum { .. })
        ));
        let mut old = good.clone();
        old[8..12].copy_from_slice(&0u32.to_le_bytes());
        let err = decode(p, &old).unwrap_err();
        assert!(err.to_string().contains("version 0"), "{err}");
        let mut newer = good.clone();
        newer[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert!(matches!(
            decode(p, &newer),
            Err(CheckpointError::UnsupportedVersion { found, .. }) if found == VERSION + 1
        ));
        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(p, &huge),
            Err(CheckpointError::Truncated { .. })
        ));
        assert!(matches!(
            decode(p, b"PK\x03\x04 not a checkpoint at all...."),
            Err(CheckpointError::BadMagic { .. })
        ));
        drop(dir);
    }

    #[test]
    fn a_checkpoint_stating_more_series_than_it_holds_is_a_decode_error() {
        // The fuzzer's seed checkpoint with one job's count of device series set to 2^61 (the
        // prefix is rebuilt here so that the checksum matches the changed payload). Reserving
        // that many entries used to abort the process.
        let file = include_bytes!("../fuzz/regressions/checkpoint_read/series-count-2e61.ckpt");
        let payload = &file[PREFIX_LEN..];
        let framed = [prefix(payload).as_slice(), payload].concat();
        let err = decode(Path::new("x.ckpt"), &framed).unwrap_err();
        assert!(matches!(err, CheckpointError::Decode { .. }), "{err}");
    }

    #[test]
    fn a_corrupt_current_file_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine_with_data();
        write(dir.path(), &header(&e, 100), e.state()).unwrap();
        write(dir.path(), &header(&e, 200), e.state()).unwrap();
        let current = path(dir.path(), "gpu-usage", 3);
        let bytes = fs::read(&current).unwrap();
        fs::write(&current, &bytes[..bytes.len() / 2]).unwrap();
        match load(dir.path(), "gpu-usage", 3).unwrap() {
            Loaded::Previous(cp, Some(CheckpointError::Truncated { .. })) => {
                assert_eq!(cp.header.next_offset, 100)
            }
            other => panic!("expected the previous checkpoint, got {other:?}"),
        }
        // Both bad: an error, never an empty start.
        let prev = prev_path(&current);
        fs::write(&prev, b"garbage").unwrap();
        assert!(load(dir.path(), "gpu-usage", 3).is_err());
        // Nothing at all: no checkpoint.
        assert!(matches!(
            load(dir.path(), "gpu-usage", 4).unwrap(),
            Loaded::None
        ));
    }
}
