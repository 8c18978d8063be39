"""Skill metrics (WeatherBench2 definitions): each a small function with its formula in the docstring.

* deterministic: :func:`lat_weights`, :func:`spatial_mean`, :func:`rmse`, :func:`bias`, :func:`mse`, :func:`mae`
* probabilistic: :func:`crps_ensemble` (fair, Zamo & Naveau), :func:`crps_gaussian`, :func:`spread_skill_ratio`,
  :func:`spread_skill_ratio_gaussian`, :func:`interval_coverage`, :func:`interval_coverage_gaussian`,
  :func:`rank_histogram`, :func:`rank_histogram_chi2`
* observation space: :func:`departures`, :func:`departure_stats`, :func:`omb_oma`
"""
from .deterministic import bias, lat_weights, mae, mse, rmse, spatial_mean
from .obs_space import departure_stats, departures, omb_oma
from .probabilistic import (crps_ensemble, crps_ensemble_pointwise, crps_gaussian, crps_gaussian_pointwise,
                            ensemble_variance, interval_coverage, interval_coverage_gaussian, rank_histogram,
                            rank_histogram_chi2, spread_skill_ratio, spread_skill_ratio_gaussian)

__all__ = ["bias", "lat_weights", "mae", "mse", "rmse", "spatial_mean", "departure_stats", "departures",
           "omb_oma", "crps_ensemble", "crps_ensemble_pointwise", "crps_gaussian", "crps_gaussian_pointwise",
           "ensemble_variance", "interval_coverage", "interval_coverage_gaussian", "spread_skill_ratio",
           "spread_skill_ratio_gaussian", "rank_histogram", "rank_histogram_chi2"]
