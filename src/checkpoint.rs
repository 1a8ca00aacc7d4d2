//! Checkpoint files: the state of one partition's engine together with the offset it covers.
//!
//! One file per partition, `<dir>/<topic>-<partition>.ckpt`, replaced atomically: the new content is
//! written to a temporary file and fsynced, the current file becomes `.prev`, the temporary file is
//! renamed into place and the directory is fsynced. A crash at any point leaves a complete current
//! file, or a complete `.prev` file, or both. The temporary file is the `.prev` file written over
//! when there is a current one (its pages are then most likely in the page cache already), so
//! while a checkpoint is staged the current file is the only complete one.
//!
//! Writing goes in two steps: [`stage`] encodes the state into the temporary file through a few
//! spools of [`SPOOL_BYTES`], so that however large the state the encoding holds no more memory
//! than those (the daemon stages on its consumer thread, which owns the state), and
//! [`Staged::commit`] makes it durable and puts it in place (the daemon's checkpoint writer
//! thread). Reading decodes the file as it reads it, a buffer at a time, and checks the checksum
//! at its end: no copy of the file is held beside the state it becomes.
//!
//! Layout: magic `TSCKPT\0\0` (8 bytes), format version (u32 LE), payload length (u64 LE), CRC-32 of
//! the payload (u32 LE), payload (bincode of [`Header`] fields followed by the engine [`State`]).
//! Reading checks all four and never panics on any input.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

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
/// read with the rings in that array form, as they were written); version 11 a detection pane's
/// moments of its best signal only, and which signals it received (versions before are read with
/// the moments of all three, as they were written, and keep those of the best); version 12 a
/// detection ring's older slides in their encoded form (`slide_archive`) instead of every slide
/// in its array (versions before are read with the rings in that array form).
pub const VERSION: u32 = 12;
/// The first format version holding a usage window ring's older panes encoded.
pub(crate) const ENCODED_RINGS: u32 = 10;
/// The first format version holding a detection pane's best signal only.
pub(crate) const BEST_SIGNAL_PANES: u32 = 11;
/// The first format version holding a detection ring's older slides encoded.
pub(crate) const ENCODED_SLIDES: u32 = 12;
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

/// The previous checkpoint file of the one at `p`.
pub fn prev_path(p: &Path) -> PathBuf {
    p.with_extension("ckpt.prev")
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes a checkpoint into its file bytes, in memory (tests, tools, the fuzz targets; the daemon
/// writes its checkpoints with [`stage`]).
pub fn encode(header: &Header, state: &State) -> Result<Vec<u8>, CheckpointError> {
    let mut out = vec![0; PREFIX_LEN];
    opts()
        .serialize_into(&mut out, &Borrowed { header, state })
        .map_err(encode_err(Path::new("(memory)")))?;
    let payload = &out[PREFIX_LEN..];
    let prefix = prefix(payload.len() as u64, crc32fast::hash(payload));
    out[..PREFIX_LEN].copy_from_slice(&prefix);
    Ok(out)
}

/// Bytes of an encoding gathered in memory before they go to the file ([`stage`]).
pub const SPOOL_BYTES: usize = 1 << 20;
/// Spools of an encoding: one being filled, the others written or waiting to be.
const SPOOLS: usize = 4;

/// A checkpoint encoded into its partition's temporary file, not yet in place; [`Staged::commit`]
/// makes it the current file. Dropped uncommitted, the temporary file is removed.
///
/// A partition has one temporary file, so one checkpoint of it is staged at a time: the caller
/// commits or drops a staged checkpoint before it stages the next.
#[derive(Debug)]
pub struct Staged {
    file: File,
    dir: PathBuf,
    tmp: PathBuf,
    target: PathBuf,
    len: u64,
    committed: bool,
}

/// Encodes the checkpoint of `header.topic`/`header.partition` into its temporary file in `dir`.
/// The calling thread serialises the state into spools of [`SPOOL_BYTES`]; a thread of the call's
/// own takes each full spool, adds it to the checksum and writes it to the file, while the caller
/// fills the next. However large the state, the encoding holds four spools of memory. The
/// bytes go to the kernel's page cache; [`Staged::commit`] waits for the disk.
pub fn stage(dir: &Path, header: &Header, state: &State) -> Result<Staged, CheckpointError> {
    stage_in(dir, header, state, SPOOL_BYTES)
}

fn stage_in(
    dir: &Path,
    header: &Header,
    state: &State,
    limit: usize,
) -> Result<Staged, CheckpointError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let target = path(dir, &header.topic, header.partition);
    let tmp = target.with_extension("ckpt.tmp");
    // With a current file, the previous one becomes the temporary one and is written over: its
    // pages are most likely still in the page cache, and writing over them is a copy, where new
    // pages cost the kernel an allocation each (on a virtual machine, often a fetch from the
    // host). The current file stays whole meanwhile.
    let over_previous = target.exists() && fs::rename(prev_path(&target), &tmp).is_ok();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(!over_previous)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    // From here on, an error drops `staged`, which removes the temporary file.
    let mut staged = Staged {
        file,
        dir: dir.to_path_buf(),
        tmp,
        target,
        len: 0,
        committed: false,
    };
    // The prefix's place, filled in once the payload's length and checksum are known.
    staged
        .file
        .write_all(&[0; PREFIX_LEN])
        .map_err(io_err(&staged.tmp))?;
    let (full, to_write) = mpsc::sync_channel::<Vec<u8>>(SPOOLS);
    let (written, free) = mpsc::channel::<Vec<u8>>();
    for _ in 1..SPOOLS {
        let _ = written.send(Vec::with_capacity(limit));
    }
    let file = &mut staged.file;
    let (serialised, wrote) = std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("checkpoint-spool".into())
            .spawn_scoped(scope, move || {
                let (mut crc, mut len) = (crc32fast::Hasher::new(), 0u64);
                for mut spool in to_write {
                    crc.update(&spool);
                    file.write_all(&spool)?;
                    len += spool.len() as u64;
                    spool.clear();
                    // The serialiser may have finished and gone.
                    let _ = written.send(spool);
                }
                Ok::<_, io::Error>((len, crc.finalize()))
            });
        let writer = match writer {
            Ok(w) => w,
            Err(e) => return (Ok(()), Err(e)),
        };
        let mut out = Spool {
            spool: Vec::with_capacity(limit),
            limit,
            full,
            free,
        };
        // Whether or not it serialises, `out` is consumed here, and with it the sender whose
        // dropping ends the writer's loop.
        let serialised = match opts().serialize_into(&mut out, &Borrowed { header, state }) {
            Ok(()) => out.finish().map_err(Into::into),
            Err(e) => Err(e),
        };
        let wrote = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the checkpoint's writing thread panicked")));
        (serialised, wrote)
    });
    // A failed write ends the writer, which the serialiser then sees as its own failure: the
    // writer's error says what happened.
    let (len, crc) = wrote.map_err(io_err(&staged.tmp))?;
    serialised.map_err(encode_err(&staged.tmp))?;
    staged.len = PREFIX_LEN as u64 + len;
    staged
        .file
        .set_len(staged.len)
        .and_then(|_| staged.file.seek(SeekFrom::Start(0)))
        .and_then(|_| staged.file.write_all(&prefix(len, crc)))
        .map_err(io_err(&staged.tmp))?;
    Ok(staged)
}

impl Staged {
    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true: a checkpoint file holds at least its prefix.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the staged checkpoint the partition's current file, atomically: the file is fsynced,
    /// the current file becomes `.prev`, the staged file is renamed into place and the directory
    /// is fsynced.
    pub fn commit(&mut self) -> Result<(), CheckpointError> {
        self.file.sync_all().map_err(io_err(&self.tmp))?;
        if self.target.exists() {
            let prev = prev_path(&self.target);
            fs::rename(&self.target, &prev).map_err(io_err(&prev))?;
        }
        fs::rename(&self.tmp, &self.target).map_err(io_err(&self.target))?;
        self.committed = true;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    /// The file's bytes from its start (for the changelog), read through the file as staged,
    /// whatever has been renamed since.
    pub fn bytes(&mut self) -> Result<impl Read + '_, CheckpointError> {
        let path = if self.committed {
            &self.target
        } else {
            &self.tmp
        };
        self.file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        Ok((&self.file).take(self.len))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A payload on its way to a file: bytes gather in `spool` until `limit`, then the spool goes to
/// the writing thread (`full`) and an empty one comes back (`free`).
struct Spool {
    spool: Vec<u8>,
    limit: usize,
    full: mpsc::SyncSender<Vec<u8>>,
    free: mpsc::Receiver<Vec<u8>>,
}

fn writer_gone() -> io::Error {
    io::Error::other("the checkpoint's writing thread stopped")
}

impl Spool {
    /// Hands the spool over to be written, and takes an empty one.
    fn send(&mut self) -> io::Result<()> {
        let empty = self.free.recv().map_err(|_| writer_gone())?;
        let spool = std::mem::replace(&mut self.spool, empty);
        self.full.send(spool).map_err(|_| writer_gone())
    }

    /// Hands the last spool over; the writing thread's loop ends once it is written.
    fn finish(self) -> io::Result<()> {
        self.full.send(self.spool).map_err(|_| writer_gone())
    }

    /// Fills the spool, hands it over, and goes on in the next, for as long as `bytes` last.
    #[cold]
    #[inline(never)]
    fn overflow(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while self.spool.len() + bytes.len() > self.limit {
            let room = self.limit - self.spool.len();
            self.spool.extend_from_slice(&bytes[..room]);
            bytes = &bytes[room..];
            self.send()?;
        }
        self.spool.extend_from_slice(bytes);
        Ok(())
    }
}

impl Write for Spool {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    #[inline(always)]
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        // The serialiser writes every field through here: the common case stays small enough to
        // be inlined into it.
        if self.spool.len() + bytes.len() <= self.limit {
            self.spool.extend_from_slice(bytes);
            return Ok(());
        }
        self.overflow(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The error of serialising into a file at `path` (or into memory).
fn encode_err(path: &Path) -> impl FnOnce(bincode::Error) -> CheckpointError + '_ {
    move |e| match *e {
        bincode::ErrorKind::Io(source) => CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => CheckpointError::Encode(other.to_string()),
    }
}

/// The prefix of a payload of `len` bytes with CRC-32 `crc`: magic, version, length, checksum.
fn prefix(len: u64, crc: u32) -> [u8; PREFIX_LEN] {
    let mut p = [0; PREFIX_LEN];
    p[..8].copy_from_slice(MAGIC);
    p[8..12].copy_from_slice(&VERSION.to_le_bytes());
    p[12..20].copy_from_slice(&len.to_le_bytes());
    p[20..24].copy_from_slice(&crc.to_le_bytes());
    p
}

/// Decodes file bytes; `path` only labels errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    decode_from(path, bytes, bytes.len() as u64)
}

/// Bytes read from a checkpoint file at a time.
const READ_BUFFER: usize = 1 << 20;

/// Decodes the checkpoint file of `total` bytes that `r` reads, in one pass: the payload is
/// decoded as it is read, and its checksum checked at the end (a payload that fails it is
/// refused, decoded or not). Decoding never panics on any payload, so reading one before its
/// checksum is known is safe, and keeps no copy of the file in memory.
fn decode_from(path: &Path, mut r: impl Read, total: u64) -> Result<Checkpoint, CheckpointError> {
    let p = || path.to_path_buf();
    let Prefix {
        version,
        len,
        crc: stored,
    } = read_prefix(path, &mut r, total)?;
    let mut payload = Checked::new(r, len);
    let decoded = {
        let _reading = Reading::version(version);
        crate::engine::decoding(
            || {
                opts()
                    .with_limit(len)
                    .deserialize_from_custom::<_, Checkpoint>(&mut payload)
            },
            |cp| &mut cp.state,
        )
    };
    let unread = payload.finish().map_err(io_err(path))?;
    let computed = payload.crc.finalize();
    if computed != stored {
        return Err(CheckpointError::Checksum {
            path: p(),
            stored,
            computed,
        });
    }
    let decode_err = |message: String| CheckpointError::Decode { path: p(), message };
    let cp = decoded.map_err(|e| decode_err(e.to_string()))?;
    if unread > 0 {
        return Err(decode_err(format!("{unread} bytes after the state")));
    }
    Ok(cp)
}

/// What a checkpoint file's prefix says of its payload.
struct Prefix {
    version: u32,
    len: u64,
    crc: u32,
}

/// Reads and checks the prefix of a checkpoint file of `total` bytes: its magic, a version this
/// build reads, and a payload length that the file's agrees with.
fn read_prefix(path: &Path, r: &mut impl Read, total: u64) -> Result<Prefix, CheckpointError> {
    let p = || path.to_path_buf();
    if total < PREFIX_LEN as u64 {
        return Err(CheckpointError::Truncated {
            path: p(),
            len: total,
            expected: PREFIX_LEN as u64,
        });
    }
    let mut head = [0u8; PREFIX_LEN];
    r.read_exact(&mut head).map_err(io_err(path))?;
    if &head[..8] != MAGIC {
        return Err(CheckpointError::BadMagic { path: p() });
    }
    let u32_at = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let version = u32_at(8);
    if !(OLDEST_READ..=VERSION).contains(&version) {
        return Err(CheckpointError::UnsupportedVersion {
            path: p(),
            found: version,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[12..20]);
    let len = u64::from_le_bytes(len);
    let expected = (PREFIX_LEN as u64).saturating_add(len.min(MAX_PAYLOAD));
    if len > MAX_PAYLOAD || total != expected {
        return Err(CheckpointError::Truncated {
            path: p(),
            len: total,
            expected,
        });
    }
    Ok(Prefix {
        version,
        len,
        crc: u32_at(20),
    })
}

/// The header of the checkpoint file at `path`, read without the state after it, and so without
/// checking the checksum, which covers the state too: what a restore compares snapshots by before
/// it decodes one.
pub fn peek(path: &Path) -> Result<Header, CheckpointError> {
    let (mut file, total) = open(path)?;
    let Prefix { version, len, .. } = read_prefix(path, &mut file, total)?;
    let _reading = Reading::version(version);
    opts()
        .with_limit(len)
        .deserialize_from(io::BufReader::new(file.take(len)))
        .map_err(|e| CheckpointError::Decode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// A payload of a known length read from `inner` a buffer at a time, each buffer added to the
/// checksum as it is filled.
struct Checked<R> {
    inner: R,
    /// Payload bytes not yet read from `inner`.
    left: u64,
    buf: Box<[u8]>,
    /// `buf[pos..end]` is read from `inner` and not yet from the payload.
    pos: usize,
    end: usize,
    crc: crc32fast::Hasher,
}

impl<R: Read> Checked<R> {
    fn new(inner: R, len: u64) -> Checked<R> {
        Checked {
            inner,
            left: len,
            buf: vec![0; len.min(READ_BUFFER as u64) as usize].into_boxed_slice(),
            pos: 0,
            end: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Fills the buffer again once it is read; an error if the payload ends early.
    #[cold]
    fn refill(&mut self) -> io::Result<()> {
        let want = self.left.min(self.buf.len() as u64) as usize;
        let n = loop {
            match self.inner.read(&mut self.buf[..want]) {
                Ok(0) if want > 0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.crc.update(&self.buf[..n]);
        self.left -= n as u64;
        (self.pos, self.end) = (0, n);
        Ok(())
    }

    /// The next `len` bytes of the payload if the buffer holds them all, read.
    #[inline(always)]
    fn take_buffered(&mut self, len: usize) -> Option<&[u8]> {
        let at = self.pos;
        let bytes = self.buf[..self.end].get(at..at + len)?;
        self.pos = at + len;
        Some(bytes)
    }

    /// Reads (and checksums) what is left; returns how many bytes that was.
    fn finish(&mut self) -> io::Result<u64> {
        let mut unread = (self.end - self.pos) as u64;
        while self.left > 0 {
            self.refill()?;
            unread += self.end as u64;
        }
        self.pos = self.end;
        Ok(unread)
    }
}

impl<R: Read> Read for Checked<R> {
    #[inline]
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end {
            self.refill()?;
        }
        let n = (self.end - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    #[inline(always)]
    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        // The deserialiser reads every field through here: the common case stays small enough
        // to be inlined into it.
        if let Some(src) = self.take_buffered(out.len()) {
            out.copy_from_slice(src);
            return Ok(());
        }
        self.read_across(out)
    }
}

impl<R: Read> Checked<R> {
    /// Reads `out` from what is left of the buffer and the buffers after it.
    #[cold]
    #[inline(never)]
    fn read_across(&mut self, mut out: &mut [u8]) -> io::Result<()> {
        while !out.is_empty() {
            if self.pos == self.end {
                if self.left == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.refill()?;
            }
            let n = (self.end - self.pos).min(out.len());
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            out = &mut out[n..];
        }
        Ok(())
    }
}

/// Strings and byte strings are visited where they lie in the buffer, without the copy into a
/// buffer of their own that bincode's reader of any [`Read`] makes.
impl<'de, R: Read> bincode::BincodeRead<'de> for &mut Checked<R> {
    fn forward_read_str<V: serde::de::Visitor<'de>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        let visit = |bytes: &[u8]| match std::str::from_utf8(bytes) {
            Ok(s) => visitor.visit_str(s),
            Err(e) => Err(bincode::ErrorKind::InvalidUtf8Encoding(e).into()),
        };
        match self.take_buffered(length) {
            Some(bytes) => visit(bytes),
            None => visit(&self.get_byte_buffer(length)?),
        }
    }

    fn get_byte_buffer(&mut self, length: usize) -> bincode::Result<Vec<u8>> {
        // Bincode checks `length` against what is left of its limit, the payload, first.
        if let Some(bytes) = self.take_buffered(length) {
            return Ok(bytes.to_vec());
        }
        let mut bytes = Vec::with_capacity(length);
        if (&mut **self).take(length as u64).read_to_end(&mut bytes)? < length {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        Ok(bytes)
    }

    fn forward_read_bytes<V: serde::de::Visitor<'de>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        match self.take_buffered(length) {
            Some(bytes) => visitor.visit_bytes(bytes),
            None => visitor.visit_bytes(&self.get_byte_buffer(length)?),
        }
    }
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
    let (file, total) = open(path)?;
    decode_from(path, file, total)
}

/// The checkpoint file at `path`, opened for reading, and its length.
fn open(path: &Path) -> Result<(File, u64), CheckpointError> {
    let file = File::open(path).map_err(io_err(path))?;
    let total = file.metadata().map_err(io_err(path))?.len();
    Ok((file, total))
}

/// Writes the checkpoint of `header.topic`/`header.partition` atomically ([`stage`], then
/// [`Staged::commit`]); returns its size.
pub fn write(dir: &Path, header: &Header, state: &State) -> Result<u64, CheckpointError> {
    let mut staged = stage(dir, header, state)?;
    staged.commit()?;
    Ok(staged.len())
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

    /// Checkpoints of format versions 8 to 11, each written by the last build of its format
    /// (the fuzz corpus's seed of that time), restore to the state this build makes of the same
    /// samples: the same reports and alerts, and both continue the same way.
    #[test]
    fn version_8_to_11_checkpoints_restore_the_state_this_build_makes_of_the_same_samples() {
        let fixtures: [(u32, &[u8]); 4] = [
            (8, include_bytes!("../tests/golden/checkpoint-v8.ckpt")),
            (9, include_bytes!("../tests/golden/checkpoint-v9.ckpt")),
            (10, include_bytes!("../tests/golden/checkpoint-v10.ckpt")),
            (11, include_bytes!("../tests/golden/checkpoint-v11.ckpt")),
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

    /// Staging writes the bytes [`encode`] makes, whatever the spools' size (the payload going
    /// out a few bytes at a time, in pieces, or whole), and a smaller checkpoint after a larger one leaves
    /// nothing of the larger behind. Until committed the file is not the current one, and a
    /// staged checkpoint dropped uncommitted leaves no file.
    #[test]
    fn a_staged_checkpoint_holds_the_bytes_of_an_encoding_whatever_its_spool() {
        let dir = tempfile::tempdir().unwrap();
        let big = engine_with_data();
        let small = Engine::new(&Config::default()).unwrap();
        let (big_header, small_header) = (header(&big, 7200), header(&small, 1));
        let big_bytes = encode(&big_header, big.state()).unwrap();
        let small_bytes = encode(&small_header, small.state()).unwrap();
        let current = path(dir.path(), "gpu-usage", 3);
        let tmp = current.with_extension("ckpt.tmp");
        for limit in [7, 100, 4096, SPOOL_BYTES] {
            for (h, e, bytes) in [
                (&big_header, &big, &big_bytes),
                (&small_header, &small, &small_bytes),
            ] {
                let mut staged = stage_in(dir.path(), h, e.state(), limit).unwrap();
                assert_eq!(staged.len(), bytes.len() as u64);
                assert_eq!(&fs::read(&tmp).unwrap(), bytes, "limit {limit}");
                let mut read_back = Vec::new();
                staged.bytes().unwrap().read_to_end(&mut read_back).unwrap();
                assert_eq!(&read_back, bytes);
                assert!(!current.exists(), "staged, not yet current");
                drop(staged);
                assert!(!tmp.exists(), "dropped uncommitted: removed");
            }
        }

        let mut first = stage(dir.path(), &big_header, big.state()).unwrap();
        first.commit().unwrap();
        let mut second = stage(dir.path(), &small_header, small.state()).unwrap();
        second.commit().unwrap();
        drop((first, second));
        assert_eq!(fs::read(&current).unwrap(), small_bytes);
        assert_eq!(fs::read(prev_path(&current)).unwrap(), big_bytes);
        assert!(!tmp.exists());
        assert_eq!(read(&current).unwrap().header, small_header);
        assert_eq!(read(&prev_path(&current)).unwrap().header, big_header);
        // The header alone, without the state after it.
        assert_eq!(peek(&current).unwrap(), small_header);
        assert_eq!(peek(&prev_path(&current)).unwrap(), big_header);
        let short = dir.path().join("short.ckpt");
        fs::write(&short, &big_bytes[..big_bytes.len() - 1]).unwrap();
        assert!(matches!(
            peek(&short),
            Err(CheckpointError::Truncated { .. })
        ));
    }

    /// While a current file exists, staging writes over the previous one (whose pages are most
    /// likely cached) and leaves the current one whole; a smaller checkpoint leaves nothing of
    /// the larger behind. Without a current file, the previous one, then the only complete one,
    /// is left alone.
    #[test]
    fn staging_writes_over_the_previous_file_only_while_a_current_one_exists() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let big = engine_with_data();
        let small = Engine::new(&Config::default()).unwrap();
        let current = path(dir.path(), "gpu-usage", 3);
        let (prev, tmp) = (prev_path(&current), current.with_extension("ckpt.tmp"));
        let inode = |p: &Path| fs::metadata(p).unwrap().ino();
        for next in [100, 200] {
            let mut s = stage(dir.path(), &header(&big, next), big.state()).unwrap();
            s.commit().unwrap();
        }
        let (first, second) = (inode(&prev), inode(&current));

        let mut third = stage(dir.path(), &header(&small, 300), small.state()).unwrap();
        assert!(!prev.exists());
        assert_eq!(inode(&tmp), first, "the previous file, written over");
        assert_eq!(read(&current).unwrap().header.next_offset, 200);
        let mut bytes = Vec::new();
        third.bytes().unwrap().read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, encode(&header(&small, 300), small.state()).unwrap());
        third.commit().unwrap();
        assert_eq!((inode(&current), inode(&prev)), (first, second));
        assert_eq!(fs::read(&current).unwrap(), bytes);

        fs::remove_file(&current).unwrap();
        let fourth = stage(dir.path(), &header(&big, 400), big.state()).unwrap();
        assert_eq!(inode(&prev), second);
        assert_eq!(read(&prev).unwrap().header.next_offset, 200);
        drop(fourth);
        assert!(!tmp.exists());
        assert_eq!(read(&prev).unwrap().header.next_offset, 200);
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
        // A byte changed where the state starts fails its decoding, and is reported as what it
        // is: a checksum mismatch.
        let mut early = good.clone();
        early[PREFIX_LEN] ^= 0x40;
        assert!(matches!(
            decode(p, &early),
            Err(CheckpointError::Checksum { .. })
        ));
        // The same through a file, read as it is decoded.
        let file = dir.path().join("flipped.ckpt");
        fs::write(&file, &early).unwrap();
        assert!(matches!(read(&file), Err(CheckpointError::Checksum { .. })));
        fs::write(&file, truncated).unwrap();
        assert!(matches!(
            read(&file),
            Err(CheckpointError::Truncated { .. })
        ));
        fs::write(&file, &good).unwrap();
        assert!(read(&file).is_ok());
    }

    /// A payload holding more than the state (its length and checksum agreeing) is refused.
    #[test]
    fn bytes_after_the_state_are_a_decode_error() {
        let e = engine_with_data();
        let good = encode(&header(&e, 1), e.state()).unwrap();
        let payload = [&good[PREFIX_LEN..], b"extra"].concat();
        let framed = [
            prefix(payload.len() as u64, crc32fast::hash(&payload)).as_slice(),
            &payload,
        ]
        .concat();
        let err = decode(Path::new("x.ckpt"), &framed).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Decode { message, .. } if message.contains("5 bytes after the state")),
            "{err}"
        );
    }

    #[test]
    fn a_checkpoint_stating_more_series_than_it_holds_is_a_decode_error() {
        // The fuzzer's seed checkpoint with one job's count of device series set to 2^61 (the
        // prefix is rebuilt here so that the checksum matches the changed payload). Reserving
        // that many entries used to abort the process.
        let file = include_bytes!("../fuzz/regressions/checkpoint_read/series-count-2e61.ckpt");
        let payload = &file[PREFIX_LEN..];
        let framed = [
            prefix(payload.len() as u64, crc32fast::hash(payload)).as_slice(),
            payload,
        ]
        .concat();
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
