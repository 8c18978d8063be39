"""Baselines of the latent assimilation: same inputs, same output layout (:func:`latentda.analysis.analysis_dataset`,
physical units, with a spread).

Fitted models (``variables, grid, climatology, var_attrs``; ``save``/``load`` to .npz)::

    oi = fit_oi(train_fields, climatology, variables)                  # homogeneous correlation fitted to data
    tsvd = fit_tsvd(train_fields, climatology, variables, truncation)  # EOF / truncated-SVD background

Analyses, with the signature of ``latentda.assimilate``::

    climatology(background, observations, time, members=32, seed=0, **options)
    optimal_interpolation(oi, observations, time, members=32, seed=0, **options)
    tsvd_3dvar(tsvd, observations, time, members=32, seed=0, **options)
    seed_search(prior, observations, time, members=10, seed=0, **options)   # Brohan (2022), 10 restarts
    linear_smoother(smoother, observations, time, members=32, seed=0, window=1)  # VAR(1)-EOF window BLUE
    space_time_oi(model, observations, time, members=32, seed=0, window=1)      # separable space-time OI

``smoother = fit_smoother(train_fields, climatology, variables, rank)`` fits the VAR(1) in EOF space,
``model = fit_space_time_oi(train_fields, climatology, variables)`` the space-time OI's temporal correlation and
zonal advection on top of the OI.

``seed_search`` imports torch when called; the others need numpy/scipy/xarray only.
"""
from .climatology import climatology
from .oi import (CORRELATION_MODELS, OIModel, correlation, empirical_correlation, fit_correlation, fit_oi, load_oi,
                 optimal_interpolation)
from .seed_search import LossNotDecreasing, seed_search
from .smoother import SmootherModel, fit_smoother, linear_smoother
from .space_time_oi import SpaceTimeFitOptions, SpaceTimeOIModel, fit_space_time_oi, space_time_oi
from .tsvd import TSVDModel, fit_tsvd, load_tsvd, tsvd_3dvar

#: name -> analysis function, for benchmarks and flows.
METHODS = {"climatology": climatology, "optimal_interpolation": optimal_interpolation, "tsvd_3dvar": tsvd_3dvar,
           "seed_search": seed_search, "linear_smoother": linear_smoother, "space_time_oi": space_time_oi}

__all__ = ["climatology", "optimal_interpolation", "tsvd_3dvar", "seed_search", "fit_oi", "fit_tsvd", "load_oi",
           "load_tsvd", "OIModel", "TSVDModel", "CORRELATION_MODELS", "correlation", "empirical_correlation",
           "fit_correlation", "LossNotDecreasing", "METHODS", "SmootherModel", "fit_smoother", "linear_smoother",
           "SpaceTimeFitOptions", "SpaceTimeOIModel", "fit_space_time_oi", "space_time_oi"]
