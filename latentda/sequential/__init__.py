"""Sequential data assimilation on Lorenz-96: the model, twin experiments, classical analysis steps (climatology,
OI, 3D-Var, EnKF with perturbed observations, ETKF, LETKF) and Finn's (2019) amortised analysis network.

Checked against DAPPER's published Sakov et al. (2008) table by ``bench/l96.py``. torch float64, CPU or CUDA.
"""
from .ensemble_filters import enkf_pertobs, etkf, inflate, letkf, rotate
from .l96 import Lorenz96, rk4_step, tendency
from .localisation import gaspari_cohn, periodic_distances
from .static import blue, optimal_interpolation, var3d
from .twin import FINN2019, Twin, TwinConfig, TwinResult, climatology, make_twin, mean_with_ci, run_twin

__all__ = ["FINN2019", "Lorenz96", "Twin", "TwinConfig", "TwinResult", "blue", "climatology", "enkf_pertobs",
           "etkf", "gaspari_cohn", "inflate", "letkf", "make_twin", "mean_with_ci", "optimal_interpolation",
           "periodic_distances", "rk4_step", "rotate", "run_twin", "tendency", "var3d"]
