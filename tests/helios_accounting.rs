//! Accounting exactness on a real trace: SenseTime's Helios "Earth" cluster, May 2020, eight virtual
//! clusters, one row per minute (../shared/data/helios-earth-vcs). Each row becomes one sample
//! (tenant = the VC, gpus = running_gpu_num, interval 60 s, ts = the row's time in UTC); after
//! replay every tenant's lifetime and window values must equal plain sums over the CSV.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;

use trainspotter::config::Config;
use trainspotter::replay::replay;
use trainspotter::traces::{read_helios_vc, HeliosRow as Row};

#[test]
fn helios_tenant_totals_and_windows_equal_plain_sums() {
    let dir = common::shared_data().join("helios-earth-vcs");
    let mut vcs: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for entry in
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
    {
        let p = entry.unwrap().path();
        let name = p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(".csv.gz")
            .to_string();
        vcs.insert(name, read_helios_vc(&p).unwrap());
    }
    assert_eq!(vcs.len(), 8, "eight virtual clusters");

    // Rows interleaved by time, as a collector would deliver them. Zero-GPU minutes carry no usage
    // (and `gpus` must be positive), so they are not sent.
    let mut events: Vec<(i64, String, u64)> = Vec::new();
    for (vc, rows) in &vcs {
        events.extend(
            rows.iter()
                .filter(|r| r.gpus > 0)
                .map(|r| (r.ts_ms, vc.clone(), r.gpus)),
        );
    }
    events.sort();
    let mut ndjson = String::new();
    for (ts, vc, gpus) in &events {
        ndjson.push_str(&format!(
            "{{\"ts\":{ts},\"tenant\":\"{vc}\",\"gpus\":{gpus},\"interval_s\":60}}\n"
        ));
    }

    let cfg = Config::default();
    let report = replay(
        &cfg,
        &mut Cursor::new(ndjson),
        &mut std::io::sink(),
        None,
        false,
    )
    .unwrap();
    assert_eq!(report.events.accepted as usize, events.len());
    assert_eq!(
        report.events.rejected + report.events.duplicate + report.events.late,
        0
    );

    let latest = events.iter().map(|e| e.0).max().unwrap();
    let specs = cfg.validate().unwrap().windows;
    assert_eq!(report.tenants.len(), 8);
    for t in &report.tenants {
        let rows = &vcs[&t.tenant];
        let total: u64 = rows.iter().map(|r| r.gpus * 60).sum();
        assert_eq!(t.accelerator_seconds, total as f64, "{} lifetime", t.tenant);
        for (i, w) in specs.iter().enumerate() {
            let end = w.end_after(latest);
            let expected: u64 = rows
                .iter()
                .filter(|r| r.ts_ms >= end - w.width_ms() && r.ts_ms < end)
                .map(|r| r.gpus * 60)
                .sum();
            assert_eq!(
                t.windows.0[i],
                (w.name.clone(), expected as f64),
                "{} window {}",
                t.tenant,
                w.name
            );
        }
    }
    // The published figure for vc6YE: 139,684 GPU-hours in May 2020.
    let vc6ye = report.tenants.iter().find(|t| t.tenant == "vc6YE").unwrap();
    assert_eq!((vc6ye.accelerator_seconds / 3600.0).round(), 139_684.0);
}
