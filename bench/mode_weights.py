#!/usr/bin/env python
"""Weight the residual modes of a trained prior (``latentda.prior.add_mode_weights``): fit each variable's weight
on the validation days of the training years 2000-2004 of the shipped Held-Suarez data, report the fit and save
the weighted prior.

Reported per variable: the fitted weight w (the share of the modes' covariance kept; the rest moves to the isotropic
part), the conditional log score of the validation days' residuals at the fitted and at unit weights (mean over
station-set sizes 25, 100, 400, targets and days; higher is better), and the spread/skill of the residual
predicted from the stations at each size (1 is calibrated, < 1 over-confident).

    PYTHONPATH=$PWD .venv/bin/python bench/mode_weights.py --prior out/prior_hs128.pt \\
        --out out/prior_hs128_mwfit.pt --threads 1

A flow prior (``--prior out/prior_hs128_flow_r8lr.pt``) gets the same weights: the fit uses only the VAE's
residuals, which the flow does not change.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import latentda  # noqa: E402
from latentda.prior import add_mode_weights  # noqa: E402
from window_prior import training_fields  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--prior", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    prior = latentda.load_prior(a.prior, device="cpu")
    t0 = time.perf_counter()
    out = add_mode_weights(prior, training_fields(prior.variables))
    seconds = time.perf_counter() - t0
    info = out.provenance["residual_modes"]
    print(f"{'variable':24s} {'weight':>6s} {'score':>8s} {'unit':>8s}  spread/skill at " +
          ", ".join(f"{n} (unit)" for n in info["sizes"]))
    for c, v in enumerate(out.variables):
        ss = "  ".join(f"{info['spread_skill'][str(n)][c]:.2f} ({info['spread_skill_unweighted'][str(n)][c]:.2f})"
                       for n in info["sizes"])
        print(f"{v:24s} {info['weights'][c]:6.3f} {info['score'][c]:8.4f} {info['score_unweighted'][c]:8.4f}  {ss}")
    sha = out.save(a.out)
    print(json.dumps({"fit_seconds": round(seconds, 1), "residual_modes": info, "sha256": sha, "out": a.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
