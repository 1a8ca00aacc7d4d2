//! What an alert condition rests on, kept as values and rendered to JSON only when a record is
//! made.
//!
//! The engine restates every held condition at every evaluation, so that a re-sent or resolved
//! record, and the active set an Alertmanager sink is told, show the evidence of the latest
//! evaluation. Most restatements are never rendered: a training verdict's evidence is therefore
//! held as the numbers and names it is made of ([`TrainingEvidence`]), and [`Evidence::to_json`]
//! renders it when a record needs it. Building the JSON tree at every evaluation instead cost more
//! than the evaluation itself once thousands of jobs were suspected.

use std::sync::Arc;

use crate::decode::format_rfc3339_ms;
use crate::detect::{Signal, Verdict};

/// The evidence of one condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Evidence {
    /// Already JSON: the compute conditions' evidence, and any evidence restored from a
    /// checkpoint.
    Json(serde_json::Value),
    /// A training verdict's evidence, rendered by [`Evidence::to_json`].
    Training(Box<TrainingEvidence>),
}

/// A training verdict and what it was computed from: the same in alerts and `explain`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingEvidence {
    pub verdict: Verdict,
    pub score_threshold: f64,
    /// The detection window the features cover, epoch ms.
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// The activity signals present in the window.
    pub signals_available: Vec<&'static str>,
    /// Nodes with a device reporting lately, and the first 16 of them in name order.
    pub nodes: usize,
    pub node_sample: Vec<Arc<str>>,
    pub devices_reporting: usize,
    pub accelerator_models: Vec<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Members added to the rendered object (`group`, `tenant_context`), by name.
    pub extra: Vec<(&'static str, serde_json::Value)>,
}

impl Evidence {
    /// The JSON object an alert record carries.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Evidence::Json(v) => v.clone(),
            Evidence::Training(t) => t.to_json(),
        }
    }

    /// Adds (or replaces) the member `key` of the rendered object; on evidence that is not an
    /// object, nothing.
    pub fn insert(&mut self, key: &'static str, value: serde_json::Value) {
        match self {
            Evidence::Json(v) => {
                if let Some(o) = v.as_object_mut() {
                    o.insert(key.into(), value);
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
    pub fn to_json(&self) -> serde_json::Value {
        let v = &self.verdict;
        let mut out = serde_json::json!({
            "score": v.score,
            "score_threshold": self.score_threshold,
            "gates_passed": v.gates_passed,
            "window": {
                "start": format_rfc3339_ms(self.window_start_ms),
                "end": format_rfc3339_ms(self.window_end_ms),
            },
            "features": v.features,
            "reasons": v.reasons(),
            "activity_signal": v.signal.map(Signal::name),
            "signals_available": self.signals_available,
            "nodes": self.nodes,
            "node_sample": self.node_sample.iter().map(|n| n.as_ref()).collect::<Vec<_>>(),
            "devices_reporting": self.devices_reporting,
            "accelerator_models": self.accelerator_models,
            "first_seen": format_rfc3339_ms(self.first_seen_ms),
            "last_seen": format_rfc3339_ms(self.last_seen_ms),
        });
        if let Some(o) = out.as_object_mut() {
            for (k, v) in &self.extra {
                o.insert((*k).into(), v.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DetectionConfig;

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
            signals_available: vec!["tensor_active"],
            nodes: 20,
            node_sample: (0..16).map(|i| Arc::from(format!("node-{i:02}"))).collect(),
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
}
