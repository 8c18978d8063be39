#!/usr/bin/env python
"""Fit the latent flow of a flow prior (PAE, ``latentda.prior.add_flow``) to an existing VAE checkpoint and measure
which training latents give the better held-out log-likelihood: encoder means mu(x) (``fit_on=mean``) or posterior
samples mu + sigma * eps (``fit_on=sample``).

Training days: 2000-2004 of the shipped Held-Suarez data (catalog entry ``heldsuarez_daily``), split by the prior's
own validation blocks (the held-out latents are the validation days, never seen by the VAE or the flow). For each
``fit_on`` the flow is fitted, then both flows are scored on both kinds of held-out latents (mean negative
log-likelihood per latent dimension, nats; lower is better), beside N(0, I) (the VAE prior's own term). The flow of
``--keep`` is saved with the VAE as ``--out``.

How to run (from the repository root; minutes at 1 thread)::

    .venv/bin/python bench/flow_prior.py --prior out/prior_hs128.pt --out out/prior_hs128_flow.pt --threads 1
    .venv/bin/python bench/flow_prior.py --prior out/prior_hs128.pt --fit-on mean --out out/pae.pt   # one fit only
    .venv/bin/python bench/flow_prior.py --prior out/prior_hs128.pt --out out/pae.pt --threads 1 \
        --flow-options '{"flow_transforms": 2, "flow_hidden": 64, "flow_rotations": 1}'   # small: a loaded CPU
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time as _time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from early_threads import early_threads  # noqa: E402

_THREADS = early_threads(sys.argv[1:])

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import latentda  # noqa: E402
from latentda.grid import normalize_grid  # noqa: E402
from latentda.prior.flow import gaussian_nll  # noqa: E402
from latentda.prior.flowfit import add_flow, encoded_latents  # noqa: E402
from latentda.prior.train import split_blocks  # noqa: E402

TRAIN = ("2000-01-01", "2004-12-31")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", required=True, help="VAE prior checkpoint")
    p.add_argument("--out", required=True, help="write the flow prior (VAE + flow of --keep) here")
    p.add_argument("--fit-on", default="mean,sample", help="comma list of mean, sample")
    p.add_argument("--keep", default="mean", choices=("mean", "sample"))
    p.add_argument("--catalog", default=str(ROOT / "catalogs" / "demo.yaml"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the measurements as JSON here")
    p.add_argument("--flow-options", type=json.loads, default={},
                   help='PriorConfig flow_* overrides as JSON, e.g. \'{"flow_hidden": 64, "flow_rotations": 1}\'')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout, force=True)
    from tasks.catalog import read_fields

    prior = latentda.load_prior(args.prior, device="cpu")
    fields = normalize_grid(read_fields(args.catalog, "heldsuarez_daily")).sortby("time")
    train = fields.sel(time=slice(*TRAIN))[prior.variables].load()
    cfg = prior.config
    _, val_idx = split_blocks(train.sizes["time"], cfg.val_fraction, cfg.val_block_days, cfg.seed)
    X = torch.as_tensor(prior.anomalies(train))
    rot = int(args.flow_options.get("flow_rotations", cfg.flow_rotations)) if cfg.zonal_symmetry else 1
    held = {kind: encoded_latents(prior.encode, X, val_idx, kind, cfg.flow_samples, cfg.seed + 99, rot)
            for kind in ("mean", "sample")}
    result = {"prior": args.prior, "n_train_days": int(train.sizes["time"] - val_idx.size),
              "n_val_days": int(val_idx.size), "rotations": rot,
              "gaussian_nll": {k: gaussian_nll(z) for k, z in held.items()}, "flows": {}}
    print(f"held-out N(0, I) NLL per dim: mean-latents {result['gaussian_nll']['mean']:.4f}, "
          f"sample-latents {result['gaussian_nll']['sample']:.4f}", flush=True)
    kinds = [k for k in args.fit_on.split(",") if k]
    for kind in sorted(kinds, key=lambda k: k != args.keep):  # the kept one first: saved as soon as it exists
        t0 = _time.perf_counter()
        pae = add_flow(prior, train, **{**args.flow_options, "flow_fit_on": kind})
        secs = _time.perf_counter() - t0
        with torch.no_grad():
            nll = {k: float(-pae.flow.log_prob(z).double().mean()) / z.shape[1] for k, z in held.items()}
        result["flows"][kind] = {"seconds": round(secs, 1), "heldout_nll": nll, "fit": pae.flow.fit_info}
        print(f"flow fit on {kind}: {secs:.0f} s, {pae.flow.fit_info['epochs_run']} epochs "
              f"(best {pae.flow.fit_info['best_epoch']}); held-out NLL per dim on mean-latents "
              f"{nll['mean']:.4f}, on sample-latents {nll['sample']:.4f}", flush=True)
        if kind == args.keep:
            result["saved_sha256"] = pae.save(args.out)
            print(f"wrote {args.out}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
