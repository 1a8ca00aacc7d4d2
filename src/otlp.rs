//! OTLP metrics as the OpenTelemetry Collector's kafka exporter writes them: each message is a
//! whole `ExportMetricsServiceRequest`, encoded as protobuf (`otlp_proto`, the exporter's default)
//! or as OTLP/JSON (`otlp_json`, where 64-bit integers are decimal strings; numbers are accepted
//! too).
//!
//! One message carries many metrics and data points. Gauges and cumulative sums of the DCGM
//! fields trainspotter reads become [`join::Reading`]s; a data point's labels are its attributes over
//! its resource's attributes (dcgm-exporter's labels arrive as data point attributes through the
//! Collector's Prometheus receiver). Data points flagged as having no recorded value, NaN values,
//! other metric types and GPUs without a tenant label are skipped; a message whose structure or
//! timestamps are invalid is rejected whole.
//!
//! The protobuf messages below are the subset of `opentelemetry/proto/metrics/v1/metrics.proto`,
//! `common/v1/common.proto` and `collector/metrics/v1/metrics_service.proto` that trainspotter
//! reads, with the official field numbers; fields not declared here are skipped by the decoder.

use std::borrow::Cow;

use prost::Message as _;
use serde::Deserialize;

use crate::decode::{json_rejection, DecodeLimits, Decoded, Decoder, RejectReason, Rejection};
use crate::join::{self, Field};
use crate::labels::LabelMap;

/// `AggregationTemporality` values.
const CUMULATIVE: i32 = 2;
/// `DataPointFlags.FLAG_NO_RECORDED_VALUE`.
const NO_RECORDED_VALUE: u32 = 1;

mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportMetricsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_metrics: Vec<ResourceMetrics>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceMetrics {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_metrics: Vec<ScopeMetrics>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeMetrics {
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(oneof = "Data", tags = "5, 7")]
        pub data: Option<Data>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        #[prost(message, tag = "5")]
        Gauge(Gauge),
        #[prost(message, tag = "7")]
        Sum(Sum),
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Gauge {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sum {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NumberDataPoint {
        #[prost(message, repeated, tag = "7")]
        pub attributes: Vec<KeyValue>,
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        #[prost(oneof = "NumberValue", tags = "4, 6")]
        pub value: Option<NumberValue>,
        #[prost(uint32, tag = "8")]
        pub flags: u32,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum NumberValue {
        #[prost(double, tag = "4")]
        AsDouble(f64),
        #[prost(sfixed64, tag = "6")]
        AsInt(i64),
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 2, 3, 4")]
        pub value: Option<Value>,
    }
    /// `AnyValue.value`, with the proto's variant names.
    #[allow(clippy::enum_variant_names)]
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        #[prost(int64, tag = "3")]
        IntValue(i64),
        #[prost(double, tag = "4")]
        DoubleValue(f64),
    }
}

/// One number data point of a gauge or cumulative sum, whatever the encoding.
struct Point<'a> {
    metric: &'a str,
    time_unix_nano: u64,
    flags: u32,
    value: Option<f64>,
    /// Resource attributes first, then the point's own (later entries win).
    attributes: Vec<(&'a str, Cow<'a, str>)>,
}

/// Turns data points into readings (shared by both encodings); nothing is appended when the
/// message is rejected.
fn readings(
    labels: &LabelMap,
    points: Vec<Point<'_>>,
    limits: DecodeLimits,
    out: &mut Decoded,
) -> Result<(), Rejection> {
    let mut found = Vec::new();
    for p in points {
        if Field::from_metric(p.metric).is_none() {
            continue;
        }
        let ts_ms = i64::try_from(p.time_unix_nano / 1_000_000).unwrap_or(i64::MAX);
        limits.check_ts(ts_ms).map_err(|e| {
            Rejection::new(
                e.reason,
                format!(
                    "{}: timeUnixNano {}: {}",
                    p.metric, p.time_unix_nano, e.detail
                ),
            )
        })?;
        let Some(value) = p.value else {
            continue;
        };
        if p.flags & NO_RECORDED_VALUE != 0 {
            continue;
        }
        let attribute = |k: &str| {
            p.attributes
                .iter()
                .rev()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_ref())
        };
        found.extend(join::reading(labels, p.metric, ts_ms, value, attribute)?);
    }
    out.readings.append(&mut found);
    Ok(())
}

/// OTLP protobuf (`otlp_proto`).
pub struct OtlpProto {
    pub labels: LabelMap,
}

fn pb_value(v: &Option<pb::AnyValue>) -> Option<Cow<'_, str>> {
    match v.as_ref()?.value.as_ref()? {
        pb::Value::StringValue(s) => Some(Cow::Borrowed(s)),
        pb::Value::BoolValue(b) => Some(Cow::Owned(b.to_string())),
        pb::Value::IntValue(i) => Some(Cow::Owned(i.to_string())),
        pb::Value::DoubleValue(d) => Some(Cow::Owned(d.to_string())),
    }
}

impl Decoder for OtlpProto {
    fn decode(
        &self,
        payload: &[u8],
        limits: DecodeLimits,
        out: &mut Decoded,
    ) -> Result<(), Rejection> {
        let req = pb::ExportMetricsServiceRequest::decode(payload).map_err(|e| {
            Rejection::new(
                RejectReason::MalformedProtobuf,
                format!("not an OTLP ExportMetricsServiceRequest: {e}"),
            )
        })?;
        let mut points = Vec::new();
        for rm in &req.resource_metrics {
            let resource: Vec<(&str, Cow<'_, str>)> = rm
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .filter_map(|kv| Some((kv.key.as_str(), pb_value(&kv.value)?)))
                .collect();
            for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
                let dps = match &m.data {
                    Some(pb::Data::Gauge(g)) => &g.data_points,
                    Some(pb::Data::Sum(s)) if s.aggregation_temporality == CUMULATIVE => {
                        &s.data_points
                    }
                    _ => continue,
                };
                for dp in dps {
                    let mut attributes = resource.clone();
                    attributes.extend(
                        dp.attributes
                            .iter()
                            .filter_map(|kv| Some((kv.key.as_str(), pb_value(&kv.value)?))),
                    );
                    points.push(Point {
                        metric: &m.name,
                        time_unix_nano: dp.time_unix_nano,
                        flags: dp.flags,
                        value: match dp.value {
                            Some(pb::NumberValue::AsDouble(d)) => Some(d),
                            Some(pb::NumberValue::AsInt(i)) => Some(i as f64),
                            None => None,
                        },
                        attributes,
                    });
                }
            }
        }
        readings(&self.labels, points, limits, out)
    }
}

/// OTLP/JSON (`otlp_json`).
pub struct OtlpJson {
    pub labels: LabelMap,
}

/// A 64-bit integer as OTLP/JSON writes it (a decimal string), or as a plain JSON number.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonInt<'a> {
    Number(u64),
    Signed(i64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

impl JsonInt<'_> {
    fn as_i128(&self) -> Option<i128> {
        match self {
            JsonInt::Number(n) => Some(*n as i128),
            JsonInt::Signed(n) => Some(*n as i128),
            JsonInt::Text(s) => s.parse().ok(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JRequest<'a> {
    #[serde(borrow, default)]
    resource_metrics: Vec<JResourceMetrics<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JResourceMetrics<'a> {
    #[serde(borrow)]
    resource: Option<JResource<'a>>,
    #[serde(borrow, default)]
    scope_metrics: Vec<JScopeMetrics<'a>>,
}

#[derive(Deserialize)]
struct JResource<'a> {
    #[serde(borrow, default)]
    attributes: Vec<JKeyValue<'a>>,
}

#[derive(Deserialize)]
struct JScopeMetrics<'a> {
    #[serde(borrow, default)]
    metrics: Vec<JMetric<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JMetric<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    gauge: Option<JPoints<'a>>,
    #[serde(borrow)]
    sum: Option<JPoints<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JPoints<'a> {
    #[serde(borrow, default)]
    data_points: Vec<JPoint<'a>>,
    aggregation_temporality: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JPoint<'a> {
    #[serde(borrow, default)]
    attributes: Vec<JKeyValue<'a>>,
    #[serde(borrow)]
    time_unix_nano: Option<JsonInt<'a>>,
    as_double: Option<f64>,
    #[serde(borrow)]
    as_int: Option<JsonInt<'a>>,
    #[serde(default)]
    flags: u32,
}

#[derive(Deserialize)]
struct JKeyValue<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    value: Option<JAnyValue<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JAnyValue<'a> {
    #[serde(borrow)]
    string_value: Option<Cow<'a, str>>,
    bool_value: Option<bool>,
    #[serde(borrow)]
    int_value: Option<JsonInt<'a>>,
    double_value: Option<f64>,
}

impl<'a> JAnyValue<'a> {
    fn text(&self) -> Option<Cow<'a, str>> {
        if let Some(s) = &self.string_value {
            return Some(s.clone());
        }
        if let Some(b) = self.bool_value {
            return Some(Cow::Owned(b.to_string()));
        }
        if let Some(i) = self.int_value.as_ref().and_then(JsonInt::as_i128) {
            return Some(Cow::Owned(i.to_string()));
        }
        self.double_value.map(|d| Cow::Owned(d.to_string()))
    }
}

fn attrs<'a, 'b>(kvs: &'b [JKeyValue<'a>]) -> impl Iterator<Item = (&'b str, Cow<'a, str>)> + 'b {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.as_ref(), kv.value.as_ref()?.text()?)))
}

impl Decoder for OtlpJson {
    fn decode(
        &self,
        payload: &[u8],
        limits: DecodeLimits,
        out: &mut Decoded,
    ) -> Result<(), Rejection> {
        let req: JRequest<'_> = serde_json::from_slice(payload).map_err(json_rejection)?;
        let mut points = Vec::new();
        for rm in &req.resource_metrics {
            let resource: Vec<(&str, Cow<'_, str>)> = rm
                .resource
                .iter()
                .flat_map(|r| attrs(&r.attributes))
                .collect();
            for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
                let dps = match (&m.gauge, &m.sum) {
                    (Some(g), _) => &g.data_points,
                    (None, Some(s)) if s.aggregation_temporality == Some(CUMULATIVE) => {
                        &s.data_points
                    }
                    _ => continue,
                };
                for dp in dps {
                    let time = dp.time_unix_nano.as_ref().and_then(JsonInt::as_i128);
                    let time_unix_nano =
                        time.and_then(|t| u64::try_from(t).ok()).ok_or_else(|| {
                            Rejection::new(
                                RejectReason::BadTimestamp,
                                format!("{}: timeUnixNano missing or invalid", m.name),
                            )
                        })?;
                    let mut attributes = resource.clone();
                    attributes.extend(attrs(&dp.attributes));
                    points.push(Point {
                        metric: &m.name,
                        time_unix_nano,
                        flags: dp.flags,
                        value: dp.as_double.or_else(|| {
                            dp.as_int
                                .as_ref()
                                .and_then(JsonInt::as_i128)
                                .map(|i| i as f64)
                        }),
                        attributes,
                    });
                }
            }
        }
        readings(&self.labels, points, limits, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LabelsConfig;

    fn labels() -> LabelMap {
        LabelMap::new(&LabelsConfig::default()).unwrap()
    }

    /// The shape of opentelemetry-proto's examples/metrics.json (a counter, a gauge, a histogram;
    /// integers as numbers), with DCGM metrics and dcgm-exporter's labels.
    const EXAMPLE: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"dcgm-exporter"}},
        {"key":"Hostname","value":{"stringValue":"node-17"}}]},
      "scopeMetrics":[{"scope":{"name":"otelcol/prometheusreceiver","version":"0.98.0"},
        "metrics":[
          {"name":"DCGM_FI_DEV_GPU_UTIL","unit":"1","gauge":{"dataPoints":[
            {"asDouble":97,"timeUnixNano":1714564830000000000,"attributes":[
              {"key":"gpu","value":{"stringValue":"3"}},
              {"key":"UUID","value":{"stringValue":"GPU-604ac76c"}},
              {"key":"modelName","value":{"stringValue":"NVIDIA H100 80GB HBM3"}},
              {"key":"namespace","value":{"stringValue":"tenant-a"}},
              {"key":"pod","value":{"stringValue":"trainer-1"}}]},
            {"asDouble":0,"timeUnixNano":"1714564830000000000","attributes":[
              {"key":"gpu","value":{"stringValue":"4"}}]}]}},
          {"name":"DCGM_FI_DEV_FB_USED","sum":{"aggregationTemporality":2,"isMonotonic":false,
            "dataPoints":[{"asInt":"1024","timeUnixNano":"1714564830000000000","attributes":[
              {"key":"UUID","value":{"stringValue":"GPU-604ac76c"}},
              {"key":"namespace","value":{"stringValue":"tenant-a"}},
              {"key":"pod","value":{"stringValue":"trainer-1"}}]}]}},
          {"name":"my.histogram","histogram":{"aggregationTemporality":1,"dataPoints":[
            {"timeUnixNano":1544712660300000000,"count":3,"sum":3,"bucketCounts":[1,1,1],"explicitBounds":[1]}]}}
        ]}]}]}"#;

    #[test]
    fn otlp_json_gauges_and_cumulative_sums_become_readings() {
        let mut out = Decoded::default();
        OtlpJson { labels: labels() }
            .decode(EXAMPLE.as_bytes(), DecodeLimits::OPEN, &mut out)
            .unwrap();
        assert_eq!(
            out.readings.len(),
            2,
            "the unattributed GPU and the histogram are skipped"
        );
        let util = &out.readings[0];
        assert_eq!((util.field, util.value), (Field::GpuUtil, 0.97));
        assert_eq!(util.ts_ms, 1_714_564_830_000);
        assert_eq!(
            util.device.node.as_deref(),
            Some("node-17"),
            "from the resource"
        );
        assert_eq!(util.device.job.as_deref(), Some("trainer"));
        let fb = &out.readings[1];
        assert_eq!(
            (fb.field, fb.value),
            (Field::FbUsedBytes, 1024.0 * 1_048_576.0)
        );
    }

    #[test]
    fn otlp_proto_and_json_of_one_request_give_the_same_readings() {
        let kv = |k: &str, v: &str| pb::KeyValue {
            key: k.into(),
            value: Some(pb::AnyValue {
                value: Some(pb::Value::StringValue(v.into())),
            }),
        };
        let req = pb::ExportMetricsServiceRequest {
            resource_metrics: vec![pb::ResourceMetrics {
                resource: Some(pb::Resource {
                    attributes: vec![
                        kv("service.name", "dcgm-exporter"),
                        kv("Hostname", "node-17"),
                    ],
                }),
                scope_metrics: vec![pb::ScopeMetrics {
                    metrics: vec![
                        pb::Metric {
                            name: "DCGM_FI_DEV_GPU_UTIL".into(),
                            data: Some(pb::Data::Gauge(pb::Gauge {
                                data_points: vec![
                                    pb::NumberDataPoint {
                                        attributes: vec![
                                            kv("gpu", "3"),
                                            kv("UUID", "GPU-604ac76c"),
                                            kv("modelName", "NVIDIA H100 80GB HBM3"),
                                            kv("namespace", "tenant-a"),
                                            kv("pod", "trainer-1"),
                                        ],
                                        time_unix_nano: 1_714_564_830_000_000_000,
                                        value: Some(pb::NumberValue::AsDouble(97.0)),
                                        flags: 0,
                                    },
                                    pb::NumberDataPoint {
                                        attributes: vec![kv("gpu", "4")],
                                        time_unix_nano: 1_714_564_830_000_000_000,
                                        value: Some(pb::NumberValue::AsDouble(0.0)),
                                        flags: 0,
                                    },
                                ],
                            })),
                        },
                        pb::Metric {
                            name: "DCGM_FI_DEV_FB_USED".into(),
                            data: Some(pb::Data::Sum(pb::Sum {
                                data_points: vec![pb::NumberDataPoint {
                                    attributes: vec![
                                        kv("UUID", "GPU-604ac76c"),
                                        kv("namespace", "tenant-a"),
                                        kv("pod", "trainer-1"),
                                    ],
                                    time_unix_nano: 1_714_564_830_000_000_000,
                                    value: Some(pb::NumberValue::AsInt(1024)),
                                    flags: 0,
                                }],
                                aggregation_temporality: CUMULATIVE,
                            })),
                        },
                    ],
                }],
            }],
        };
        let mut from_proto = Decoded::default();
        OtlpProto { labels: labels() }
            .decode(&req.encode_to_vec(), DecodeLimits::OPEN, &mut from_proto)
            .unwrap();
        let mut from_json = Decoded::default();
        OtlpJson { labels: labels() }
            .decode(EXAMPLE.as_bytes(), DecodeLimits::OPEN, &mut from_json)
            .unwrap();
        assert_eq!(from_proto.readings, from_json.readings);
    }

    #[test]
    fn invalid_messages_are_rejected_whole() {
        let json = |t: &str| {
            let mut out = Decoded::default();
            let r =
                OtlpJson { labels: labels() }.decode(t.as_bytes(), DecodeLimits::OPEN, &mut out);
            assert!(out.readings.is_empty());
            r.unwrap_err().reason
        };
        assert_eq!(json("{"), RejectReason::MalformedJson);
        assert_eq!(json(r#"{"resourceMetrics":7}"#), RejectReason::WrongType);
        assert_eq!(
            json(&EXAMPLE.replace("1714564830000000000,", "17,")),
            RejectReason::BadTimestamp
        );
        assert_eq!(
            json(&EXAMPLE.replace("\"asDouble\":97", "\"asDouble\":970")),
            RejectReason::OutOfRange
        );
        let mut out = Decoded::default();
        let e = OtlpProto { labels: labels() }
            .decode(b"\xff\xff\xff not protobuf", DecodeLimits::OPEN, &mut out)
            .unwrap_err();
        assert_eq!(e.reason, RejectReason::MalformedProtobuf);
    }
}
