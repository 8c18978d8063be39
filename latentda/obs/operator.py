"""Point observation operator H: bilinear interpolation of gridded fields to (lat, lon) points on the sphere.

For a field x on a regular grid (lat ascending, lon ascending in [0, 360)) and a point (phi, lam):

    H(x) = (1-a)(1-b) x[j, i] + (1-a) b x[j, i+1] + a (1-b) x[j+1, i] + a b x[j+1, i+1]

with i+1 taken modulo nlon (longitude wrap-around across the dateline / Greenwich seam). Points poleward of the
outermost grid row are interpolated between that row and a virtual pole row holding its zonal mean (the pole is
one point, so it takes one value). The operator is linear: it is stored as 4 indices + 4 weights per observation,
applied in torch (differentiable, batched over ensemble members) or exported as a scipy sparse matrix for the
linear baselines.
"""
from __future__ import annotations

import numpy as np

from ..grid import Grid


class PointOperator:
    """Bilinear H for ``nobs`` points, each reading channel ``channel[k]`` of a (C, nlat, nlon) field.

    Parameters: ``grid``; ``lat``, ``lon`` (nobs,) degrees; ``channel`` (nobs,) int channel index (default 0);
    ``nchannels``: C.
    """

    def __init__(self, grid: Grid, lat, lon, channel=None, nchannels: int = 1) -> None:
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.mod(np.asarray(lon, dtype=np.float64), 360.0)
        if lat.shape != lon.shape or lat.ndim != 1:
            raise ValueError(f"lat and lon must be 1-D of equal length, got {lat.shape} and {lon.shape}")
        if lat.size and (not np.isfinite(lat).all() or np.abs(lat).max() > 90):
            bad = lat[~np.isfinite(lat) | (np.abs(np.nan_to_num(lat, nan=999)) > 90)][0]
            raise ValueError(f"observation latitude {bad} outside [-90, 90]")
        channel = np.zeros(lat.size, dtype=np.int64) if channel is None else np.asarray(channel, dtype=np.int64)
        if channel.size and (channel.min() < 0 or channel.max() >= nchannels):
            raise ValueError(f"channel index out of range [0, {nchannels}): {channel.min()}..{channel.max()}")
        self.grid, self.nchannels, self.nobs = grid, int(nchannels), lat.size
        glat, glon = grid.lat, grid.lon
        nlat, nlon = grid.shape
        # Extended latitude axis: [south pole, rows..., north pole] -> index e = j + 1 for grid row j.
        ext_lat = np.concatenate([[-90.0], glat, [90.0]])
        if glat[0] <= -90.0:
            ext_lat[0] = glat[0] - 1e-9
        if glat[-1] >= 90.0:
            ext_lat[-1] = glat[-1] + 1e-9
        e0 = np.clip(np.searchsorted(ext_lat, lat, side="right") - 1, 0, nlat)
        a = (lat - ext_lat[e0]) / (ext_lat[e0 + 1] - ext_lat[e0])
        # Longitude: grid assumed regular in longitude spacing for wrap (checked), cell i covers [lon_i, lon_i+1).
        dlon = np.diff(np.concatenate([glon, [glon[0] + 360.0]]))
        i0 = np.searchsorted(glon, lon, side="right") - 1  # -1 when lon < glon[0]
        i0 = np.where(i0 < 0, nlon - 1, i0)
        left = glon[i0]
        b = np.mod(lon - left, 360.0) / dlon[i0]
        i1 = (i0 + 1) % nlon
        self.channel = channel
        self._e = np.stack([e0, e0, e0 + 1, e0 + 1], axis=1)  # extended-row index
        self._i = np.stack([i0, i1, i0, i1], axis=1)
        self._w = np.stack([(1 - a) * (1 - b), (1 - a) * b, a * (1 - b), a * b], axis=1)

    # -- numpy -----------------------------------------------------------------------------------------------
    @staticmethod
    def _extend_np(x: np.ndarray) -> np.ndarray:
        """(..., nlat, nlon) -> (..., nlat+2, nlon) with zonal-mean pole rows."""
        south = x[..., :1, :].mean(axis=-1, keepdims=True) * np.ones_like(x[..., :1, :])
        north = x[..., -1:, :].mean(axis=-1, keepdims=True) * np.ones_like(x[..., -1:, :])
        return np.concatenate([south, x, north], axis=-2)

    def apply_np(self, x: np.ndarray) -> np.ndarray:
        """H x for x of shape (..., C, nlat, nlon) -> (..., nobs)."""
        xe = self._extend_np(np.asarray(x))
        vals = xe[..., self.channel[:, None], self._e, self._i]  # (..., nobs, 4)
        return (vals * self._w).sum(axis=-1)

    # -- torch -----------------------------------------------------------------------------------------------
    def apply_torch(self, x):
        """H x for a torch tensor (B, C, nlat, nlon) -> (B, nobs); differentiable."""
        import torch

        south = x[:, :, :1, :].mean(dim=-1, keepdim=True).expand_as(x[:, :, :1, :])
        north = x[:, :, -1:, :].mean(dim=-1, keepdim=True).expand_as(x[:, :, -1:, :])
        xe = torch.cat([south, x, north], dim=-2)
        dev = x.device
        c = torch.as_tensor(self.channel, device=dev)[:, None]
        e = torch.as_tensor(self._e, device=dev)
        i = torch.as_tensor(self._i, device=dev)
        w = torch.as_tensor(self._w, dtype=x.dtype, device=dev)
        vals = xe[:, c, e, i]  # (B, nobs, 4)
        return (vals * w).sum(dim=-1)

    # -- sparse matrix ---------------------------------------------------------------------------------------
    def to_sparse(self):
        """H as a scipy CSR matrix of shape (nobs, C*nlat*nlon) acting on x.reshape(-1) (C, lat, lon order)."""
        import scipy.sparse as sp

        nlat, nlon = self.grid.shape
        rows, cols, vals = [], [], []
        for k in range(4):
            e, i, w = self._e[:, k], self._i[:, k], self._w[:, k]
            inner = (e >= 1) & (e <= nlat)
            obs = np.nonzero(inner)[0]
            rows.append(obs)
            cols.append(self.channel[obs] * nlat * nlon + (e[obs] - 1) * nlon + i[obs])
            vals.append(w[obs])
            for pole_e, row in ((0, 0), (nlat + 1, nlat - 1)):
                obs = np.nonzero(e == pole_e)[0]
                if obs.size:
                    rows.append(np.repeat(obs, nlon))
                    cols.append((self.channel[obs] * nlat * nlon + row * nlon)[:, None].repeat(nlon, 1).ravel()
                                + np.tile(np.arange(nlon), obs.size))
                    vals.append(np.repeat(w[obs] / nlon, nlon))
        m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(self.nobs, self.nchannels * nlat * nlon))
        m.sum_duplicates()
        return m
