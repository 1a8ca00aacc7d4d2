//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared data folder: `TRAINSPOTTER_SHARED_DATA`, or `shared/data` beside the checkout.
pub fn shared_data() -> PathBuf {
    if let Ok(p) = std::env::var("TRAINSPOTTER_SHARED_DATA") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    assert!(p.is_dir(), "shared data not found at {}; set TRAINSPOTTER_SHARED_DATA", p.display());
    p
}
