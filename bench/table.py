#!/usr/bin/env python
"""Render the JSON of one or more ``bench/skill.py --out`` runs as the Markdown table of the README.

    .venv/bin/python bench/table.py out/skill_random.json out/skill_clustered.json

Rows are ordered by network kind, station count and method (the order of ``bench/skill.py``'s methods);
``--label NAME=LABEL`` renames a method (e.g. for an ablation run). Columns: air-temperature RMSE, CRPS,
spread/skill and 90 % coverage (K), the same RMSE and CRPS averaged over the four variables in climatological
standard deviations, and the median wall seconds per day.

``--paired BASE`` prints instead, for every other method, its air-temperature CRPS and RMSE relative to method
``BASE`` on the same network and days: the mean over days of (method − BASE) / BASE in %, ± its standard error
over the days (runs with ``crps_per_day``, bench/skill.py since issue 12), with the spread/skill and the
rank-histogram flatness (χ²/N) of both::

    .venv/bin/python bench/table.py out/s12_rto_r8lr.json --paired latent
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ORDER = ("climatology", "oi", "tsvd", "tsvd_eq", "seed", "latent", "smoother", "oi_window", "oi_win_noadv",
         "latent_window", "latent_window_rc", "latent_window_nl")


def rows(records: list[dict], labels: dict[str, str], digits: int = 2) -> list[str]:
    def key(r):
        m = r["method"]
        return (r["network"], r["stations"], ORDER.index(m) if m in ORDER else len(ORDER), labels.get(m, m))

    out = ["| network | stations | method | T RMSE | T CRPS | T spread/skill | T 90% cov. | all RMSE | all CRPS "
           "| s/day |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(records, key=key):
        h, a = r["headline"], r["all_standardised"]
        out.append(f"| {r['network']} | {r['stations']} | {labels.get(r['method'], r['method'])} | "
                   f"{h['rmse']:.{digits}f} | {h['crps']:.{digits}f} | {h['spread_skill']:.2f} | "
                   f"{h['coverage90']:.2f} | {a['rmse']:.3f} | "
                   f"{a['crps']:.3f} | {r['seconds_per_day']:.2f} |")
    return out


def paired_rows(records: list[dict], base: str, labels: dict[str, str]) -> list[str]:
    """Per (network, stations): each method's mean relative T CRPS / RMSE difference to ``base`` ± s.e. over days."""
    import numpy as np

    by = {(r["network"], r["stations"], r["method"]): r for r in records}
    out = [f"| network | stations | method | T CRPS vs {labels.get(base, base)} (%) | T RMSE vs "
           f"{labels.get(base, base)} (%) | T spread/skill (method / base) | T rank χ²/N (method / base) |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for (net, n, m), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        b = by.get((net, n, base))
        if m == base or b is None:
            continue
        h, hb = r["headline"], b["headline"]
        cells = []
        for key in ("crps_per_day", "rmse_per_day"):
            x, y = np.asarray(h[key], dtype=float), np.asarray(hb[key], dtype=float)
            if x.shape != y.shape:
                raise ValueError(f"{net} {n}: {m} and {base} were scored on different days ({x.size} vs {y.size})")
            d = 100.0 * (x - y) / y
            cells.append(f"{d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(d.size):.2f}")
        out.append(f"| {net} | {n} | {labels.get(m, m)} | {cells[0]} | {cells[1]} | "
                   f"{h['spread_skill']:.2f} / {hb['spread_skill']:.2f} | {h['rank_chi2']:.4f} / "
                   f"{hb['rank_chi2']:.4f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", help="bench/skill.py --out files; a file may be given as PATH:PREFIX "
                                           "to prefix its method names (e.g. out/iso.json:iso-)")
    p.add_argument("--label", action="append", default=[], help="METHOD=LABEL renaming a method in the table")
    p.add_argument("--digits", type=int, default=2, help="decimals of the air-temperature RMSE and CRPS (K)")
    p.add_argument("--paired", metavar="BASE", help="relative T CRPS/RMSE of every method to method BASE, paired "
                                                    "over the days (mean ± standard error, %%)")
    a = p.parse_args(argv)
    labels = dict(item.split("=", 1) for item in a.label)
    records = []
    for spec in a.json:
        path, _, prefix = spec.partition(":")
        for r in json.loads(Path(path).read_text())["records"]:
            records.append(dict(r, method=prefix + (r.get("label") or r["method"])))  # label: prior/sampler
    print("\n".join(paired_rows(records, a.paired, labels) if a.paired else rows(records, labels, a.digits)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
