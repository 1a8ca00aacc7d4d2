//! Tenant registry: who a tenant is (Know Your Customer) and the alerting policy that follows.
//!
//! The proposed US IaaS rule (89 FR 5698) asks for a report when a *foreign person* trains a large
//! model, so the same compute means more for an unverified or foreign tenant than for a verified
//! domestic one. This module owns that context: per tenant an organisation, a jurisdiction, a
//! verification state, whether it is a foreign person, and free labels; and an ordered list of
//! policy rules that scale FLOP thresholds, raise severity or override the training-score threshold
//! for the tenants they match.
//!
//! In: a TOML file ([`Registry::parse`], [`Registry::load`], reloaded through [`RegistryWatcher`])
//! and per-tenant updates from a compacted topic ([`Registry::apply_update`]).
//! Out: [`Registry::policy`] (an [`Effective`] policy for the engine) and [`Registry::context`]
//! (what an alert carries as evidence). Everything here is pure except the explicit file reads.
//!
//! # File format
//! ```toml
//! # Tenants: the table key is the tenant id as it appears in telemetry.
//! [tenants.acme-ml]
//! organisation = "acme"          # parent organisation; tenants of one org are aggregated
//! jurisdiction = "US"            # ISO 3166-1 alpha-2, two uppercase letters
//! verification = "verified"      # verified | pending | unverified (default: unverified)
//! foreign_person = false         # absent = not known
//! labels = { account_manager = "j.doe", contract = "C-1042" }
//!
//! [tenants."acme-ml-eu"]
//! organisation = "acme"
//! jurisdiction = "DE"
//! verification = "verified"
//! foreign_person = true
//!
//! # Policy rules are evaluated in order and every matching rule applies.
//! [[policy]]
//! name = "unverified or foreign"
//! match = { verification = ["unverified", "pending"] }
//! threshold_scale = 0.1          # multiplies the FLOP thresholds (lower = earlier alerts)
//! severity = "critical"          # raise alert severity to at least this
//! score_threshold = 0.7          # optional override of the training-score threshold
//!
//! [[policy]]
//! name = "foreign person"
//! match = { foreign_person = true }
//! threshold_scale = 0.5
//! severity = "warning"
//!
//! [[policy]]
//! name = "not in registry"
//! match = { unknown = true }
//! severity = "critical"
//! ```
//!
//! Match keys, all of which must hold (AND): `tenant`, `organisation`, `jurisdiction`,
//! `verification` (lists, any of), `foreign_person` (bool; a tenant whose status is not known matches
//! neither `true` nor `false`), `unknown` (`true`: the tenant is not in the registry; `false`: it is).
//! `match = {}` matches every tenant. A tenant not in the registry counts as `unverified`, so the
//! first rule above also covers it. Composition: threshold scales multiply, severity is the highest
//! of the matching rules, the score threshold is that of the last matching rule that sets one.
//!
//! Unknown keys are rejected everywhere, and errors name the key and the tenant or rule, e.g.
//! `registry line 3: tenants.acme-ml.jurisdiction: "usa" is not an ISO 3166-1 alpha-2 code`.
//!
//! # File and topic together
//! Topic updates are an overlay on the file: an update replaces the file's entry for that tenant, a
//! tombstone hides it. A reload ([`Registry::replace_file`]) swaps the file part and keeps the
//! overlay, so the result does not depend on whether a reload or an update came first. Policy rules
//! come only from the file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_path_to_error::Segment;

use crate::alert::Severity;

/// Most labels one tenant may carry; they end up in every alert for it.
pub const MAX_LABELS: usize = 32;
/// Longest label key and tenant id, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 512;

/// Where a tenant stands in the provider's customer identification programme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    Verified,
    Pending,
    /// Also the state of every tenant that is not in the registry.
    #[default]
    Unverified,
}

impl Verification {
    pub fn as_str(self) -> &'static str {
        match self {
            Verification::Verified => "verified",
            Verification::Pending => "pending",
            Verification::Unverified => "unverified",
        }
    }
}

/// What is known about one tenant. The same shape is read from the file and from topic updates
/// (JSON), with the same validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantInfo {
    /// Parent organisation; never empty when present.
    #[serde(default, deserialize_with = "de_organisation")]
    pub organisation: Option<String>,
    /// ISO 3166-1 alpha-2 country code (shape checked: two ASCII uppercase letters).
    #[serde(default, deserialize_with = "de_jurisdiction")]
    pub jurisdiction: Option<String>,
    #[serde(default)]
    pub verification: Verification,
    /// Whether the tenant is a foreign person in the sense of the IaaS rule; `None` = not known.
    #[serde(default)]
    pub foreign_person: Option<bool>,
    /// Free annotations (account manager, contract id); at most [`MAX_LABELS`].
    #[serde(default, deserialize_with = "de_labels")]
    pub labels: BTreeMap<String, String>,
}

/// What a tenant not in the registry looks like to the policy.
static UNREGISTERED: TenantInfo = TenantInfo {
    organisation: None,
    jurisdiction: None,
    verification: Verification::Unverified,
    foreign_person: None,
    labels: BTreeMap::new(),
};

/// The policy in force for one tenant, composed from every matching rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effective {
    /// Product of the matching rules' scales, 1.0 when none match; always finite and > 0.
    pub threshold_scale: f64,
    /// Highest severity required by a matching rule.
    pub min_severity: Option<Severity>,
    /// Training-score threshold of the last matching rule that sets one.
    pub score_threshold: Option<f64>,
    /// Names of the matching rules in file order, for alert evidence.
    pub rules: Vec<String>,
}

impl Default for Effective {
    fn default() -> Self {
        Effective {
            threshold_scale: 1.0,
            min_severity: None,
            score_threshold: None,
            rules: Vec::new(),
        }
    }
}

impl Effective {
    /// `base` raised to at least [`Effective::min_severity`].
    pub fn raise(&self, base: Severity) -> Severity {
        match self.min_severity {
            Some(min) if rank(min) > rank(base) => min,
            _ => base,
        }
    }
}

/// The registry part of an alert's evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantContext {
    pub registered: bool,
    pub organisation: Option<String>,
    pub jurisdiction: Option<String>,
    /// `verified`, `pending`, `unverified`, or `unknown` for a tenant not in the registry.
    pub verification: &'static str,
    pub foreign_person: Option<bool>,
    pub labels: BTreeMap<String, String>,
    /// Names of the policy rules that apply.
    pub policy_rules: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file (or text) is not valid TOML or breaks a rule; `at` is the key path.
    #[error("registry {}{message}", origin(file.as_deref(), *line, at))]
    Invalid {
        file: Option<PathBuf>,
        line: Option<usize>,
        at: String,
        message: String,
    },
    /// A topic update was rejected; the registry is unchanged.
    #[error("registry update for tenant {tenant:?}: {}{message}", prefix(at))]
    Update {
        tenant: String,
        at: String,
        message: String,
    },
}

impl RegistryError {
    /// Bounded reason code for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::Io { .. } => "io",
            RegistryError::Invalid { .. } => "invalid",
            RegistryError::Update { .. } => "update",
        }
    }

    fn in_file(self, path: &Path) -> Self {
        match self {
            RegistryError::Invalid {
                line, at, message, ..
            } => RegistryError::Invalid {
                file: Some(path.to_owned()),
                line,
                at,
                message,
            },
            other => other,
        }
    }
}

fn origin(file: Option<&Path>, line: Option<usize>, at: &str) -> String {
    let mut out = String::new();
    match (file, line) {
        (Some(f), Some(l)) => _ = write!(out, "{}:{l}: ", f.display()),
        (Some(f), None) => _ = write!(out, "{}: ", f.display()),
        (None, Some(l)) => _ = write!(out, "line {l}: "),
        (None, None) => {}
    }
    out + &prefix(at)
}

fn prefix(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!("{at}: ")
    }
}

/// Tenants (file entries with the topic overlay applied) and the ordered policy rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    /// The effective view: `file` with `updates` applied.
    tenants: BTreeMap<String, TenantInfo>,
    /// The tenants of each organisation named in `tenants`.
    members: BTreeMap<String, BTreeSet<String>>,
    file: BTreeMap<String, TenantInfo>,
    /// Topic overlay; `None` is a tombstone, kept so that a reload does not resurrect the tenant.
    updates: BTreeMap<String, Option<TenantInfo>>,
    rules: Vec<Rule>,
}

impl Registry {
    /// Parses and validates a registry file's text.
    pub fn parse(text: &str) -> Result<Registry, RegistryError> {
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, "", e))?;
        let file: RegistryFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = describe(e.path(), text);
            toml_error(text, &at, e.into_inner())
        })?;
        for id in file.tenants.keys() {
            check_id(id).map_err(|message| invalid(format!("tenants.{}", key(id)), message))?;
        }
        for (i, rule) in file.policy.iter().enumerate() {
            let at = format!("policy[{i}]");
            if rule.name.trim().is_empty() {
                return Err(invalid(at, "rule name must not be empty".into()));
            }
            if file.policy[..i].iter().any(|r| r.name == rule.name) {
                let message = format!("duplicate rule name {:?}", rule.name);
                return Err(invalid(at, message));
            }
            if let Some(why) = rule.matcher.never_matches() {
                let message = format!("rule {:?} can never match: {why}", rule.name);
                return Err(invalid(format!("{at}.match"), message));
            }
        }
        Ok(Registry {
            members: members(&file.tenants),
            tenants: file.tenants.clone(),
            file: file.tenants,
            updates: BTreeMap::new(),
            rules: file.policy,
        })
    }

    /// Reads and parses a registry file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Registry, RegistryError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Io {
            path: path.to_owned(),
            source,
        })?;
        Registry::parse(&text).map_err(|e| e.in_file(path))
    }

    /// Takes tenants and policy from a freshly parsed `file`, keeping this registry's topic overlay.
    pub fn replace_file(&mut self, file: Registry) {
        self.file = file.file;
        self.rules = file.rules;
        self.rebuild();
    }

    /// Applies one record of the compacted tenant topic: a JSON object with the [`TenantInfo`]
    /// fields, or `None` (tombstone) to remove the tenant. On error nothing changes.
    pub fn apply_update(
        &mut self,
        tenant: &str,
        value: Option<&[u8]>,
    ) -> Result<(), RegistryError> {
        let update_error = |at: String, message: String| RegistryError::Update {
            tenant: tenant.to_owned(),
            at,
            message,
        };
        check_id(tenant).map_err(|m| update_error(String::new(), m))?;
        let info = match value {
            None => None,
            Some(bytes) => {
                let mut de = serde_json::Deserializer::from_slice(bytes);
                let info: TenantInfo = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                    let at = describe(e.path(), "");
                    update_error(at, e.into_inner().to_string())
                })?;
                de.end()
                    .map_err(|e| update_error(String::new(), e.to_string()))?;
                Some(info)
            }
        };
        let before = match &info {
            Some(i) => self.tenants.insert(tenant.to_owned(), i.clone()),
            None => self.tenants.remove(tenant),
        };
        if let Some(org) = before.and_then(|b| b.organisation) {
            if let Some(set) = self.members.get_mut(&org) {
                set.remove(tenant);
                if set.is_empty() {
                    self.members.remove(&org);
                }
            }
        }
        if let Some(org) = info.as_ref().and_then(|i| i.organisation.clone()) {
            self.members
                .entry(org)
                .or_default()
                .insert(tenant.to_owned());
        }
        self.updates.insert(tenant.to_owned(), info);
        Ok(())
    }

    pub fn info(&self, tenant: &str) -> Option<&TenantInfo> {
        self.tenants.get(tenant)
    }

    pub fn organisation(&self, tenant: &str) -> Option<&str> {
        self.info(tenant)?.organisation.as_deref()
    }

    /// Tenant ids of one organisation, in id order.
    pub fn members<'a>(&'a self, org: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.members
            .get(org)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Number of registered tenants.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Policy rule names in evaluation order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// The policy for `tenant`, composed from every matching rule in order.
    pub fn policy(&self, tenant: &str) -> Effective {
        let mut eff = Effective::default();
        if self.rules.is_empty() {
            return eff;
        }
        let info = self.info(tenant);
        for rule in self
            .rules
            .iter()
            .filter(|r| r.matcher.matches(tenant, info))
        {
            eff.threshold_scale *= rule.threshold_scale;
            if let Some(s) = rule.severity {
                eff.min_severity = Some(eff.raise(s));
            }
            eff.score_threshold = rule.score_threshold.or(eff.score_threshold);
            eff.rules.push(rule.name.clone());
        }
        // Many small scales must not reach 0 (alert on anything) nor large ones infinity (never).
        eff.threshold_scale = eff.threshold_scale.clamp(f64::MIN_POSITIVE, f64::MAX);
        eff
    }

    /// What an alert for `tenant` should carry.
    pub fn context(&self, tenant: &str) -> TenantContext {
        let info = self.info(tenant);
        let i = info.unwrap_or(&UNREGISTERED);
        TenantContext {
            registered: info.is_some(),
            organisation: i.organisation.clone(),
            jurisdiction: i.jurisdiction.clone(),
            verification: info.map_or("unknown", |i| i.verification.as_str()),
            foreign_person: i.foreign_person,
            labels: i.labels.clone(),
            policy_rules: self.policy(tenant).rules,
        }
    }

    /// Hash of the effective tenants and rules: equal registries have equal fingerprints within one
    /// process, so a caller can tell whether a reload or update changed anything.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.tenants.hash(&mut h);
        self.rules.hash(&mut h);
        h.finish()
    }

    fn rebuild(&mut self) {
        let mut tenants = self.file.clone();
        for (id, update) in &self.updates {
            match update {
                Some(info) => tenants.insert(id.clone(), info.clone()),
                None => tenants.remove(id),
            };
        }
        self.members = members(&tenants);
        self.tenants = tenants;
    }
}

/// The tenants of each organisation in `tenants`.
fn members(tenants: &BTreeMap<String, TenantInfo>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, info) in tenants {
        if let Some(org) = &info.organisation {
            out.entry(org.clone()).or_default().insert(id.clone());
        }
    }
    out
}

/// Watches a registry file for changes; the caller polls (no threads or timers here).
///
/// [`RegistryWatcher::poll`] returns a new registry only when the content changed and parsed. On a
/// parse error the caller keeps its current registry and logs and counts the error; the broken
/// content is remembered, so the error is reported once, and the next change is read again.
#[derive(Debug)]
pub struct RegistryWatcher {
    path: PathBuf,
    seen: Option<Seen>,
}

#[derive(Debug)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    hash: u64,
    read_at: SystemTime,
}

/// A file whose mtime is this close to when we read it may have been rewritten within the same
/// mtime tick, so the stamp alone cannot prove it unchanged (git's "racily clean" problem).
const RACY: Duration = Duration::from_secs(2);

impl RegistryWatcher {
    /// Loads the file once (an error here should stop startup) and starts watching it.
    pub fn open(path: impl Into<PathBuf>) -> Result<(RegistryWatcher, Registry), RegistryError> {
        let mut watcher = RegistryWatcher {
            path: path.into(),
            seen: None,
        };
        // With nothing seen yet the content always counts as changed: Some or an error.
        let registry = watcher.poll()?.expect("first poll always reads and parses");
        Ok((watcher, registry))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Ok(Some)` when the file changed and parsed, `Ok(None)` when unchanged (or changed back to
    /// content already reported), `Err` when it cannot be read or does not parse.
    pub fn poll(&mut self) -> Result<Option<Registry>, RegistryError> {
        let io = |source| RegistryError::Io {
            path: self.path.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.path).map_err(io)?;
        let (modified, len) = (meta.modified().ok(), meta.len());
        if let Some(seen) = &self.seen {
            let settled = modified
                .and_then(|m| seen.read_at.duration_since(m).ok())
                .is_some_and(|age| age >= RACY);
            if settled && seen.modified == modified && seen.len == len {
                return Ok(None);
            }
        }
        let read_at = SystemTime::now();
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        let hash = {
            let mut h = DefaultHasher::new();
            text.hash(&mut h);
            h.finish()
        };
        let changed = self.seen.as_ref().is_none_or(|s| s.hash != hash);
        self.seen = Some(Seen {
            modified,
            len,
            hash,
            read_at,
        });
        if !changed {
            return Ok(None);
        }
        Registry::parse(&text)
            .map(Some)
            .map_err(|e| e.in_file(&self.path))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    tenants: BTreeMap<String, TenantInfo>,
    #[serde(default)]
    policy: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    name: String,
    #[serde(rename = "match")]
    matcher: Match,
    #[serde(default = "one", deserialize_with = "de_scale")]
    threshold_scale: f64,
    #[serde(default)]
    severity: Option<Severity>,
    #[serde(default, deserialize_with = "de_score")]
    score_threshold: Option<f64>,
}

impl Hash for Rule {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.name.hash(h);
        self.matcher.hash(h);
        self.threshold_scale.to_bits().hash(h);
        self.severity.map(rank).hash(h);
        self.score_threshold.map(f64::to_bits).hash(h);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
struct Match {
    #[serde(default, deserialize_with = "de_ids")]
    tenant: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_ids")]
    organisation: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_countries")]
    jurisdiction: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_verifications")]
    verification: Option<Vec<Verification>>,
    #[serde(default)]
    foreign_person: Option<bool>,
    #[serde(default)]
    unknown: Option<bool>,
}

impl Match {
    fn matches(&self, tenant: &str, info: Option<&TenantInfo>) -> bool {
        let i = info.unwrap_or(&UNREGISTERED);
        let any = |list: &Option<Vec<String>>, value: Option<&str>| {
            list.as_ref()
                .is_none_or(|l| value.is_some_and(|v| l.iter().any(|x| x == v)))
        };
        self.unknown.is_none_or(|u| u == info.is_none())
            && any(&self.tenant, Some(tenant))
            && any(&self.organisation, i.organisation.as_deref())
            && any(&self.jurisdiction, i.jurisdiction.as_deref())
            && (self.verification.as_ref()).is_none_or(|l| l.contains(&i.verification))
            && self
                .foreign_person
                .is_none_or(|f| i.foreign_person == Some(f))
    }

    /// Why a rule can never apply, for the combinations that are certainly mistakes.
    fn never_matches(&self) -> Option<&'static str> {
        if self.unknown != Some(true) {
            return None;
        }
        if self.organisation.is_some() || self.jurisdiction.is_some() {
            return Some("tenants not in the registry have no organisation or jurisdiction");
        }
        if self.foreign_person.is_some() {
            return Some("tenants not in the registry have no known foreign_person status");
        }
        if (self.verification.as_ref()).is_some_and(|l| !l.contains(&Verification::Unverified)) {
            return Some("tenants not in the registry count as unverified");
        }
        None
    }
}

fn rank(s: Severity) -> u8 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

fn one() -> f64 {
    1.0
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        Err("tenant id must not be empty".into())
    } else if id.len() > MAX_KEY_LEN {
        Err(format!("tenant id longer than {MAX_KEY_LEN} bytes"))
    } else {
        Ok(())
    }
}

fn check_country(code: &str) -> Result<(), String> {
    if code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "{code:?} is not an ISO 3166-1 alpha-2 code (e.g. \"DE\")"
        ))
    }
}

fn de_organisation<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let org = Option::<String>::deserialize(d)?;
    if org.as_deref().is_some_and(|o| o.trim().is_empty()) {
        return Err(D::Error::custom("organisation must not be empty"));
    }
    Ok(org)
}

fn de_jurisdiction<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let code = Option::<String>::deserialize(d)?;
    if let Some(c) = &code {
        check_country(c).map_err(D::Error::custom)?;
    }
    Ok(code)
}

fn de_labels<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let labels = BTreeMap::<String, String>::deserialize(d)?;
    if labels.len() > MAX_LABELS {
        let message = format!("at most {MAX_LABELS} labels, got {}", labels.len());
        return Err(D::Error::custom(message));
    }
    for (k, v) in &labels {
        if k.is_empty() || k.len() > MAX_KEY_LEN {
            let message = format!("label key {k:?} must be 1 to {MAX_KEY_LEN} bytes");
            return Err(D::Error::custom(message));
        }
        if v.len() > MAX_LABEL_VALUE_LEN {
            let message = format!("label {k:?} longer than {MAX_LABEL_VALUE_LEN} bytes");
            return Err(D::Error::custom(message));
        }
    }
    Ok(labels)
}

fn non_empty<T, E: serde::de::Error>(list: Vec<T>) -> Result<Option<Vec<T>>, E> {
    if list.is_empty() {
        Err(E::custom(
            "an empty list matches nothing; leave the key out to match any",
        ))
    } else {
        Ok(Some(list))
    }
}

fn de_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.iter().any(|s| s.is_empty()) {
        return Err(D::Error::custom("empty string in list"));
    }
    non_empty(list)
}

fn de_countries<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for c in &list {
        check_country(c).map_err(D::Error::custom)?;
    }
    non_empty(list)
}

fn de_verifications<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Verification>>, D::Error> {
    non_empty(Vec::<Verification>::deserialize(d)?)
}

fn de_scale<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let scale = f64::deserialize(d)?;
    if scale.is_finite() && scale > 0.0 {
        Ok(scale)
    } else {
        Err(D::Error::custom(format!(
            "must be finite and > 0, got {scale}"
        )))
    }
}

fn de_score<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let score = Option::<f64>::deserialize(d)?;
    match score {
        Some(s) if !(s > 0.0 && s <= 1.0) => {
            Err(D::Error::custom(format!("must be in (0, 1], got {s}")))
        }
        _ => Ok(score),
    }
}

fn invalid(at: String, message: String) -> RegistryError {
    RegistryError::Invalid {
        file: None,
        line: None,
        at,
        message,
    }
}

fn toml_error(text: &str, at: &str, e: toml::de::Error) -> RegistryError {
    RegistryError::Invalid {
        file: None,
        line: (e.span())
            .and_then(|s| text.get(..s.start))
            .map(|before| before.matches('\n').count() + 1),
        at: at.to_owned(),
        message: e.message().to_owned(),
    }
}

/// A TOML key, quoted unless bare.
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}

/// Renders a deserialization path (`tenants.acme-ml.jurisdiction`); a path into a policy rule also
/// names the rule, looked up in `text`, since `policy[3]` alone is hard to find in a long file.
fn describe(path: &serde_path_to_error::Path, text: &str) -> String {
    let mut out = String::new();
    let mut rule = None;
    let mut prev_policy = false;
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => {
                _ = write!(out, "[{index}]");
                if prev_policy {
                    rule = Some(*index);
                }
            }
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key(k));
            }
            Segment::Unknown => out.push_str(".?"),
        }
        prev_policy = out == "policy";
    }
    let name = rule.and_then(|i| {
        let doc: toml::Table = text.parse().ok()?;
        let rule = doc.get("policy")?.as_array()?.get(i)?;
        Some(rule.get("name")?.as_str()?.to_owned())
    });
    if let Some(name) = name {
        _ = write!(out, " (rule {name:?})");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the module documentation, so the documented format is the tested one.
    fn doc_example() -> String {
        let source = include_str!("registry.rs");
        source
            .lines()
            .skip_while(|l| *l != "//! ```toml")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| l.strip_prefix("//!").unwrap_or(l).trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn example() -> Registry {
        Registry::parse(&doc_example()).unwrap()
    }

    fn err(text: &str) -> String {
        Registry::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn documented_example_parses() {
        let r = example();
        assert_eq!(r.len(), 2);
        let us = r.info("acme-ml").unwrap();
        assert_eq!(us.jurisdiction.as_deref(), Some("US"));
        assert_eq!(us.verification, Verification::Verified);
        assert_eq!(us.foreign_person, Some(false));
        assert_eq!(us.labels["contract"], "C-1042");
        assert_eq!(r.organisation("acme-ml-eu"), Some("acme"));
        assert_eq!(
            r.rule_names().collect::<Vec<_>>(),
            ["unverified or foreign", "foreign person", "not in registry"]
        );
    }

    #[test]
    fn empty_file_is_an_empty_registry() {
        let r = Registry::parse("").unwrap();
        assert!(r.is_empty());
        assert_eq!(r.policy("anyone"), Effective::default());
    }

    #[test]
    fn unknown_key_rejected_naming_key_and_tenant() {
        let e = err("[tenants.acme-ml]\norganisation = \"acme\"\ncountry = \"US\"\n");
        assert!(e.contains("tenants.acme-ml"), "{e}");
        assert!(e.contains("country"), "{e}");
        let e = err("[[policy]]\nname = \"r\"\nmatch = { tenants = [\"a\"] }\n");
        assert!(e.contains("policy[0].match"), "{e}");
        assert!(e.contains("tenants"), "{e}");
        assert!(err("[tenant.a]\n").contains("tenant"));
    }

    #[test]
    fn bad_jurisdiction_rejected_naming_tenant() {
        let e = err("[tenants.acme-ml]\njurisdiction = \"usa\"\n");
        assert!(
            e.starts_with("registry line 2: tenants.acme-ml.jurisdiction: \"usa\" is not an ISO"),
            "{e}"
        );
        let e = err("[[policy]]\nname = \"eu\"\nmatch = { jurisdiction = [\"de\"] }\n");
        assert!(
            e.contains("policy[0].match.jurisdiction (rule \"eu\")"),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_rule_values_rejected_naming_rule() {
        let rule = |extra: &str| format!("[[policy]]\nname = \"r1\"\nmatch = {{}}\n{extra}\n");
        let e = err(&rule("threshold_scale = 0.0"));
        assert!(
            e.contains("policy[0].threshold_scale (rule \"r1\"): must be finite"),
            "{e}"
        );
        assert!(err(&rule("threshold_scale = nan")).contains("threshold_scale"));
        assert!(err(&rule("score_threshold = 1.5")).contains("score_threshold"));
        assert!(err(&rule("score_threshold = 0.0")).contains("score_threshold"));
        assert!(err(&rule("severity = \"fatal\"")).contains("severity"));
        assert!(Registry::parse(&rule("score_threshold = 1.0")).is_ok());
        let e =
            err("[[policy]]\nname = \"r\"\nmatch = { unknown = true, organisation = [\"a\"] }\n");
        assert!(e.contains("can never match"), "{e}");
        let e = err("[[policy]]\nname = \"r\"\nmatch = {}\n[[policy]]\nname = \"r\"\nmatch = {}\n");
        assert!(e.contains("policy[1]: duplicate rule name"), "{e}");
    }

    #[test]
    fn tenant_fields_validated() {
        assert!(err("[tenants.a]\norganisation = \"\"\n").contains("tenants.a.organisation"));
        let labels: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i} = \"v\"")).collect();
        let e = err(&format!(
            "[tenants.a]\nlabels = {{ {} }}\n",
            labels.join(", ")
        ));
        assert!(e.contains("tenants.a.labels: at most 32 labels"), "{e}");
        assert!(err("[tenants.a]\nverification = \"maybe\"\n").contains("verification"));
    }

    #[test]
    fn policies_compose_scale_product_max_severity_last_score() {
        let r = example();
        // Verified and foreign: only "foreign person".
        let eu = r.policy("acme-ml-eu");
        assert_eq!(eu.rules, ["foreign person"]);
        assert_eq!(eu.threshold_scale, 0.5);
        assert_eq!(eu.min_severity, Some(Severity::Warning));
        assert_eq!(eu.score_threshold, None);
        // Verified, not foreign: nothing.
        assert_eq!(r.policy("acme-ml"), Effective::default());

        let r = Registry::parse(
            r#"
            [tenants.t]
            verification = "pending"
            foreign_person = true
            [[policy]]
            name = "a"
            match = { verification = ["pending"] }
            threshold_scale = 0.1
            severity = "critical"
            score_threshold = 0.6
            [[policy]]
            name = "b"
            match = { foreign_person = true }
            threshold_scale = 0.5
            severity = "info"
            score_threshold = 0.8
            [[policy]]
            name = "c"
            match = { tenant = ["t"] }
            "#,
        )
        .unwrap();
        let p = r.policy("t");
        assert_eq!(p.rules, ["a", "b", "c"]);
        assert!((p.threshold_scale - 0.05).abs() < 1e-15);
        assert_eq!(p.min_severity, Some(Severity::Critical));
        assert_eq!(p.score_threshold, Some(0.8));
        assert_eq!(p.raise(Severity::Info), Severity::Critical);
    }

    #[test]
    fn unknown_true_matches_unregistered_tenants_only() {
        let r = example();
        let stranger = r.policy("stranger");
        // Unregistered counts as unverified, so the first rule applies too.
        assert_eq!(stranger.rules, ["unverified or foreign", "not in registry"]);
        assert_eq!(stranger.min_severity, Some(Severity::Critical));
        assert!(!r
            .policy("acme-ml")
            .rules
            .contains(&"not in registry".to_owned()));
        assert!(!r
            .policy("acme-ml-eu")
            .rules
            .contains(&"not in registry".to_owned()));
    }

    #[test]
    fn context_shows_unknown_for_unregistered_tenants() {
        let r = example();
        let c = serde_json::to_value(r.context("stranger")).unwrap();
        assert_eq!(c["registered"], false);
        assert_eq!(c["verification"], "unknown");
        assert!(c["foreign_person"].is_null());
        assert_eq!(c["policy_rules"][1], "not in registry");
        let c = serde_json::to_value(r.context("acme-ml")).unwrap();
        assert_eq!(c["verification"], "verified");
        assert_eq!(c["organisation"], "acme");
        assert_eq!(c["labels"]["account_manager"], "j.doe");
    }

    #[test]
    fn update_adds_and_replaces_tenants() {
        let mut r = example();
        let before = r.fingerprint();
        let json = br#"{"organisation":"beta","jurisdiction":"FR","verification":"pending","foreign_person":true}"#;
        r.apply_update("beta-1", Some(json)).unwrap();
        assert_eq!(
            r.info("beta-1").unwrap().verification,
            Verification::Pending
        );
        assert_eq!(r.members("beta").collect::<Vec<_>>(), ["beta-1"]);
        assert_ne!(r.fingerprint(), before);
        r.apply_update("acme-ml", Some(br#"{"organisation":"acme"}"#))
            .unwrap();
        assert_eq!(
            r.info("acme-ml").unwrap().verification,
            Verification::Unverified
        );
    }

    #[test]
    fn tombstone_removes_tenant() {
        let mut r = example();
        r.apply_update("acme-ml", None).unwrap();
        assert!(r.info("acme-ml").is_none());
        assert_eq!(r.members("acme").collect::<Vec<_>>(), ["acme-ml-eu"]);
        assert!(r
            .policy("acme-ml")
            .rules
            .contains(&"not in registry".to_owned()));
    }

    #[test]
    fn bad_update_rejected_and_registry_unchanged() {
        let mut r = example();
        let before = r.clone();
        for bad in [
            &br#"{"jurisdiction":"usa"}"#[..],
            br#"{"organisation":"acme","tier":"gold"}"#,
            br#"{"organisation":"acme""#,
            br#"{"organisation":"acme"} trailing"#,
            b"[1,2]",
            b"",
        ] {
            let e = r.apply_update("acme-ml", Some(bad)).unwrap_err();
            assert_eq!(e.reason(), "update");
            assert_eq!(r, before, "changed by {:?}", String::from_utf8_lossy(bad));
        }
        let e = r
            .apply_update("acme-ml", Some(br#"{"jurisdiction":"usa"}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"acme-ml\": jurisdiction: \"usa\" is not"),
            "{e}"
        );
        assert!(r.apply_update("", None).is_err());
        assert_eq!(r, before);
    }

    #[test]
    fn reload_keeps_topic_updates() {
        let mut r = example();
        r.apply_update("acme-ml", None).unwrap();
        r.apply_update("new", Some(br#"{"organisation":"acme"}"#))
            .unwrap();
        r.replace_file(example());
        assert!(r.info("acme-ml").is_none());
        assert_eq!(r.members("acme").collect::<Vec<_>>(), ["acme-ml-eu", "new"]);
    }

    #[test]
    fn fingerprint_equal_for_equal_content() {
        assert_eq!(example().fingerprint(), example().fingerprint());
        assert_ne!(example().fingerprint(), Registry::default().fingerprint());
    }

    #[test]
    fn an_organisation_keeps_its_members_as_updates_move_tenants_between_organisations() {
        let mut r = example();
        r.apply_update("acme-ml", Some(br#"{"organisation":"beta"}"#))
            .unwrap();
        assert_eq!(r.members("acme").collect::<Vec<_>>(), ["acme-ml-eu"]);
        assert_eq!(r.members("beta").collect::<Vec<_>>(), ["acme-ml"]);
        r.apply_update("acme-ml-eu", Some(br#"{"jurisdiction":"DE"}"#))
            .unwrap();
        assert_eq!(r.members("acme").count(), 0);
        r.apply_update("acme-ml", None).unwrap();
        assert_eq!(r.members("beta").count(), 0);
        r.apply_update("acme-ml", Some(br#"{"organisation":"acme"}"#))
            .unwrap();
        assert_eq!(r.members("acme").collect::<Vec<_>>(), ["acme-ml"]);
        // The same as a scan of every tenant, and after a reload of the file too.
        let scan = |r: &Registry, org: &str| -> Vec<String> {
            let ids = ["acme-ml", "acme-ml-eu", "beta-1", "new"];
            ids.iter()
                .filter(|id| r.organisation(id) == Some(org))
                .map(|id| id.to_string())
                .collect()
        };
        r.replace_file(example());
        for org in ["acme", "beta"] {
            assert_eq!(r.members(org).collect::<Vec<_>>(), scan(&r, org), "{org}");
        }
    }

    #[test]
    fn members_of_an_organisation() {
        let r = example();
        assert_eq!(
            r.members("acme").collect::<Vec<_>>(),
            ["acme-ml", "acme-ml-eu"]
        );
        assert_eq!(r.members("nobody").count(), 0);
    }

    #[test]
    fn load_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, "[tenants.a]\njurisdiction = \"x\"\n").unwrap();
        let e = Registry::load(&path).unwrap_err().to_string();
        assert!(e.contains("registry.toml:2: tenants.a.jurisdiction"), "{e}");
        let e = Registry::load(dir.path().join("missing.toml")).unwrap_err();
        assert_eq!(e.reason(), "io");
        assert!(e.to_string().contains("missing.toml"));
    }

    #[test]
    fn watcher_reports_only_changes_and_survives_a_broken_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, doc_example()).unwrap();
        let (mut w, first) = RegistryWatcher::open(&path).unwrap();
        assert_eq!(first, example());

        assert!(w.poll().unwrap().is_none(), "unchanged");
        std::fs::write(&path, doc_example()).unwrap();
        assert!(
            w.poll().unwrap().is_none(),
            "rewritten with the same content"
        );

        std::fs::write(&path, "[tenants.b]\norganisation = \"beta\"\n").unwrap();
        let second = w.poll().unwrap().expect("changed");
        assert_eq!(second.organisation("b"), Some("beta"));

        std::fs::write(&path, "[tenants.b]\norganisation = \n").unwrap();
        let e = w.poll().unwrap_err();
        assert_eq!(e.reason(), "invalid");
        assert!(
            w.poll().unwrap().is_none(),
            "a broken file is reported once"
        );

        std::fs::write(&path, "[tenants.c]\n").unwrap();
        let fixed = w.poll().unwrap().expect("fixed");
        assert!(fixed.info("c").is_some());
    }
}
