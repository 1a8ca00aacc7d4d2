//! Memory accounting: the heap bytes the engine state asks for, by what owns them.
//!
//! Figures are the sizes requested from the allocator (tables by their capacity, not their length),
//! so they add up exactly to what the state holds; the allocator's own overhead and fragmentation
//! come on top and show only in the process's RSS, which benchmarks report next to these figures.

use std::collections::{HashMap, HashSet};
use std::mem::size_of;

use serde::Serialize;

/// Heap bytes of the engine state by owner, with how many of each there are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    pub tenants: usize,
    /// Tenant table entries, their windows and the series of samples that name no job.
    pub tenant_bytes: usize,
    pub organisations: usize,
    pub organisation_bytes: usize,
    pub jobs: usize,
    /// Job table entries, accounting windows, detection panes and model counts.
    pub job_bytes: usize,
    /// Device series (of jobs and tenants).
    pub series: usize,
    /// Series table entries and their de-duplication sets.
    pub series_bytes: usize,
    /// Interned names and the sets of keys touched since the last evaluation (the alert book and
    /// the join buffer of metric-per-message formats are not counted).
    pub other_bytes: usize,
}

impl Footprint {
    pub fn total(&self) -> usize {
        self.tenant_bytes
            + self.organisation_bytes
            + self.job_bytes
            + self.series_bytes
            + self.other_bytes
    }

    pub fn add(&mut self, o: &Footprint) {
        self.tenants += o.tenants;
        self.tenant_bytes += o.tenant_bytes;
        self.organisations += o.organisations;
        self.organisation_bytes += o.organisation_bytes;
        self.jobs += o.jobs;
        self.job_bytes += o.job_bytes;
        self.series += o.series;
        self.series_bytes += o.series_bytes;
        self.other_bytes += o.other_bytes;
    }

    pub fn per_job(&self) -> f64 {
        self.job_bytes as f64 / self.jobs.max(1) as f64
    }

    pub fn per_series(&self) -> f64 {
        self.series_bytes as f64 / self.series.max(1) as f64
    }
}

/// Buckets of a hashbrown table (the std and ahash maps) with this capacity.
fn buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        c if c < 8 => c + 1,
        c => c / 7 * 8,
    }
}

/// Bytes of a hashbrown table of `capacity` entries of `entry` bytes: the slots, one control byte
/// each and one group of trailing control bytes.
pub fn table_bytes(capacity: usize, entry: usize) -> usize {
    match buckets(capacity) {
        0 => 0,
        b => b * entry + b + 16,
    }
}

pub fn map_bytes<K, V, S>(m: &HashMap<K, V, S>) -> usize {
    table_of::<K, V>(m.capacity())
}

/// Bytes of a hashbrown table of `capacity` entries of keys `K` and values `V`.
pub fn table_of<K, V>(capacity: usize) -> usize {
    table_bytes(capacity, size_of::<(K, V)>())
}

pub fn set_bytes<K, S>(m: &HashSet<K, S>) -> usize {
    table_bytes(m.capacity(), size_of::<K>())
}

/// Heap bytes of a `SmallVec`: none while its elements are held inline.
pub fn small_vec_bytes<A: smallvec::Array>(v: &smallvec::SmallVec<A>) -> usize {
    if v.spilled() {
        v.capacity() * size_of::<A::Item>()
    } else {
        0
    }
}

/// Bytes of one `Arc<str>` allocation (two reference counts and the text).
pub fn arc_str_bytes(s: &str) -> usize {
    2 * size_of::<usize>() + s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_counts_follow_the_table_growth() {
        let mut m: HashMap<u64, u64> = HashMap::new();
        assert_eq!(map_bytes(&m), 0);
        for i in 0..1000 {
            m.insert(i, i);
            let b = buckets(m.capacity());
            assert!(
                b.is_power_of_two(),
                "capacity {} gives {b} buckets",
                m.capacity()
            );
            assert!(b > m.len());
        }
    }
}
