//! Alerts: conditions in, lifecycle records out (firing, re-sent while active, resolved).
//!
//! The engine states, at each evaluation, which conditions hold for one entity (a job or a tenant);
//! [`AlertBook`] turns that into transitions the way Alertmanager does: a new condition fires, a held
//! condition is re-sent every `resend` of event time, a condition that no longer holds resolves with
//! `endsAt`. Identity is the dedup key (alertname + tenant + job + threshold), stable across restarts.
//! [`AlertRecord::to_cloudevent`] renders the Kafka record (CloudEvents 1.0, structured JSON).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::decode::format_rfc3339_ms;
use crate::estimate::FlopEstimate;
use crate::evidence::Evidence;
use crate::name::Name;

/// Alert names are part of the public interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertName {
    TrainingSuspected,
    ComputeThresholdProjected,
    ComputeThresholdCrossed,
}

impl AlertName {
    pub const ALL: [AlertName; 3] = [
        AlertName::TrainingSuspected,
        AlertName::ComputeThresholdProjected,
        AlertName::ComputeThresholdCrossed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertName::TrainingSuspected => "TrainingSuspected",
            AlertName::ComputeThresholdProjected => "ComputeThresholdProjected",
            AlertName::ComputeThresholdCrossed => "ComputeThresholdCrossed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// The entity an alert is about: one job of a tenant, a tenant, or an organisation (a group of
/// tenants in the tenant registry).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entity {
    /// The tenant of a job or tenant entity; empty for an organisation.
    pub tenant: Name,
    pub job: Option<Name>,
    /// The organisation of an organisation entity; `None` otherwise.
    pub org: Option<Name>,
}

/// What kind of entity an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Job,
    Tenant,
    Organisation,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Job => "job",
            Scope::Tenant => "tenant",
            Scope::Organisation => "organisation",
        }
    }
}

impl Entity {
    pub fn job(tenant: Name, job: Name) -> Entity {
        Entity {
            tenant,
            job: Some(job),
            org: None,
        }
    }

    pub fn tenant(tenant: Name) -> Entity {
        Entity {
            tenant,
            job: None,
            org: None,
        }
    }

    pub fn organisation(org: Name) -> Entity {
        Entity {
            tenant: Name::new(""),
            job: None,
            org: Some(org),
        }
    }

    pub fn scope(&self) -> Scope {
        match (&self.org, &self.job) {
            (Some(_), _) => Scope::Organisation,
            (None, Some(_)) => Scope::Job,
            (None, None) => Scope::Tenant,
        }
    }
}

/// A condition that holds for an entity at one evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Condition {
    pub name: AlertName,
    pub threshold: Option<f64>,
    pub severity: Severity,
    pub summary: String,
    pub evidence: Evidence,
    pub estimated_flop: FlopEstimate,
    pub eta_ms: Option<i64>,
    /// The organisation the entity belongs to (from the tenant registry), if any.
    pub organisation: Option<String>,
}

impl Condition {
    fn same_identity(&self, other: &Condition) -> bool {
        self.name == other.name && self.threshold == other.threshold
    }
}

/// Builds the dedup key: `alertname|tenant|job|threshold`, and `|organisation` appended for an
/// organisation entity, with `\` and `|` escaped in the parts.
pub fn dedup_key(name: AlertName, entity: &Entity, threshold: Option<f64>) -> String {
    fn esc(s: &str) -> String {
        s.replace('\\', "\\\\").replace('|', "\\|")
    }
    let mut key = format!(
        "{}|{}|{}|{}",
        name.as_str(),
        esc(&entity.tenant),
        entity.job.as_deref().map(esc).unwrap_or_default(),
        threshold.map(|t| format!("{t:e}")).unwrap_or_default()
    );
    if let Some(org) = &entity.org {
        key.push('|');
        key.push_str(&esc(org));
    }
    key
}

/// One alert transition or re-send: the `data` of the CloudEvent and one line of `replay` output.
/// Its members are serialized in name order (as a JSON object with sorted keys would be).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertRecord {
    pub alertname: AlertName,
    #[serde(rename = "dedup_key")]
    pub dedup_key: String,
    pub ends_at: Option<String>,
    #[serde(rename = "estimated_flop", serialize_with = "flop_by_name")]
    pub estimated_flop: FlopEstimate,
    pub eta: Option<String>,
    /// What the condition rests on, as held; serialized as the JSON object
    /// ([`crate::evidence::render`]).
    #[serde(serialize_with = "crate::evidence::render")]
    pub evidence: Evidence,
    pub job: Option<String>,
    /// The organisation alerted on, or the organisation of the tenant.
    pub organisation: Option<String>,
    pub scope: Scope,
    pub severity: Severity,
    pub starts_at: String,
    pub status: Status,
    pub summary: String,
    /// The tenant (empty for an organisation alert).
    pub tenant: String,
    pub threshold: Option<f64>,
    /// Event time of this record (evaluation time), epoch ms.
    #[serde(skip)]
    pub time_ms: i64,
}

/// A FLOP estimate's members in name order.
fn flop_by_name<S: serde::Serializer>(f: &FlopEstimate, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("FlopEstimate", 3)?;
    st.serialize_field("central", &f.central)?;
    st.serialize_field("high", &f.high)?;
    st.serialize_field("low", &f.low)?;
    st.end()
}

/// The CloudEvents 1.0 structured-mode envelope of a record, its members in name order.
#[derive(Serialize)]
struct CloudEvent<'a> {
    data: &'a AlertRecord,
    datacontenttype: &'static str,
    id: String,
    source: &'a str,
    specversion: &'static str,
    subject: &'a str,
    time: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl AlertRecord {
    /// The CloudEvents 1.0 structured-mode JSON envelope for the alert topic, serialized in one
    /// pass (no intermediate JSON tree).
    pub fn to_cloudevent(&self, source: &str) -> String {
        serde_json::to_string(&CloudEvent {
            data: self,
            datacontenttype: "application/json",
            id: format!(
                "{}|{}|{}",
                self.dedup_key,
                self.status.as_str(),
                self.time_ms
            ),
            source,
            specversion: "1.0",
            subject: &self.dedup_key,
            time: format_rfc3339_ms(self.time_ms),
            kind: "io.trainspotter.alert",
        })
        .expect("an alert record serializes")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Active {
    condition: Condition,
    starts_ms: i64,
    last_sent_ms: i64,
}

/// Active alerts per entity, and the lifecycle rules. The active alerts are state (checkpointed, so
/// an alert neither disappears nor fires again as new after a restart); the re-send interval is
/// configuration.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AlertBook {
    active: HashMap<Entity, Vec<Active>, ahash::RandomState>,
    #[serde(skip)]
    resend_ms: i64,
}

impl AlertBook {
    pub fn new(resend_ms: i64) -> Self {
        AlertBook {
            active: HashMap::default(),
            resend_ms,
        }
    }

    /// Applies the configured re-send interval (after restoring from a checkpoint).
    pub fn set_resend_interval(&mut self, resend_ms: i64) {
        self.resend_ms = resend_ms;
    }

    fn record(entity: &Entity, a: &Active, status: Status, now_ms: i64) -> AlertRecord {
        let c = &a.condition;
        AlertRecord {
            status,
            alertname: c.name,
            severity: c.severity,
            scope: entity.scope(),
            tenant: entity.tenant.to_string(),
            job: entity.job.as_deref().map(str::to_string),
            organisation: entity
                .org
                .as_deref()
                .map(str::to_string)
                .or_else(|| c.organisation.clone()),
            starts_at: format_rfc3339_ms(a.starts_ms),
            ends_at: (status == Status::Resolved).then(|| format_rfc3339_ms(now_ms)),
            summary: c.summary.clone(),
            evidence: c.evidence.clone(),
            estimated_flop: c.estimated_flop,
            threshold: c.threshold,
            eta: c.eta_ms.map(format_rfc3339_ms),
            dedup_key: dedup_key(c.name, entity, c.threshold),
            time_ms: now_ms,
        }
    }

    /// States the conditions that hold for `entity` now; appends the resulting transitions.
    pub fn reconcile(
        &mut self,
        entity: &Entity,
        conditions: Vec<Condition>,
        now_ms: i64,
        out: &mut Vec<AlertRecord>,
    ) {
        if conditions.is_empty() && self.active.is_empty() {
            return;
        }
        let mut held = self.active.remove(entity).unwrap_or_default();
        let mut next = Vec::with_capacity(conditions.len());
        for c in conditions {
            match held.iter().position(|a| a.condition.same_identity(&c)) {
                Some(i) => {
                    let mut a = held.swap_remove(i);
                    a.condition = c;
                    next.push(a);
                }
                None => {
                    let a = Active {
                        condition: c,
                        starts_ms: now_ms,
                        last_sent_ms: now_ms,
                    };
                    out.push(Self::record(entity, &a, Status::Firing, now_ms));
                    next.push(a);
                }
            }
        }
        for a in held {
            out.push(Self::record(entity, &a, Status::Resolved, now_ms));
        }
        if !next.is_empty() {
            self.active.insert(entity.clone(), next);
        }
    }

    /// Re-sends every active alert last sent at least `resend` ago.
    pub fn resend_due(&mut self, now_ms: i64, out: &mut Vec<AlertRecord>) {
        let mut due = Vec::new();
        for (entity, list) in self.active.iter_mut() {
            for a in list.iter_mut() {
                if now_ms - a.last_sent_ms >= self.resend_ms {
                    a.last_sent_ms = now_ms;
                    due.push(Self::record(entity, a, Status::Firing, now_ms));
                }
            }
        }
        // Deterministic output order regardless of hash map order.
        due.sort_by(|a, b| a.dedup_key.cmp(&b.dedup_key));
        out.extend(due);
    }

    /// Every active alert as a `firing` record at `now_ms` (for sinks that are told the whole
    /// active set, such as Alertmanager), in dedup-key order. Nothing is marked as sent.
    pub fn active_records(&self, now_ms: i64) -> Vec<AlertRecord> {
        let mut all: Vec<AlertRecord> = self
            .active
            .iter()
            .flat_map(|(e, list)| {
                list.iter()
                    .map(move |a| Self::record(e, a, Status::Firing, now_ms))
            })
            .collect();
        all.sort_by(|a, b| a.dedup_key.cmp(&b.dedup_key));
        all
    }

    pub fn entities(&self) -> Vec<Entity> {
        self.active.keys().cloned().collect()
    }

    pub fn is_active(&self, entity: &Entity, name: AlertName) -> bool {
        self.active
            .get(entity)
            .is_some_and(|l| l.iter().any(|a| a.condition.name == name))
    }

    /// Active alerts by name.
    pub fn counts(&self) -> [(AlertName, usize); 3] {
        AlertName::ALL.map(|n| {
            (
                n,
                self.active
                    .values()
                    .flatten()
                    .filter(|a| a.condition.name == n)
                    .count(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity() -> Entity {
        Entity::job("t|1".into(), "j".into())
    }

    fn cond(name: AlertName, threshold: Option<f64>) -> Condition {
        Condition {
            name,
            threshold,
            severity: Severity::Warning,
            summary: "s".into(),
            evidence: serde_json::json!({}).into(),
            estimated_flop: FlopEstimate::default(),
            eta_ms: None,
            organisation: None,
        }
    }

    #[test]
    fn fires_once_resends_while_active_and_resolves_with_ends_at() {
        let mut book = AlertBook::new(300_000);
        let mut out = Vec::new();
        let e = entity();
        book.reconcile(
            &e,
            vec![cond(AlertName::TrainingSuspected, None)],
            0,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Firing);
        book.reconcile(
            &e,
            vec![cond(AlertName::TrainingSuspected, None)],
            60_000,
            &mut out,
        );
        assert_eq!(out.len(), 1, "a held condition does not fire again");
        book.resend_due(299_999, &mut out);
        assert_eq!(out.len(), 1);
        book.resend_due(300_000, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1].starts_at, out[0].starts_at,
            "a re-send keeps startsAt"
        );
        book.reconcile(&e, vec![], 400_000, &mut out);
        assert_eq!(out[2].status, Status::Resolved);
        assert_eq!(out[2].ends_at.as_deref(), Some("1970-01-01T00:06:40.000Z"));
        assert!(!book.is_active(&e, AlertName::TrainingSuspected));
    }

    #[test]
    fn thresholds_are_separate_identities() {
        let mut book = AlertBook::new(300_000);
        let mut out = Vec::new();
        let e = entity();
        book.reconcile(
            &e,
            vec![cond(AlertName::ComputeThresholdProjected, Some(1e23))],
            0,
            &mut out,
        );
        book.reconcile(
            &e,
            vec![
                cond(AlertName::ComputeThresholdCrossed, Some(1e23)),
                cond(AlertName::ComputeThresholdProjected, Some(1e25)),
            ],
            60_000,
            &mut out,
        );
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.status, r.dedup_key.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Status::Firing, "ComputeThresholdProjected|t\\|1|j|1e23"),
                (Status::Firing, "ComputeThresholdCrossed|t\\|1|j|1e23"),
                (Status::Firing, "ComputeThresholdProjected|t\\|1|j|1e25"),
                (Status::Resolved, "ComputeThresholdProjected|t\\|1|j|1e23"),
            ]
        );
    }

    #[test]
    fn organisation_alerts_have_their_own_identity() {
        let org = Entity::organisation("acme".into());
        let tenant = Entity::tenant("acme".into());
        assert_eq!(org.scope(), Scope::Organisation);
        assert_eq!(tenant.scope(), Scope::Tenant);
        let a = dedup_key(AlertName::TrainingSuspected, &org, None);
        let b = dedup_key(AlertName::TrainingSuspected, &tenant, None);
        assert_eq!(a, "TrainingSuspected||||acme");
        assert_eq!(b, "TrainingSuspected|acme||");
        let mut book = AlertBook::new(300_000);
        let mut out = Vec::new();
        book.reconcile(
            &org,
            vec![cond(AlertName::TrainingSuspected, None)],
            0,
            &mut out,
        );
        assert_eq!(out[0].scope, Scope::Organisation);
        assert_eq!(out[0].organisation.as_deref(), Some("acme"));
        assert_eq!(out[0].tenant, "");
        assert!(!book.is_active(&tenant, AlertName::TrainingSuspected));
    }

    #[test]
    fn cloudevent_envelope_is_structured_mode() {
        let mut book = AlertBook::new(300_000);
        let mut out = Vec::new();
        book.reconcile(
            &entity(),
            vec![cond(AlertName::TrainingSuspected, None)],
            1_714_564_800_000,
            &mut out,
        );
        let ce: serde_json::Value =
            serde_json::from_str(&out[0].to_cloudevent("/trainspotter")).unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "io.trainspotter.alert");
        assert_eq!(ce["time"], "2024-05-01T12:00:00.000Z");
        assert_eq!(ce["data"]["status"], "firing");
        assert_eq!(ce["data"]["alertname"], "TrainingSuspected");
        assert_eq!(ce["data"]["startsAt"], "2024-05-01T12:00:00.000Z");
        assert!(ce["data"]["endsAt"].is_null());
        assert!(ce["data"]["estimated_flop"]["central"].is_number());
    }
}
