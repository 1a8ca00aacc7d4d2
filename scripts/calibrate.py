#!/usr/bin/env python3
"""Derives the simulator's calibration constants from the shared real traces.

Prints the statistics that src/scenario/calibration.rs holds, each with the file and statistic it
comes from, so the constants can be re-derived and checked:

    python3 scripts/calibrate.py --data ../shared/data

Standard library only.
"""
import argparse
import csv
import math
import os
import statistics


def quantile(sorted_values, q):
    """Linear-interpolation quantile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def acme_busy_quantiles(data, source, metric, busy_above):
    """Quantiles of an AcmeTrace CDF conditioned on value > busy_above (the busy part)."""
    pts = []
    with open(os.path.join(data, "acmetrace", "acme_util_cdfs.csv")) as f:
        for row in csv.DictReader(f):
            if row["source_pkl"] == source and row["metric"] == metric:
                pts.append((float(row["value"]), float(row["cdf_percent"])))
    pts.sort(key=lambda p: p[1])
    busy = [v for v, _ in pts if v > busy_above]
    busy.sort()
    share = len(busy) / len(pts)
    return share, [quantile(busy, q) for q in (0.1, 0.25, 0.5, 0.75, 0.9)]


def cv_stats(data):
    vals = []
    per_job_median = []
    with open(os.path.join(data, "alibaba-gpu-v2020-minibatch", "coefficient_variation.csv")) as f:
        r = csv.reader(f)
        next(r)
        for row in r:
            v = [float(x) for x in row[1:] if x != ""]
            vals.extend(v)
            per_job_median.append(statistics.median(v))
    vals.sort()
    per_job_median.sort()
    return (
        [quantile(vals, q) for q in (0.1, 0.5, 0.9, 0.99)],
        sum(1 for v in vals if v > 0.2) / len(vals),
        [quantile(per_job_median, q) for q in (0.1, 0.5, 0.9)],
    )


def straggler_ratio(data):
    """Slowest worker's mean mini-batch time over the median worker's, per job_*_norm.csv."""
    out = {}
    d = os.path.join(data, "alibaba-gpu-v2020-minibatch")
    for name in sorted(os.listdir(d)):
        if not name.startswith("job_") or not name.endswith("_norm.csv"):
            continue
        per_worker = {}
        with open(os.path.join(d, name)) as f:
            for row in csv.DictReader(f):
                per_worker.setdefault(row["worker"], []).append(float(row["batch_time_norm"]))
        means = sorted(statistics.mean(v) for v in per_worker.values())
        out[name] = max(means) / statistics.median(means)
    return out


def openb(data):
    sizes = {}
    life_h = []
    milli = []
    created = []
    with open(os.path.join(data, "alibaba-gpu-v2023-openb", "openb_pod_list_default.csv")) as f:
        for row in csv.DictReader(f):
            n = int(row["num_gpu"])
            sizes[n] = sizes.get(n, 0) + 1
            if n == 0 or row["deletion_time"] == "" or row["scheduled_time"] == "":
                continue
            start, end = float(row["scheduled_time"]), float(row["deletion_time"])
            if end <= start:
                continue
            life_h.append((end - start) / 3600.0)
            created.append(float(row["creation_time"]))
            if n == 1:
                milli.append(int(row["gpu_milli"]))
    life_h.sort()
    milli.sort()
    span_h = (max(created) - min(created)) / 3600.0
    return sizes, [quantile(life_h, q) for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)], [
        quantile(milli, q) for q in (0.1, 0.25, 0.5, 0.75, 0.9)
    ], len(created) / span_h, len(life_h)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data", help="the shared data folder")
    a = p.parse_args()
    for src in ("util_gpu_seren", "util_gpu_kalos_full"):
        share, q = acme_busy_quantiles(a.data, src, "SM_ACTIVE_pct", 1.0)
        print(f"acmetrace {src} SM_ACTIVE_pct | >1%: share {share:.3f}, p10/25/50/75/90 {[round(x, 1) for x in q]}")
        share, q = acme_busy_quantiles(a.data, src, "FB_USED_pct_of_80GB", 1.0)
        print(f"acmetrace {src} FB_USED_pct | >1%: share {share:.3f}, p10/25/50/75/90 {[round(x, 1) for x in q]}")
        share, q = acme_busy_quantiles(a.data, src, "GPU_UTIL_pct", 1.0)
        print(f"acmetrace {src} GPU_UTIL_pct | >1%: share {share:.3f}, p10/25/50/75/90 {[round(x, 1) for x in q]}")
    for src in ("gpu_power_seren", "gpu_power_kalos"):
        share, q = acme_busy_quantiles(a.data, src, "GPU_POWER_W", 150.0)
        print(f"acmetrace {src} GPU_POWER_W | >150 W: share {share:.3f}, p10/25/50/75/90 {[round(x, 1) for x in q]}")
    q, frac, job_med = cv_stats(a.data)
    print(f"alibaba coefficient_variation: all values p10/50/90/99 {[round(x, 4) for x in q]}, share > 0.2 {frac:.4f}")
    print(f"alibaba coefficient_variation: per-job median p10/50/90 {[round(x, 4) for x in job_med]}")
    for name, r in straggler_ratio(a.data).items():
        print(f"alibaba {name}: slowest worker mean / median worker mean {r:.3f}")
    sizes, life, milli, rate, n = openb(a.data)
    print(f"openb num_gpu counts {dict(sorted(sizes.items()))}")
    print(f"openb GPU pod lifetime hours (n={n}) p10/25/50/75/90/99 {[round(x, 3) for x in life]}")
    print(f"openb 1-GPU gpu_milli p10/25/50/75/90 {milli}")
    print(f"openb GPU pods created per hour {rate:.2f}")


if __name__ == "__main__":
    main()
