//! What an alert condition rests on, kept as values and rendered to JSON only when a record is
//! serialized.
//!
//! The engine restates every held condition at every evaluation, so that a re-sent or resolved
//! record, and the active set an Alertmanager sink is told, show the evidence of the latest
//! evaluation. Most restatements are never rendered: a training verdict's evidence is therefore
//! held as the numbers and names it is made of ([`TrainingEvidence`]). Building the JSON tree at
//! every evaluation instead took about 40% of the evaluation's time with 20,000 jobs suspected
//! (BENCHMARKS.md). An alert record holds the evidence as values too, and [`render`] serializes
//! it straight to the JSON object when the record is written ([`Evidence::to_json`] builds the
//! tree, for whoever needs one).
//!
//! Checkpoints store evidence as it is held: JSON as text (binary formats cannot carry a
//! self-describing value), a training verdict as its values, its features' names and meanings
//! given by their position in [`crate::detect::FEATURES`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::decode::format_rfc3339_ms;
use crate::detect::{FeatureScore, Signal, Verdict};
use crate::name::Name;

/// The evidence of one condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Evidence {
    /// Already JSON: the compute conditions' evidence.
    Json(#[serde(with = "json_text")] serde_json::Value),
    /// A training verdict's evidence, rendered by [`Evidence::to_json`].
    Training(Box<TrainingEvidence>),
}

/// A training verdict and what it was computed from: the same in alerts and `explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingEvidence {
    #[serde(with = "stored_verdict")]
    pub verdict: Verdict,
    pub score_threshold: f64,
    /// The detection window the features cover, epoch ms.
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// The activity signals present in the window, in name order.
    pub signals_available: Vec<Signal>,
    /// Nodes with a device reporting lately, and the first 16 of them in name order.
    pub nodes: usize,
    pub node_sample: Vec<Name>,
    pub devices_reporting: usize,
    pub accelerator_models: Vec<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Members added to the rendered object, by name: one of [`EXTRA_MEMBERS`].
    #[serde(with = "stored_extra")]
    /// Shared: the same tenant context is in every condition of the tenant.
    pub extra: Vec<(&'static str, Arc<serde_json::Value>)>,
}

/// The members [`Evidence::insert`] adds to a training verdict's evidence.
pub const EXTRA_MEMBERS: [&str; 2] = ["group", "tenant_context"];

impl Evidence {
    /// The JSON object an alert record carries.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Evidence::Json(v) => v.clone(),
            Evidence::Training(t) => t.to_json(),
        }
    }

    /// The JSON object an alert record carries, as text, serialized straight from the values.
    pub fn to_json_string(&self) -> String {
        match self {
            Evidence::Json(v) => v.to_string(),
            Evidence::Training(t) => {
                serde_json::to_string(&Rendered(t)).expect("evidence serializes to JSON")
            }
        }
    }

    /// Adds (or replaces) the member `key` of the rendered object; on evidence that is not an
    /// object, nothing. `key` is one of [`EXTRA_MEMBERS`], the names a checkpoint can restore.
    pub fn insert(&mut self, key: &'static str, value: impl Into<Arc<serde_json::Value>>) {
        let value = value.into();
        debug_assert!(
            EXTRA_MEMBERS.contains(&key),
            "{key} is not in EXTRA_MEMBERS"
        );
        match self {
            Evidence::Json(v) => {
                if let Some(o) = v.as_object_mut() {
                    o.insert(key.into(), Arc::unwrap_or_clone(value));
                }
            }
            Evidence::Training(t) => match t.extra.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => *v = value,
                None => t.extra.push((key, value)),
            },
        }
    }
}

impl From<serde_json::Value> for Evidence {
    fn from(v: serde_json::Value) -> Self {
        Evidence::Json(v)
    }
}

impl TrainingEvidence {
    /// The JSON object alerts carry (what [`Rendered`] serializes).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(Rendered(self)).expect("evidence serializes to JSON")
    }
}

/// Serializes `evidence` as the JSON object an alert record carries (for `serialize_with`): JSON
/// evidence as it is, a training verdict's through [`Rendered`].
pub fn render<S: serde::Serializer>(evidence: &Evidence, s: S) -> Result<S::Ok, S::Error> {
    match evidence {
        Evidence::Json(v) => v.serialize(s),
        Evidence::Training(t) => Rendered(t).serialize(s),
    }
}

/// A training verdict's evidence serialized as the JSON object alerts carry, straight from its
/// values, its members (and each feature's) in name order as a JSON tree's are. A record used to
/// copy the evidence into such a tree, about 10 KB of small allocations per alert, so that an
/// evaluation raising thousands of alerts at once spent most of its time having fresh pages
/// zeroed (BENCHMARKS.md).
pub struct Rendered<'a>(pub &'a TrainingEvidence);

/// One member's value of [`Rendered`].
enum Member<'a> {
    Number(f64),
    Count(usize),
    Flag(bool),
    Name(Option<&'a str>),
    Names(Vec<&'a str>),
    Texts(Vec<String>),
    Text(String),
    Features(&'a [FeatureScore]),
    Window { start: String, end: String },
    Json(&'a serde_json::Value),
}

impl Serialize for Member<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Member::Number(x) => x.serialize(s),
            Member::Count(n) => n.serialize(s),
            Member::Flag(b) => b.serialize(s),
            Member::Name(n) => n.serialize(s),
            Member::Names(v) => v.serialize(s),
            Member::Texts(v) => v.serialize(s),
            Member::Text(t) => t.serialize(s),
            Member::Features(fs) => {
                let mut seq = s.serialize_seq(Some(fs.len()))?;
                for f in fs.iter() {
                    seq.serialize_element(&SortedFeature(f))?;
                }
                seq.end()
            }
            Member::Window { start, end } => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("end", end)?;
                map.serialize_entry("start", start)?;
                map.end()
            }
            Member::Json(v) => v.serialize(s),
        }
    }
}

/// A feature's members in name order.
struct SortedFeature<'a>(&'a FeatureScore);

impl Serialize for SortedFeature<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let f = self.0;
        let mut st = s.serialize_struct("FeatureScore", 9)?;
        st.serialize_field("fired", &f.fired)?;
        st.serialize_field("high", &f.high)?;
        st.serialize_field("low", &f.low)?;
        st.serialize_field("meaning", f.meaning)?;
        st.serialize_field("name", f.name)?;
        st.serialize_field("required", &f.required)?;
        st.serialize_field("score", &f.score)?;
        st.serialize_field("value", &f.value)?;
        st.serialize_field("weight", &f.weight)?;
        st.end()
    }
}

impl Serialize for Rendered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let t = self.0;
        let v = &t.verdict;
        let mut members: Vec<(&str, Member<'_>)> = vec![
            ("score", Member::Number(v.score)),
            ("score_threshold", Member::Number(t.score_threshold)),
            ("gates_passed", Member::Flag(v.gates_passed)),
            (
                "window",
                Member::Window {
                    start: format_rfc3339_ms(t.window_start_ms),
                    end: format_rfc3339_ms(t.window_end_ms),
                },
            ),
            ("features", Member::Features(&v.features)),
            ("reasons", Member::Texts(v.reasons())),
            ("activity_signal", Member::Name(v.signal.map(Signal::name))),
            (
                "signals_available",
                Member::Names(t.signals_available.iter().map(|s| s.name()).collect()),
            ),
            ("nodes", Member::Count(t.nodes)),
            (
                "node_sample",
                Member::Names(t.node_sample.iter().map(|n| n.as_ref()).collect()),
            ),
            ("devices_reporting", Member::Count(t.devices_reporting)),
            (
                "accelerator_models",
                Member::Names(t.accelerator_models.iter().map(String::as_str).collect()),
            ),
            (
                "first_seen",
                Member::Text(format_rfc3339_ms(t.first_seen_ms)),
            ),
            ("last_seen", Member::Text(format_rfc3339_ms(t.last_seen_ms))),
        ];
        for (key, value) in &t.extra {
            // An added member replaces one of the same name.
            members.retain(|(k, _)| k != key);
            members.push((key, Member::Json(value)));
        }
        members.sort_by_key(|(k, _)| *k);
        let mut map = s.serialize_map(Some(members.len()))?;
        for (k, m) in &members {
            map.serialize_entry(k, m)?;
        }
        map.end()
    }
}

/// JSON as text.
mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// A verdict as its values; each feature's name and meaning come from its position.
mod stored_verdict {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::detect::{FeatureScore, Signal, Verdict, FEATURES};

    /// value, low, high, score, weight, fired, required.
    type Feature = (Option<f64>, f64, f64, Option<f64>, f64, bool, bool);
    type Stored = (f64, Option<Signal>, bool, [Feature; 7]);

    pub fn serialize<S: Serializer>(v: &Verdict, s: S) -> Result<S::Ok, S::Error> {
        let features = v.features.each_ref().map(|f| {
            (
                f.value, f.low, f.high, f.score, f.weight, f.fired, f.required,
            )
        });
        (v.score, v.signal, v.gates_passed, features).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Verdict, D::Error> {
        let (score, signal, gates_passed, features) = Stored::deserialize(d)?;
        let features = std::array::from_fn(|i| {
            let (value, low, high, score, weight, fired, required) = features[i];
            let (name, meaning) = FEATURES[i];
            FeatureScore {
                name,
                meaning,
                value,
                low,
                high,
                score,
                weight,
                fired,
                required,
            }
        });
        Ok(Verdict {
            score,
            signal,
            features,
            gates_passed,
        })
    }
}

/// Added members by name, their values as JSON text.
mod stored_extra {
    use std::sync::Arc;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::EXTRA_MEMBERS;

    pub fn serialize<S: Serializer>(
        extra: &[(&'static str, Arc<serde_json::Value>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let stored: Vec<(&str, String)> = extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
        stored.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(&'static str, Arc<serde_json::Value>)>, D::Error> {
        let stored = Vec::<(String, String)>::deserialize(d)?;
        stored
            .into_iter()
            .map(|(k, v)| {
                let key = EXTRA_MEMBERS
                    .into_iter()
                    .find(|m| *m == k)
                    .ok_or_else(|| D::Error::custom(format!("unknown evidence member {k:?}")))?;
                let value = serde_json::from_str(&v).map_err(D::Error::custom)?;
                Ok((key, Arc::new(value)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DetectionConfig;
    use bincode::Options as _;

    fn training() -> TrainingEvidence {
        let detection = DetectionConfig::default();
        let verdict = crate::detect::score(
            &crate::detect::features(&[], &[], 3600.0, 0.0, &[]),
            &detection,
        );
        TrainingEvidence {
            verdict,
            score_threshold: 0.7,
            window_start_ms: 1_700_000_000_000,
            window_end_ms: 1_700_003_600_000,
            signals_available: vec![Signal::SmActive, Signal::TensorActive],
            nodes: 20,
            node_sample: (0..16)
                .map(|i| Name::from(format!("node-{i:02}")))
                .collect(),
            devices_reporting: 160,
            accelerator_models: vec!["H100-SXM5-80GB".into()],
            first_seen_ms: 1_699_990_000_000,
            last_seen_ms: 1_700_003_599_000,
            extra: Vec::new(),
        }
    }

    #[test]
    fn training_evidence_renders_every_member_with_rfc3339_times() {
        let json = Evidence::Training(Box::new(training())).to_json();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "accelerator_models",
                "activity_signal",
                "devices_reporting",
                "features",
                "first_seen",
                "gates_passed",
                "last_seen",
                "node_sample",
                "nodes",
                "reasons",
                "score",
                "score_threshold",
                "signals_available",
                "window"
            ]
        );
        assert_eq!(json["window"]["start"], "2023-11-14T22:13:20.000Z");
        assert_eq!(
            json["signals_available"],
            serde_json::json!(["sm_active", "tensor_active"])
        );
        assert_eq!(json["node_sample"][15], "node-15");
        assert_eq!(json["nodes"], 20);
        assert_eq!(
            json["reasons"].as_array().unwrap().len(),
            json["features"].as_array().unwrap().len()
        );
    }

    #[test]
    fn inserted_members_are_rendered_and_replace_one_of_the_same_name() {
        let mut e = Evidence::Training(Box::new(training()));
        e.insert("tenant_context", serde_json::json!({"organisation": "a"}));
        e.insert("tenant_context", serde_json::json!({"organisation": "b"}));
        e.insert("group", serde_json::json!({"jobs": []}));
        let json = e.to_json();
        assert_eq!(json["tenant_context"]["organisation"], "b");
        assert_eq!(json["group"]["jobs"], serde_json::json!([]));

        let mut j = Evidence::from(serde_json::json!({"threshold": 1e25}));
        j.insert("tenant_context", serde_json::json!({}));
        assert_eq!(j.to_json()["tenant_context"], serde_json::json!({}));
    }

    /// The evidence serialized straight from its values is, byte for byte, the text of the JSON
    /// tree built member by member (what records carried before), added members included.
    #[test]
    fn rendered_straight_is_the_text_of_the_json_tree() {
        let mut t = training();
        t.extra = vec![
            (
                "tenant_context",
                Arc::new(serde_json::json!({"organisation": "a", "labels": {}})),
            ),
            (
                "group",
                Arc::new(serde_json::json!({"jobs": [{"job": "j1"}, {"job": "j2"}]})),
            ),
        ];
        let v = &t.verdict;
        let mut tree = serde_json::json!({
            "score": v.score,
            "score_threshold": t.score_threshold,
            "gates_passed": v.gates_passed,
            "window": {
                "start": format_rfc3339_ms(t.window_start_ms),
                "end": format_rfc3339_ms(t.window_end_ms),
            },
            "features": v.features,
            "reasons": v.reasons(),
            "activity_signal": v.signal.map(Signal::name),
            "signals_available": t.signals_available.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "nodes": t.nodes,
            "node_sample": t.node_sample.iter().map(|n| n.as_ref()).collect::<Vec<_>>(),
            "devices_reporting": t.devices_reporting,
            "accelerator_models": t.accelerator_models,
            "first_seen": format_rfc3339_ms(t.first_seen_ms),
            "last_seen": format_rfc3339_ms(t.last_seen_ms),
        });
        for (k, value) in &t.extra {
            tree.as_object_mut()
                .unwrap()
                .insert((*k).into(), (**value).clone());
        }
        let e = Evidence::Training(Box::new(t));
        assert_eq!(e.to_json_string(), tree.to_string());
        assert_eq!(e.to_json(), tree);
    }

    fn round_trip(e: &Evidence) -> Evidence {
        let bytes = crate::checkpoint::opts().serialize(e).unwrap();
        crate::checkpoint::opts().deserialize(&bytes).unwrap()
    }

    #[test]
    fn evidence_survives_the_checkpoint_encoding_and_renders_the_same() {
        let mut t = training();
        t.verdict.signal = Some(Signal::TensorActive);
        let mut e = Evidence::Training(Box::new(t));
        e.insert(
            "tenant_context",
            serde_json::json!({"organisation": "a", "labels": {}}),
        );
        e.insert("group", serde_json::json!({"jobs": [{"job": "j1"}]}));
        let back = round_trip(&e);
        assert_eq!(back, e);
        assert_eq!(back.to_json().to_string(), e.to_json().to_string());

        let j = Evidence::from(serde_json::json!({"lifetime_flop": {"central": 1.5e25}}));
        assert_eq!(round_trip(&j), j);
    }
}
