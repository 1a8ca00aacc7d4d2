//! Vector's metric events as its kafka sink writes them with the `json` codec, one metric per
//! message:
//!
//! ```json
//! {"name":"DCGM_FI_DEV_POWER_USAGE","namespace":"dcgm","tags":{"gpu":"0","UUID":"GPU-..."},
//!  "timestamp":"2023-02-02T10:28:08.670070700Z","kind":"absolute","gauge":{"value":412.3}}
//! ```
//!
//! and with the `native_json` codec, the same object wrapped as `{"metric": {...}}`. Gauges and
//! absolute counters are read; the metric's `namespace` is Vector's, not the Kubernetes one (that
//! one is a tag). Each message becomes at most one [`join::Reading`], like the Prometheus adapter's.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

use crate::decode::{json_rejection, missing, DecodeLimits, Decoded, Decoder, Rejection};
use crate::join;
use crate::labels::LabelMap;

pub struct VectorJson {
    pub labels: LabelMap,
}

#[derive(Deserialize)]
struct Value {
    value: f64,
}

#[derive(Deserialize)]
struct Metric<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tags: HashMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    gauge: Option<Value>,
    counter: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Message<'a> {
    Wrapped {
        #[serde(borrow)]
        metric: Metric<'a>,
    },
    #[serde(borrow)]
    Bare(Metric<'a>),
}

impl Decoder for VectorJson {
    fn decode(
        &self,
        payload: &[u8],
        limits: DecodeLimits,
        out: &mut Decoded,
    ) -> Result<(), Rejection> {
        let m = match serde_json::from_slice::<Message<'_>>(payload).map_err(json_rejection)? {
            Message::Wrapped { metric } | Message::Bare(metric) => metric,
        };
        let name = m.name.ok_or_else(|| missing("name"))?;
        let timestamp = m.timestamp.ok_or_else(|| missing("timestamp"))?;
        let ts_ms = limits.rfc3339_ts(&timestamp)?;
        let value = match (m.gauge, m.counter) {
            (Some(g), _) => g.value,
            (None, Some(c)) if m.kind.as_deref() != Some("incremental") => c.value,
            // Incremental counters, histograms, sets, distributions: not telemetry we read.
            _ => return Ok(()),
        };
        let label = |k: &str| m.tags.get(k).map(|v| v.as_ref());
        out.readings
            .extend(join::reading(&self.labels, &name, ts_ms, value, label)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LabelsConfig;
    use crate::decode::RejectReason;
    use crate::join::Field;

    fn decode(text: &str) -> Result<Decoded, Rejection> {
        let d = VectorJson {
            labels: LabelMap::new(&LabelsConfig::default()).unwrap(),
        };
        let mut out = Decoded::default();
        d.decode(text.as_bytes(), DecodeLimits::OPEN, &mut out)?;
        Ok(out)
    }

    /// Vector's documented json-codec shape, with dcgm-exporter's Kubernetes labels as tags.
    const EXAMPLE: &str = r#"{"name":"DCGM_FI_DEV_POWER_USAGE","namespace":"dcgm","tags":{"gpu":"0","UUID":"GPU-5fd4b3a5","modelName":"NVIDIA A100-SXM4-80GB","Hostname":"node-3","namespace":"tenant-b","pod":"finetune-2"},"timestamp":"2023-02-02T10:28:08.670070700Z","kind":"absolute","gauge":{"value":412.3}}"#;

    #[test]
    fn json_and_native_json_codecs_give_the_same_reading() {
        let bare = decode(EXAMPLE).unwrap();
        let wrapped = decode(&format!("{{\"metric\":{EXAMPLE}}}")).unwrap();
        assert_eq!(bare.readings, wrapped.readings);
        let r = &bare.readings[0];
        assert_eq!((r.field, r.value), (Field::PowerW, 412.3));
        assert_eq!(
            r.ts_ms, 1_675_333_688_670,
            "nanoseconds truncated to milliseconds"
        );
        assert_eq!(
            r.device.tenant, "tenant-b",
            "the Kubernetes namespace tag, not Vector's"
        );
        assert_eq!(r.device.job.as_deref(), Some("finetune"));
    }

    #[test]
    fn counters_are_read_and_other_kinds_skipped() {
        let util = EXAMPLE
            .replace("DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_UTIL")
            .replace("\"gauge\":{\"value\":412.3}", "\"counter\":{\"value\":50}");
        assert_eq!(decode(&util).unwrap().readings[0].value, 0.5);
        let incremental = util.replace("absolute", "incremental");
        assert!(decode(&incremental).unwrap().readings.is_empty());
        let histogram = EXAMPLE.replace(
            "\"gauge\":{\"value\":412.3}",
            "\"aggregated_histogram\":{\"buckets\":[],\"count\":0,\"sum\":0}",
        );
        assert!(decode(&histogram).unwrap().readings.is_empty());
    }

    #[test]
    fn malformed_messages_are_rejected_with_a_reason() {
        let reason = |t: &str| decode(t).unwrap_err().reason;
        assert_eq!(reason("not json"), RejectReason::MalformedJson);
        assert_eq!(
            reason(r#"{"name":"x","gauge":{"value":"high"}}"#),
            RejectReason::WrongType
        );
        assert_eq!(
            reason(&EXAMPLE.replace("\"timestamp\":\"2023-02-02T10:28:08.670070700Z\",", "")),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(&EXAMPLE.replace("412.3", "-5")),
            RejectReason::OutOfRange
        );
    }
}
