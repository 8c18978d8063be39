"""``--threads N`` applied before numpy/torch load their thread pools (BLAS reads the environment at import).

Imported by the benchmark scripts before numpy: ``from early_threads import early_threads``.
"""
from __future__ import annotations

import os


def early_threads(argv: list[str]) -> int | None:
    """Set OMP/OpenBLAS/MKL thread counts from ``--threads N`` (or ``--threads=N``) in ``argv``; returns N."""
    for k, a in enumerate(argv):
        if a.startswith("--threads"):
            val = a.split("=", 1)[1] if "=" in a else (argv[k + 1] if k + 1 < len(argv) else "")
            if val.isdigit() and int(val) > 0:
                for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                    os.environ[var] = val
                return int(val)
    return None
