//! Arbitrary bytes through the native event decoder (`NativeJson`).
//!
//! Beyond "never panics", every accepted sample must satisfy what the rest of the pipeline relies
//! on (see the README's event schema and `src/decode.rs`):
//! - exactly one sample (and no metric reading) is appended on success and nothing on rejection;
//! - `gpus` and `interval_s` are finite, positive and within `MAX_GPUS` / `MAX_INTERVAL_S`;
//! - `tenant` is non-empty, and no optional string is present but empty;
//! - `ts_ms` lies within `MIN_EVENT_TIME_MS..=min(MAX_EVENT_TIME_MS, limits.max_ts_ms)`;
//! - activity fractions are finite and in 0..=1, counters are finite and non-negative;
//! - the skew guard is consistent: decoding under a bounded `DecodeLimits` accepts exactly the
//!   payloads accepted under `DecodeLimits::OPEN` whose timestamp is within the bound, and yields
//!   the same sample;
//! - the one-pass fast path and serde_json agree: the same sample, or the same rejection;
//! - the fast path reads the same again with the key order it learned from the payload (every
//!   known key then expected where it is);
//! - an accepted sample survives `UsageSample::to_json`: the JSON decodes again, to the same
//!   strings, timestamp and numbers (bit for bit: numbers are parsed correctly rounded).
#![no_main]

use std::env;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trainspotter::decode::{
    DecodeLimits, Decoded, Decoder, FlatNative, NativeJson, UsageSample, MAX_EVENT_TIME_MS,
    MAX_GPUS, MAX_INTERVAL_S, MIN_EVENT_TIME_MS,
};
use trainspotter::flatjson::KeyOrder;

/// Decodes into `out.samples` (the native format never yields readings).
fn decode(
    data: &[u8],
    limits: DecodeLimits,
    out: &mut Vec<UsageSample>,
) -> Result<(), trainspotter::decode::Rejection> {
    let mut d = Decoded {
        samples: std::mem::take(out),
        readings: Vec::new(),
    };
    let r = NativeJson.decode(data, limits, &mut d);
    assert!(d.readings.is_empty(), "the native format yielded readings");
    *out = d.samples;
    r
}

fuzz_target!(|data: &[u8]| {
    // A sample already in `out` checks that the decoder appends and never clears or rewrites.
    let sentinel = UsageSample::new(MIN_EVENT_TIME_MS, "sentinel", 1.0, 1.0);
    let mut out = vec![sentinel.clone()];
    let open = decode(data, DecodeLimits::OPEN, &mut out);
    assert_eq!(
        out[0], sentinel,
        "decoder modified a sample it did not append"
    );
    let reference = trainspotter::decode::decode_native_by_serde(data, DecodeLimits::OPEN);
    match (&open, &reference) {
        (Ok(()), Ok(r)) => assert_eq!(out.last(), Some(r), "fast path and serde_json differ"),
        (Err(a), Err(b)) => assert_eq!(a, b, "fast path and serde_json reject differently"),
        _ => panic!("fast path {open:?}, serde_json {reference:?}"),
    }
    let mut order = KeyOrder::default();
    let mut flat = || {
        FlatNative::read(data, &mut order)
            .map(|f| f.sample(DecodeLimits::OPEN).map(|s| s.to_sample()))
    };
    let first = flat();
    assert_eq!(first, flat(), "the learned key order changed the result");
    if let Some(first) = first {
        assert_eq!(
            first, reference,
            "the fast path's batch reading and serde_json differ"
        );
    }
    let accepted = match open {
        Ok(()) => {
            assert_eq!(out.len(), 2, "success must append exactly one sample");
            let s = out.pop().unwrap();
            check_sample(&s, DecodeLimits::OPEN);
            Some(s)
        }
        Err(rejection) => {
            assert_eq!(out.len(), 1, "rejection appended a sample: {rejection}");
            assert!(!rejection.detail.is_empty(), "rejection without detail");
            None
        }
    };

    // The skew guard, with bounds derived from the input: one taken from its first bytes (any
    // i64, so also bounds below MIN_EVENT_TIME_MS and negative ones), and, for accepted
    // payloads, bounds right at, just below and just above the sample's own timestamp.
    let mut bounds = Vec::with_capacity(4);
    if data.len() >= 8 {
        bounds.push(i64::from_le_bytes(data[..8].try_into().unwrap()));
    }
    if let Some(s) = &accepted {
        bounds.extend([s.ts_ms, s.ts_ms - 1, s.ts_ms.saturating_add(1)]);
    }
    for max_ts_ms in bounds {
        let limits = DecodeLimits { max_ts_ms };
        let mut bounded = Vec::new();
        let result = decode(data, limits, &mut bounded);
        match (&accepted, result) {
            (Some(open), Ok(())) => {
                assert!(
                    open.ts_ms <= max_ts_ms,
                    "ts {} accepted beyond max_ts_ms {max_ts_ms}",
                    open.ts_ms
                );
                assert_eq!(bounded.len(), 1);
                check_sample(&bounded[0], limits);
                assert_eq!(&bounded[0], open, "bounded decode changed the sample");
            }
            (Some(open), Err(r)) => {
                assert!(
                    open.ts_ms > max_ts_ms,
                    "ts {} within max_ts_ms {max_ts_ms} but rejected: {r}",
                    open.ts_ms
                );
                assert!(bounded.is_empty());
            }
            (None, Ok(())) => panic!("accepted under max_ts_ms {max_ts_ms} but not when open"),
            (None, Err(_)) => assert!(bounded.is_empty()),
        }
    }

    // What the simulator and tests produce from a sample must decode back to it.
    if let Some(s) = &accepted {
        let json = s.to_json();
        let mut again = Vec::new();
        if let Err(r) = decode(json.as_bytes(), DecodeLimits::OPEN, &mut again) {
            panic!("to_json output rejected: {r}\njson: {json}");
        }
        let t = &again[0];
        assert_eq!(
            (&t.tenant, &t.job, &t.node, &t.gpu, &t.accelerator, t.ts_ms),
            (&s.tenant, &s.job, &s.node, &s.gpu, &s.accelerator, s.ts_ms),
            "to_json round trip changed an identity field\njson: {json}"
        );
        // Numbers are parsed correctly rounded (serde_json's `float_roundtrip`), so every number
        // must come back bit for bit (fuzz/regressions/decode_event/float-roundtrip-*.json were
        // one to two units in the last place off before). FUZZ_FLOAT_TOLERANCE=1 in the
        // environment allows a relative 1e-13 instead, for a parser that is not correctly rounded.
        let nums = |u: &UsageSample| {
            [
                Some(u.gpus),
                Some(u.interval_s),
                u.activity.tensor_active,
                u.activity.sm_active,
                u.activity.gpu_util,
                u.activity.dram_active,
                u.power_w,
                u.fb_used_bytes,
                u.nvlink_tx_bytes,
                u.nvlink_rx_bytes,
            ]
        };
        for (a, b) in nums(s).into_iter().zip(nums(t)) {
            match (a, b) {
                (Some(a), Some(b)) => assert!(
                    close(a, b),
                    "to_json round trip changed {a:e} to {b:e}\njson: {json}"
                ),
                (None, None) => {}
                _ => panic!("to_json round trip changed a field's presence\njson: {json}"),
            }
        }
    }
});

/// Equal (`-0.0` equals `0.0`: `to_json` writes both as `0`). With `FUZZ_FLOAT_TOLERANCE=1` in
/// the environment, also within a relative 1e-13 (about 450 units in the last place).
fn close(a: f64, b: f64) -> bool {
    static TOLERANT: OnceLock<bool> = OnceLock::new();
    let tolerant =
        *TOLERANT.get_or_init(|| env::var("FUZZ_FLOAT_TOLERANCE").is_ok_and(|v| v == "1"));
    a == b
        || (tolerant
            && a.is_finite()
            && b.is_finite()
            && (a - b).abs() <= 1e-13 * a.abs().max(b.abs()))
}

fn check_sample(s: &UsageSample, limits: DecodeLimits) {
    assert!(
        s.gpus.is_finite() && s.gpus > 0.0 && s.gpus <= MAX_GPUS,
        "gpus {} out of range",
        s.gpus
    );
    assert!(
        s.interval_s.is_finite() && s.interval_s > 0.0 && s.interval_s <= MAX_INTERVAL_S,
        "interval_s {} out of range",
        s.interval_s
    );
    assert!(!s.tenant.is_empty(), "empty tenant accepted");
    for (name, v) in [
        ("job", &s.job),
        ("node", &s.node),
        ("gpu", &s.gpu),
        ("accelerator", &s.accelerator),
    ] {
        if let Some(v) = v {
            assert!(!v.is_empty(), "empty {name} accepted");
        }
    }
    assert!(
        s.ts_ms >= MIN_EVENT_TIME_MS && s.ts_ms <= MAX_EVENT_TIME_MS && s.ts_ms <= limits.max_ts_ms,
        "ts {} outside {MIN_EVENT_TIME_MS}..={}",
        s.ts_ms,
        MAX_EVENT_TIME_MS.min(limits.max_ts_ms)
    );
    let a = &s.activity;
    for (name, v) in [
        ("tensor_active", a.tensor_active),
        ("sm_active", a.sm_active),
        ("gpu_util", a.gpu_util),
        ("dram_active", a.dram_active),
    ] {
        if let Some(v) = v {
            assert!((0.0..=1.0).contains(&v), "{name} {v} is not a fraction");
        }
    }
    for (name, v) in [
        ("power_w", s.power_w),
        ("fb_used_bytes", s.fb_used_bytes),
        ("nvlink_tx_bytes", s.nvlink_tx_bytes),
        ("nvlink_rx_bytes", s.nvlink_rx_bytes),
    ] {
        if let Some(v) = v {
            assert!(v.is_finite() && v >= 0.0, "{name} {v} accepted");
        }
    }
}
