//! Accelerator catalog: reported model names in, peak dense FLOP/s out.
//!
//! Names are matched by tokens, not substrings, so "NVIDIA A10" never matches the A100 entry and
//! "NVIDIA A100-SXM4-80GB" never matches the A10 entry. Entries from the configuration come first
//! and so override the built-in table. An unknown model is never guessed silently: the lookup says
//! so, the caller counts it, and the configured fallback peak is used.

use std::sync::Arc;

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

/// Distinct model names remembered; real fleets have a few dozen.
const MEMO_LIMIT: usize = 4096;

/// Names resolved most recently, compared before the memo is asked.
const RECENT: usize = 4;

/// One catalog entry as configured: a canonical name, the tokens that identify it and its peak.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcceleratorSpec {
    /// Canonical name reported in evidence, e.g. "H100 SXM".
    pub name: String,
    /// Every one of these tokens must appear in the normalised model name.
    pub all_of: Vec<String>,
    /// None of these tokens may appear.
    #[serde(default)]
    pub none_of: Vec<String>,
    /// Peak dense (no sparsity) BF16/FP16 TFLOP/s per device.
    pub bf16_tflops: f64,
}

/// What a model name resolved to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakFlops {
    /// Peak dense FLOP/s per device.
    pub flops: f64,
    /// The model, by index (its name is [`Catalog::name`]); `None` when it was not recognised.
    pub model: Option<u16>,
}

/// The accelerator catalog: ordered specs plus a memo of names already resolved.
#[derive(Debug)]
pub struct Catalog {
    specs: Vec<AcceleratorSpec>,
    fallback_flops: f64,
    /// Resolved names (model names repeat millions of times; tokenising each once is enough).
    /// The catalog is owned by the state task, so the memo needs no lock. Looked up once per
    /// sample, so it hashes with aHash rather than SipHash.
    memo: AHashMap<Arc<str>, Option<u16>>,
    /// The memoised names resolved most recently (up to [`RECENT`], the oldest replaced first),
    /// sharing the memo's copies: a fleet reports a few models, so nearly every sample's name is
    /// one of them, and comparing its bytes with a few costs less than hashing it.
    recent: Vec<(Arc<str>, Option<u16>)>,
    /// The slot of `recent` a name not found in it replaces, once `recent` is full.
    replace: usize,
}

macro_rules! spec {
    ($name:expr, [$($all:expr),*], [$($none:expr),*], $tf:expr) => {
        AcceleratorSpec {
            name: $name.to_string(),
            all_of: vec![$($all.to_string()),*],
            none_of: vec![$($none.to_string()),*],
            bf16_tflops: $tf,
        }
    };
}

/// The built-in table (DOMAIN.md; dense BF16/FP16, per device). Order matters: specific first.
pub fn builtin_specs() -> Vec<AcceleratorSpec> {
    vec![
        spec!("GB200", ["gb200"], [], 2500.0),
        spec!("B200", ["b200"], [], 2250.0),
        spec!("H200", ["h200"], [], 989.0),
        spec!("H100 PCIe", ["h100", "pcie"], [], 756.0),
        spec!("H100 NVL", ["h100", "nvl"], [], 835.0),
        spec!("H100 SXM", ["h100"], [], 989.0),
        spec!("A100", ["a100"], [], 312.0),
        spec!("V100 PCIe", ["v100", "pcie"], [], 112.0),
        spec!("V100 SXM2", ["v100"], [], 125.0),
        spec!("L40S", ["l40s"], [], 362.0),
        spec!("A10", ["a10"], [], 125.0),
        spec!("T4", ["t4"], [], 65.0),
        spec!("MI250X", ["mi250x"], [], 383.0),
        spec!("MI325X", ["mi325x"], [], 1307.0),
        spec!("MI300X", ["mi300x"], [], 1307.0),
        spec!("TPU v5p", ["tpu", "v5p"], [], 459.0),
        spec!("TPU v5e", ["tpu", "v5e"], [], 197.0),
        spec!("TPU v5e", ["tpu", "v5", "lite"], [], 197.0),
        spec!("TPU v4", ["tpu", "v4"], [], 275.0),
        spec!("Gaudi3", ["gaudi3"], [], 1835.0),
        spec!("Gaudi2", ["gaudi2"], [], 432.0),
    ]
}

/// Lower-cases a model name and splits it into alphanumeric tokens.
/// "NVIDIA A100-SXM4-80GB" -> ["nvidia", "a100", "sxm4", "80gb"]; "TPU-v5p" -> ["tpu", "v5p"].
fn tokens(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

impl Catalog {
    /// Configured entries take precedence over the built-in ones.
    pub fn new(overrides: &[AcceleratorSpec], fallback_tflops: f64) -> Self {
        let mut specs = overrides.to_vec();
        specs.extend(builtin_specs());
        Catalog {
            specs,
            fallback_flops: fallback_tflops * 1e12,
            memo: AHashMap::new(),
            recent: Vec::with_capacity(RECENT),
            replace: 0,
        }
    }

    fn match_name(&self, name: &str) -> Option<u16> {
        let toks = tokens(name);
        let has = |t: &String| toks.iter().any(|x| x == t);
        self.specs
            .iter()
            .position(|s| s.all_of.iter().all(has) && !s.none_of.iter().any(has))
            .map(|i| i as u16)
    }

    /// Resolves a reported model name; `None` (not reported) and unknown names get the fallback.
    pub fn resolve(&mut self, name: Option<&str>) -> PeakFlops {
        let Some(name) = name else {
            return PeakFlops {
                flops: self.fallback_flops,
                model: None,
            };
        };
        let model = match self.recent.iter().find(|(n, _)| **n == *name) {
            Some(&(_, m)) => m,
            None => self.resolve_not_recent(name),
        };
        match model {
            Some(i) => PeakFlops {
                flops: self.specs[i as usize].bf16_tflops * 1e12,
                model,
            },
            None => PeakFlops {
                flops: self.fallback_flops,
                model: None,
            },
        }
    }

    /// The model of a name not among the recent ones, which joins them if it is memoised.
    #[inline(never)]
    fn resolve_not_recent(&mut self, name: &str) -> Option<u16> {
        let entry = match self.memo.get_key_value(name) {
            Some((n, m)) => (n.clone(), *m),
            None => {
                let m = self.match_name(name);
                // Names come from outside: bound the memo so junk names cannot grow it forever.
                if self.memo.len() >= MEMO_LIMIT {
                    return m;
                }
                let n: Arc<str> = Arc::from(name);
                self.memo.insert(n.clone(), m);
                (n, m)
            }
        };
        let model = entry.1;
        if self.recent.len() < RECENT {
            self.recent.push(entry);
        } else {
            self.recent[self.replace] = entry;
            self.replace = (self.replace + 1) % RECENT;
        }
        model
    }

    /// Canonical name of a resolved model index.
    pub fn name(&self, model: u16) -> &str {
        &self.specs[model as usize].name
    }

    pub fn fallback_flops(&self) -> f64 {
        self.fallback_flops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(c: &mut Catalog, model: &str) -> Option<String> {
        let m = c.resolve(Some(model)).model;
        m.map(|i| c.name(i).to_string())
    }

    #[test]
    fn matches_dcgm_exporter_model_names() {
        let mut c = Catalog::new(&[], 989.0);
        let cases = [
            ("NVIDIA H100 80GB HBM3", "H100 SXM"),
            ("NVIDIA H100 PCIe", "H100 PCIe"),
            ("NVIDIA H100 NVL", "H100 NVL"),
            ("NVIDIA H200", "H200"),
            ("NVIDIA H200 141GB HBM3e", "H200"),
            ("NVIDIA B200", "B200"),
            ("NVIDIA GB200", "GB200"),
            ("NVIDIA A100-SXM4-80GB", "A100"),
            ("NVIDIA A100-SXM4-40GB", "A100"),
            ("NVIDIA A100 80GB PCIe", "A100"),
            ("NVIDIA A10", "A10"),
            ("Tesla V100-SXM2-32GB", "V100 SXM2"),
            ("Tesla V100-PCIE-16GB", "V100 PCIe"),
            ("Tesla T4", "T4"),
            ("NVIDIA L40S", "L40S"),
            ("AMD Instinct MI300X", "MI300X"),
            ("AMD Instinct MI250X", "MI250X"),
            ("TPU v4", "TPU v4"),
            ("tpu-v5p", "TPU v5p"),
            ("TPU v5 lite", "TPU v5e"),
            ("Intel Gaudi2", "Gaudi2"),
        ];
        for (reported, expected) in cases {
            assert_eq!(
                name_of(&mut c, reported).as_deref(),
                Some(expected),
                "{reported}"
            );
        }
    }

    #[test]
    fn a_name_resolves_the_same_whichever_names_came_before_it() {
        let names = [
            "NVIDIA H100 80GB HBM3",
            "NVIDIA A100-SXM4-80GB",
            "NVIDIA A10",
            "Tesla T4",
            "Quantum Abacus 9000",
            "NVIDIA H100 PCIe",
            "NVIDIA B200",
        ];
        let mut c = Catalog::new(&[], 989.0);
        // Runs of one name, alternations of two, and sweeps over more names than are kept recent,
        // forwards and backwards, so that every slot of the recent names is replaced.
        let order = (0..names.len())
            .flat_map(|i| [i, i, i])
            .chain((0..40).map(|k| [0, 1][k % 2]))
            .chain((0..3).flat_map(|_| 0..names.len()))
            .chain((0..3).flat_map(|_| (0..names.len()).rev()))
            .chain((0..60).map(|k| (k * 5) % names.len()));
        for i in order {
            let expected = Catalog::new(&[], 989.0).resolve(Some(names[i]));
            assert_eq!(c.resolve(Some(names[i])), expected, "{}", names[i]);
        }
        assert!(c.recent.len() <= RECENT);
        // A name turning over costs no copy: the recent names are the memo's own.
        assert!(c
            .recent
            .iter()
            .all(|(n, _)| Arc::ptr_eq(n, c.memo.get_key_value(&**n).unwrap().0)));
    }

    #[test]
    fn peaks_are_dense_bf16() {
        let mut c = Catalog::new(&[], 989.0);
        assert_eq!(c.resolve(Some("NVIDIA H100 80GB HBM3")).flops, 989e12);
        assert_eq!(c.resolve(Some("NVIDIA A100-SXM4-80GB")).flops, 312e12);
        assert_eq!(c.resolve(Some("NVIDIA B200")).flops, 2250e12);
    }

    #[test]
    fn unknown_and_missing_models_use_the_fallback_and_say_so() {
        let mut c = Catalog::new(&[], 500.0);
        let p = c.resolve(Some("Quantum Abacus 9000"));
        assert_eq!(
            p,
            PeakFlops {
                flops: 500e12,
                model: None
            }
        );
        assert_eq!(c.resolve(None).model, None);
        // "A1000" is not an A100 nor an A10.
        assert_eq!(c.resolve(Some("NVIDIA RTX A1000")).model, None);
    }

    #[test]
    fn configured_entries_override_builtin_ones() {
        let custom = spec!("H100 FP8 accounting", ["h100"], [], 1979.0);
        let mut c = Catalog::new(&[custom], 989.0);
        assert_eq!(c.resolve(Some("NVIDIA H100 80GB HBM3")).flops, 1979e12);
        assert_eq!(
            name_of(&mut c, "NVIDIA H100 80GB HBM3").as_deref(),
            Some("H100 FP8 accounting")
        );
    }
}
