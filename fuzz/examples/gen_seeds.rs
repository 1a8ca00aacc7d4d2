//! Writes the seed checkpoint of the `checkpoint_read` corpus: an engine under the default
//! configuration after a short run of one training job and one small tenant, with a scrape of a
//! metric-per-message format waiting in its join buffer, encoded with
//! `checkpoint::encode`. Run from `fuzz/`: `cargo run --example gen_seeds` (it is not a fuzz
//! target; `scripts/fuzz.sh` does not need it, the seeds are committed).
use std::fs;
use std::path::Path;

use trainspotter::checkpoint::{self, Header};
use trainspotter::config::Config;
use trainspotter::decode::UsageSample;
use trainspotter::engine::Engine;
use trainspotter::join::{Device, Field, Reading};

/// 2024-05-01T00:00:00Z.
const T0: i64 = 1_714_521_600_000;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/checkpoint_read");
    fs::create_dir_all(&dir).unwrap();

    let mut engine = Engine::new(&Config::default()).unwrap();
    let mut alerts = 0;
    // 64 devices of one job on eight nodes for 40 minutes (enough to be suspected of training, so
    // the state holds an active alert with its JSON evidence), plus a small second tenant.
    for m in 0..40 {
        for gpu in 0..64 {
            let s = UsageSample::new(T0 + m * 60_000, "acme", 1.0, 60.0)
                .job("pretrain-7b")
                .device(format!("n{}", gpu / 8), (gpu % 8).to_string())
                .accelerator("NVIDIA H100 80GB HBM3")
                .tensor_active(0.45)
                .gpu_util(0.97);
            engine.apply(&s);
        }
        engine.apply(&UsageSample::new(T0 + m * 60_000, "globex", 0.5, 60.0));
    }
    alerts += engine.drain_alerts().len();
    // Two readings of a metric-per-message format at the latest scrape: not yet complete, so
    // they stay in the join buffer, which is part of the state.
    let device = Device {
        tenant: "acme".into(),
        job: Some("pretrain-7b".into()),
        node: Some("n8".into()),
        gpu: Some("0".into()),
    };
    let reading = |field, value| Reading {
        device: device.clone(),
        accelerator: Some("NVIDIA H100 80GB HBM3".into()),
        ts_ms: T0 + 40 * 60_000,
        field,
        value,
    };
    engine.apply_readings([
        reading(Field::TensorActive, 0.41),
        reading(Field::PowerW, 612.5),
    ]);
    assert_eq!(engine.join_pending(), 1);
    let header = Header {
        topic: "gpu-usage".into(),
        partition: 0,
        next_offset: 2600,
        shape: engine.shape(),
        written_at_ms: T0 + 40 * 60_000,
    };
    let bytes = checkpoint::encode(&header, engine.state()).unwrap();
    let cp = checkpoint::decode(Path::new("seed"), &bytes).unwrap();
    assert_eq!(cp.header, header);
    let path = dir.join("seed-engine.ckpt");
    fs::write(&path, &bytes).unwrap();
    println!(
        "{}: {} bytes, {alerts} alert records",
        path.display(),
        bytes.len()
    );

    // The empty engine: the smallest valid checkpoint.
    let empty = Engine::new(&Config::default()).unwrap();
    let header = Header {
        topic: "t".into(),
        partition: 0,
        next_offset: 0,
        shape: empty.shape(),
        written_at_ms: 0,
    };
    let bytes = checkpoint::encode(&header, empty.state()).unwrap();
    let path = dir.join("seed-empty.ckpt");
    fs::write(&path, &bytes).unwrap();
    println!("{}: {} bytes", path.display(), bytes.len());
}
