//! Label mapping: which exporter labels name the tenant, job, node, GPU and accelerator model of a
//! metric (`[input.labels]`).
//!
//! dcgm-exporter labels each GPU metric with `gpu`, `UUID`, `modelName`, `Hostname` (`hostname`
//! since 2026), and, with its Kubernetes mapping, the `namespace` and `pod` using the GPU (`hpc_job`
//! with the Slurm mapping). For each role the mapping lists label names; the first present and
//! non-empty one wins. Pod names of one job (`trainer-0`, `trainer-1`) collapse to the job through
//! `job_pattern`, whose `job` capture group is the job name.

use regex::Regex;

use crate::config::LabelsConfig;
use crate::join::Device;

#[derive(Debug, Clone)]
pub struct LabelMap {
    tenant: Vec<String>,
    job: Vec<String>,
    node: Vec<String>,
    gpu: Vec<String>,
    accelerator: Vec<String>,
    job_pattern: Option<Regex>,
}

impl LabelMap {
    /// The mapping of a validated configuration (`job_pattern` compiles and has a `job` group).
    pub fn new(cfg: &LabelsConfig) -> Result<LabelMap, regex::Error> {
        let job_pattern = if cfg.job_pattern.is_empty() {
            None
        } else {
            Some(Regex::new(&cfg.job_pattern)?)
        };
        Ok(LabelMap {
            tenant: cfg.tenant.clone(),
            job: cfg.job.clone(),
            node: cfg.node.clone(),
            gpu: cfg.gpu.clone(),
            accelerator: cfg.accelerator.clone(),
            job_pattern,
        })
    }

    /// The device and accelerator model a metric's labels describe; `None` when no tenant label
    /// is present (a GPU no workload holds: nothing to account).
    pub fn device<'a>(
        &self,
        label: impl Fn(&str) -> Option<&'a str>,
    ) -> Option<(Device, Option<String>)> {
        let first = |names: &[String]| {
            names
                .iter()
                .find_map(|n| label(n).filter(|v| !v.is_empty()))
        };
        let tenant = first(&self.tenant)?.to_string();
        let job = first(&self.job).map(|j| self.job_name(j));
        let device = Device {
            tenant,
            job,
            node: first(&self.node).map(str::to_string),
            gpu: first(&self.gpu).map(str::to_string),
        };
        Some((device, first(&self.accelerator).map(str::to_string)))
    }

    fn job_name(&self, raw: &str) -> String {
        self.job_pattern
            .as_ref()
            .and_then(|p| p.captures(raw))
            .and_then(|c| c.name("job"))
            .map_or(raw, |m| m.as_str())
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn map() -> LabelMap {
        LabelMap::new(&LabelsConfig::default()).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn device(l: &HashMap<String, String>) -> Option<(Device, Option<String>)> {
        map().device(|k| l.get(k).map(String::as_str))
    }

    #[test]
    fn kubernetes_labels_map_to_tenant_job_node_gpu_and_model() {
        let l = labels(&[
            ("namespace", "tenant-a"),
            ("pod", "trainer-12"),
            ("Hostname", "node-17"),
            ("UUID", "GPU-604ac76c"),
            ("gpu", "3"),
            ("modelName", "NVIDIA H100 80GB HBM3"),
        ]);
        let (d, model) = device(&l).unwrap();
        assert_eq!(d.tenant, "tenant-a");
        assert_eq!(d.job.as_deref(), Some("trainer"), "pod ordinal collapsed");
        assert_eq!(d.node.as_deref(), Some("node-17"));
        assert_eq!(d.gpu.as_deref(), Some("GPU-604ac76c"));
        assert_eq!(model.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    }

    #[test]
    fn slurm_job_wins_over_pod_and_the_renamed_hostname_label_is_read() {
        let l = labels(&[
            ("namespace", "lab"),
            ("hpc_job", "48213"),
            ("pod", "x-0"),
            ("hostname", "n1"),
        ]);
        let (d, _) = device(&l).unwrap();
        assert_eq!(d.job.as_deref(), Some("48213"));
        assert_eq!(d.node.as_deref(), Some("n1"));
    }

    #[test]
    fn jobset_pod_names_collapse_and_a_metric_without_tenant_is_unattributed() {
        let l = labels(&[("namespace", "lab"), ("pod", "pretrain-workers-0-7")]);
        assert_eq!(
            device(&l).unwrap().0.job.as_deref(),
            Some("pretrain-workers")
        );
        let l = labels(&[("namespace", "lab"), ("pod", "inference-api")]);
        assert_eq!(device(&l).unwrap().0.job.as_deref(), Some("inference-api"));
        assert!(device(&labels(&[("gpu", "0"), ("namespace", "")])).is_none());
    }
}
