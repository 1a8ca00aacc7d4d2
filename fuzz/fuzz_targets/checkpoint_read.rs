//! Arbitrary bytes through the checkpoint reader (`trainspotter::checkpoint::decode`).
//!
//! Each input is decoded twice:
//! 1. as a whole checkpoint file, which exercises the prefix checks (length, magic, version,
//!    payload length, CRC-32);
//! 2. as a payload inside a well-formed frame built here (magic, version, length and CRC-32 of
//!    the payload), so that the checksum does not hide the bincode payload decoder from the
//!    fuzzer. If the input already starts with the magic and holds a whole prefix (as the seed
//!    checkpoints do), its own prefix is replaced, keeping its version if this build reads it (so
//!    mutations of a real checkpoint's payload reach the payload decoder of its format);
//!    otherwise the whole input is the payload, framed with `VERSION`.
//!
//! Neither may panic or allocate without bound (libFuzzer's -rss_limit_mb catches the latter). A
//! framed payload that decodes must re-encode with `checkpoint::encode`, decode again, and give
//! back the same header.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trainspotter::checkpoint::{self, CheckpointError, OLDEST_READ, VERSION};

const MAGIC: &[u8; 8] = b"TSCKPT\0\0";
const PREFIX_LEN: usize = 8 + 4 + 8 + 4;

fn frame(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.ckpt");
    // The input's own prefix, if it has one: its version, if this build reads it, and payload.
    let prefixed = (data.len() >= PREFIX_LEN && data[..8] == MAGIC[..]).then(|| {
        let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
        let readable = (OLDEST_READ..=VERSION).contains(&version);
        (readable.then_some(version), &data[PREFIX_LEN..])
    });

    // 1. The input as a file. Anything not framed correctly must be refused by the prefix
    //    checks, and the error must render (it goes to the log).
    if let Err(e) = checkpoint::decode(path, data) {
        let _ = e.to_string();
        if let Some((Some(version), payload)) = prefixed {
            // A correct prefix with the right length and checksum only fails in the payload.
            if frame(version, payload) == data {
                assert!(matches!(e, CheckpointError::Decode { .. }), "{e}");
            }
        }
    }

    // 2. The payload in a well-formed frame, of its own version if this build reads it.
    let (version, payload) = match prefixed {
        Some((version, payload)) => (version.unwrap_or(VERSION), payload),
        None => (VERSION, data),
    };
    if payload.is_empty() {
        return;
    }
    let framed = frame(version, payload);
    match checkpoint::decode(path, &framed) {
        Ok(cp) => {
            let bytes = checkpoint::encode(&cp.header, &cp.state)
                .unwrap_or_else(|e| panic!("decoded checkpoint does not re-encode: {e}"));
            let again = checkpoint::decode(path, &bytes)
                .unwrap_or_else(|e| panic!("re-encoded checkpoint does not decode: {e}"));
            assert_eq!(again.header, cp.header, "header changed in a round trip");
        }
        Err(e) => {
            assert!(
                matches!(e, CheckpointError::Decode { .. }),
                "a well-formed frame was refused before its payload: {e}"
            );
            let _ = e.to_string();
        }
    }
});
