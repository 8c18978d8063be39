#!/usr/bin/env python
"""Render the JSON of one or more ``bench/skill.py --out`` runs as the Markdown table of the README.

    .venv/bin/python bench/table.py out/skill_random.json out/skill_clustered.json

Rows are ordered by network kind, station count and method (the order of ``bench/skill.py``'s methods);
``--label NAME=LABEL`` renames a method (e.g. for an ablation run). Columns: air-temperature RMSE, CRPS,
spread/skill and 90 % coverage (K), the same RMSE and CRPS averaged over the four variables in climatological
standard deviations, and the median wall seconds per day.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", help="bench/skill.py --out files; a file may be given as PATH:PREFIX "
                                           "to prefix its method names (e.g. out/iso.json:iso-)")
    p.add_argument("--label", action="append", default=[], help="METHOD=LABEL renaming a method in the table")
    p.add_argument("--digits", type=int, default=2, help="decimals of the air-temperature RMSE and CRPS (K)")
    a = p.parse_args(argv)
    labels = dict(item.split("=", 1) for item in a.label)
    records = []
    for spec in a.json:
        path, _, prefix = spec.partition(":")
        for r in json.loads(Path(path).read_text())["records"]:
            records.append(dict(r, method=prefix + r["method"]))
    print("\n".join(rows(records, labels, a.digits)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
