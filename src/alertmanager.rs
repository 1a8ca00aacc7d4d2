//! Optional push of alerts to Alertmanager's API (`POST /api/v2/alerts`), besides the alert topic.
//!
//! Alertmanager wants to be told the whole set of active alerts again and again, each with an
//! `endsAt` in the near future, and an `endsAt` in the past to resolve one (this is what Prometheus
//! does). The state-owning task hands this module the active set after every batch that changed it
//! and every `alertmanager.resend_interval`; the push runs on its own task, so a slow or absent
//! Alertmanager never holds up consumption. Resolutions that could not be delivered are kept
//! (bounded) and sent again with the next push. Labels are the alert's identity (`alertname`,
//! `scope`, `tenant` (absent for an organisation), `job`, `organisation`, `threshold`) plus
//! `severity`; annotations carry the summary and the evidence.

use std::collections::BTreeMap;

use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::alert::{AlertRecord, Status};
use crate::config::AlertmanagerConfig;

/// Resolutions kept for re-delivery at most.
const MAX_PENDING_RESOLVED: usize = 10_000;

/// What the state-owning task reports.
#[derive(Debug)]
pub struct Update {
    /// Every active alert now.
    pub active: Vec<AlertRecord>,
    /// Alerts resolved since the previous update.
    pub resolved: Vec<AlertRecord>,
}

/// The sending side, held by the state-owning task.
#[derive(Clone)]
pub struct Pusher {
    tx: mpsc::Sender<Update>,
}

impl Pusher {
    /// Hands an update over without waiting; when the push task is behind, the update is dropped
    /// (the next one carries the whole active set again) unless it carries resolutions.
    pub async fn send(&self, update: Update) {
        if update.resolved.is_empty() {
            let _ = self.tx.try_send(update);
        } else {
            let _ = self.tx.send(update).await;
        }
    }
}

/// Starts the push task; `None` when no Alertmanager is configured.
pub fn start(cfg: &AlertmanagerConfig) -> Option<Pusher> {
    if cfg.urls.is_empty() {
        return None;
    }
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(run(cfg.clone(), rx));
    Some(Pusher { tx })
}

async fn run(cfg: AlertmanagerConfig, mut rx: mpsc::Receiver<Update>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(cfg.timeout.0))
        .build()
        .into();
    let mut resolved: BTreeMap<String, AlertRecord> = BTreeMap::new();
    while let Some(mut update) = rx.recv().await {
        // Only the newest active set matters.
        while let Ok(next) = rx.try_recv() {
            update.active = next.active;
            update.resolved.extend(next.resolved);
        }
        for r in update.resolved {
            if resolved.len() < MAX_PENDING_RESOLVED {
                resolved.insert(r.dedup_key.clone(), r);
            }
        }
        let now = chrono::Utc::now();
        let valid_until = now
            + chrono::Duration::from_std(cfg.resend_interval.0 * 4)
                .unwrap_or(chrono::Duration::hours(1));
        let mut body: Vec<serde_json::Value> = update
            .active
            .iter()
            .filter(|a| !resolved.contains_key(&a.dedup_key))
            .map(|a| alert(a, &valid_until.to_rfc3339(), &cfg.generator_url))
            .collect();
        body.extend(
            resolved
                .values()
                .map(|a| alert(a, &now.to_rfc3339(), &cfg.generator_url)),
        );
        if body.is_empty() {
            continue;
        }
        let (agent, urls, body) = (
            agent.clone(),
            cfg.urls.clone(),
            serde_json::Value::Array(body),
        );
        let delivered = tokio::task::spawn_blocking(move || {
            urls.iter()
                .map(|base| {
                    let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
                    match agent.post(&url).send_json(&body) {
                        Ok(_) => true,
                        Err(e) => {
                            warn!(error = %e, url, "alertmanager push failed; retried with the next push");
                            false
                        }
                    }
                })
                // Every URL is tried, whatever the earlier ones answered.
                .collect::<Vec<bool>>()
                .into_iter()
                .all(|ok| ok)
        })
        .await
        .unwrap_or(false);
        if delivered {
            debug!(resolved = resolved.len(), "alerts pushed to alertmanager");
            resolved.clear();
        }
    }
}

/// One alert in Alertmanager's API shape, valid until `ends_at`.
fn alert(a: &AlertRecord, ends_at: &str, generator_url: &str) -> serde_json::Value {
    let mut labels = json!({
        "alertname": a.alertname.as_str(),
        "scope": a.scope.as_str(),
        "severity": a.severity,
        "source": "trainspotter",
    });
    if !a.tenant.is_empty() {
        labels["tenant"] = json!(a.tenant);
    }
    if let Some(org) = &a.organisation {
        labels["organisation"] = json!(org);
    }
    if let Some(job) = &a.job {
        labels["job"] = json!(job);
    }
    if let Some(t) = a.threshold {
        labels["threshold"] = json!(format!("{t:e}"));
    }
    let mut annotations = json!({
        "summary": a.summary,
        "evidence": a.evidence.to_json_string(),
        "estimated_flop": format!("{:e}", a.estimated_flop.central),
        "dedup_key": a.dedup_key,
    });
    if let Some(eta) = &a.eta {
        annotations["eta"] = json!(eta);
    }
    if a.status == Status::Resolved {
        if let Some(e) = &a.ends_at {
            annotations["resolved_at_event_time"] = json!(e);
        }
    }
    let mut v = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": a.starts_at,
        "endsAt": ends_at,
    });
    if !generator_url.is_empty() {
        v["generatorURL"] = json!(generator_url);
    }
    v
}
