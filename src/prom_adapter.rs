//! The prometheus-kafka-adapter's JSON serialisation: one sample of one metric per message, the
//! value as a string (possibly `"NaN"`):
//!
//! ```json
//! {"timestamp":"2024-05-01T12:00:30Z","value":"0.8731","name":"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
//!  "labels":{"__name__":"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE","gpu":"3","UUID":"GPU-604ac76c",
//!            "modelName":"NVIDIA H100 80GB HBM3","Hostname":"node-17","namespace":"tenant-a",
//!            "pod":"trainer-0"}}
//! ```
//!
//! Each message becomes at most one [`join::Reading`]; the join buffer makes samples of them. Metrics
//! trainspotter does not use, `NaN` values and GPUs without a tenant label are skipped without
//! error; malformed messages are rejected like native events.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

use crate::decode::{
    json_rejection, missing, DecodeLimits, Decoded, Decoder, RejectReason, Rejection,
};
use crate::join;
use crate::labels::LabelMap;

pub struct PromAdapterJson {
    pub labels: LabelMap,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    value: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    labels: Option<HashMap<Cow<'a, str>, Cow<'a, str>>>,
}

impl Decoder for PromAdapterJson {
    fn decode(
        &self,
        payload: &[u8],
        limits: DecodeLimits,
        out: &mut Decoded,
    ) -> Result<(), Rejection> {
        let m: Message<'_> = serde_json::from_slice(payload).map_err(json_rejection)?;
        let name = m.name.ok_or_else(|| missing("name"))?;
        let value = m.value.ok_or_else(|| missing("value"))?;
        let timestamp = m.timestamp.ok_or_else(|| missing("timestamp"))?;
        let labels = m.labels.ok_or_else(|| missing("labels"))?;
        let ts_ms = limits.rfc3339_ts(&timestamp)?;
        let value: f64 = value.trim().parse().map_err(|_| {
            Rejection::new(
                RejectReason::WrongType,
                format!("value {value:?} is not a number"),
            )
        })?;
        let label = |k: &str| labels.get(k).map(|v| v.as_ref());
        out.readings
            .extend(join::reading(&self.labels, &name, ts_ms, value, label)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LabelsConfig;
    use crate::join::Field;

    fn decoder() -> PromAdapterJson {
        PromAdapterJson {
            labels: LabelMap::new(&LabelsConfig::default()).unwrap(),
        }
    }

    fn decode(text: &str) -> Result<Decoded, Rejection> {
        let mut out = Decoded::default();
        decoder().decode(text.as_bytes(), DecodeLimits::OPEN, &mut out)?;
        Ok(out)
    }

    /// The adapter's output as DOMAIN.md shows it.
    const EXAMPLE: &str = r#"{"timestamp":"2024-05-01T12:00:30Z","value":"0.8731","name":"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE","labels":{"__name__":"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE","gpu":"3","UUID":"GPU-604ac76c-7c1b-4c39-a7bb-3a1b6d4f0d11","modelName":"NVIDIA H100 80GB HBM3","Hostname":"node-17","namespace":"tenant-a","pod":"trainer-0"}}"#;

    #[test]
    fn the_adapters_serialisation_becomes_one_reading() {
        let out = decode(EXAMPLE).unwrap();
        assert!(out.samples.is_empty());
        let r = &out.readings[0];
        assert_eq!(r.field, Field::TensorActive);
        assert_eq!(r.value, 0.8731);
        assert_eq!(r.ts_ms, 1_714_564_830_000);
        assert_eq!(r.device.tenant, "tenant-a");
        assert_eq!(r.device.job.as_deref(), Some("trainer"));
        assert_eq!(
            r.device.gpu.as_deref(),
            Some("GPU-604ac76c-7c1b-4c39-a7bb-3a1b6d4f0d11")
        );
        assert_eq!(r.accelerator.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    }

    #[test]
    fn nan_unused_metrics_and_unattributed_gpus_are_skipped_without_error() {
        let nan = EXAMPLE.replace("\"0.8731\"", "\"NaN\"");
        assert!(decode(&nan).unwrap().readings.is_empty());
        let other = EXAMPLE.replace(
            "\"name\":\"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE\"",
            "\"name\":\"DCGM_FI_DEV_SM_CLOCK\"",
        );
        assert!(decode(&other).unwrap().readings.is_empty());
        let idle = EXAMPLE.replace("\"namespace\":\"tenant-a\",", "");
        assert!(decode(&idle).unwrap().readings.is_empty());
    }

    #[test]
    fn malformed_messages_are_rejected_with_a_reason() {
        let reason = |t: &str| decode(t).unwrap_err().reason;
        assert_eq!(reason("{"), RejectReason::MalformedJson);
        assert_eq!(
            reason(r#"{"value":"1","name":"x","labels":{}}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(&EXAMPLE.replace("\"0.8731\"", "\"high\"")),
            RejectReason::WrongType
        );
        assert_eq!(
            reason(&EXAMPLE.replace("\"0.8731\"", "0.8731")),
            RejectReason::WrongType
        );
        assert_eq!(
            reason(&EXAMPLE.replace("2024-05-01T12:00:30Z", "yesterday")),
            RejectReason::BadTimestamp
        );
        assert_eq!(
            reason(&EXAMPLE.replace("\"0.8731\"", "\"1.5\"")),
            RejectReason::OutOfRange
        );
        let future = DecodeLimits {
            max_ts_ms: 1_714_564_829_999,
        };
        let mut out = Decoded::default();
        let e = decoder()
            .decode(EXAMPLE.as_bytes(), future, &mut out)
            .unwrap_err();
        assert_eq!(e.reason, RejectReason::BadTimestamp);
    }
}
