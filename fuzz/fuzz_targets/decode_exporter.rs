//! Arbitrary bytes through the exporter-format decoders: OTLP protobuf, OTLP/JSON,
//! prometheus-kafka-adapter JSON and Vector JSON. The first byte picks the decoder, the rest is the
//! payload. Besides not panicking, every decode must keep the `Decoder` contract:
//! - a rejection appends nothing and carries a detail;
//! - exporter formats yield readings, never whole samples;
//! - every reading has a non-empty tenant, a timestamp within the fixed bounds and the limit, and
//!   a value in its field's range (fractions in 0..=1, everything finite and non-negative).
#![no_main]

use libfuzzer_sys::fuzz_target;
use trainspotter::config::LabelsConfig;
use trainspotter::decode::{DecodeLimits, Decoded, Decoder, MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS};
use trainspotter::join::Field;
use trainspotter::labels::LabelMap;
use trainspotter::otlp::{OtlpJson, OtlpProto};
use trainspotter::prom_adapter::PromAdapterJson;
use trainspotter::vector::VectorJson;

fuzz_target!(|data: &[u8]| {
    let Some((&which, payload)) = data.split_first() else {
        return;
    };
    // The label mapping (a compiled regular expression) is built once, not per input.
    static LABELS: std::sync::OnceLock<LabelMap> = std::sync::OnceLock::new();
    let labels = LABELS
        .get_or_init(|| LabelMap::new(&LabelsConfig::default()).unwrap())
        .clone();
    let decoder: Box<dyn Decoder> = match which % 4 {
        0 => Box::new(OtlpProto { labels }),
        1 => Box::new(OtlpJson { labels }),
        2 => Box::new(PromAdapterJson { labels }),
        _ => Box::new(VectorJson { labels }),
    };
    // An open decode, and one bounded by a limit taken from the payload's last bytes.
    let mut limits = vec![DecodeLimits::OPEN];
    if payload.len() >= 8 {
        let tail: [u8; 8] = payload[payload.len() - 8..].try_into().unwrap();
        limits.push(DecodeLimits {
            max_ts_ms: i64::from_le_bytes(tail),
        });
    }
    for limit in limits {
        let mut out = Decoded::default();
        match decoder.decode(payload, limit, &mut out) {
            Err(r) => {
                assert!(out.is_empty(), "a rejection appended output: {r}");
                assert!(!r.detail.is_empty(), "rejection without detail");
            }
            Ok(()) => {
                assert!(
                    out.samples.is_empty(),
                    "an exporter format yielded a whole sample"
                );
                for r in &out.readings {
                    assert!(!r.device.tenant.is_empty(), "reading without tenant");
                    assert!(
                        (MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&r.ts_ms)
                            && r.ts_ms <= limit.max_ts_ms,
                        "timestamp {} outside the bounds or the limit {}",
                        r.ts_ms,
                        limit.max_ts_ms
                    );
                    assert!(
                        r.value.is_finite() && r.value >= 0.0,
                        "{:?} = {}",
                        r.field,
                        r.value
                    );
                    let fraction = matches!(
                        r.field,
                        Field::TensorActive | Field::SmActive | Field::GpuUtil | Field::DramActive
                    );
                    assert!(
                        !fraction || r.value <= 1.0,
                        "{:?} = {} above 1",
                        r.field,
                        r.value
                    );
                }
            }
        }
    }
});
