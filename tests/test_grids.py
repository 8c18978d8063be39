"""Any regular global grid: the VAE pads internally (grids with pole rows: 73 x 144, 181 x 360), a prior trains
and assimilates on them, and the grid utilities, the point operator and the representation-error smoother handle
pole rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from latentda.da import assimilate
from latentda.da.ensemble import GaussianSmoother, RepresentationError
from latentda.grid import Grid
from latentda.obs.operator import PointOperator
from latentda.prior import train_prior
from latentda.prior.vae import ConvVAE
from latentda.testing import synthetic_fields, synthetic_observations

VARS = ("air_temperature", "surface_air_pressure")
#: seconds: a 1-epoch prior with a 4-number latent and 4 base channels
TINY = dict(latent_dim=4, base_channels=4, epochs=1, batch_size=16, n_harmonics=1, kl_warmup_epochs=0,
            device="cpu", num_threads=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pole_row_grid():
    g = Grid.regular(73, 144, poles=True)
    assert g.lat[0] == -90 and g.lat[-1] == 90 and np.allclose(np.diff(g.lat), 2.5) and g.shape == (73, 144)
    assert np.all(g.weights() >= 0) and g.weights()[0] < 1e-10
    with pytest.raises(ValueError, match="nlat >= 3"):
        Grid.regular(2, 8, poles=True)


@pytest.mark.parametrize("shape", [(73, 144), (181, 360)])
def test_prior_trains_and_assimilates_on_pole_row_grids(shape):
    """73 x 144 and 181 x 360 (pole rows, 2**3 divides neither nlat): train 1 epoch, decode to the grid, analyse
    a day whose observations include both poles."""
    nlat, nlon = shape
    fields = synthetic_fields(ntime=48, nlat=nlat, nlon=nlon, variables=VARS, poles=True)
    prior = train_prior(fields, TINY, progress=False)
    assert prior.model.n_down == 3 and prior.model.pad[2] == 0 and sum(prior.model.pad[:2]) == (-nlat) % 8
    with torch.no_grad():
        x = prior.decode(torch.zeros(2, 4))
    assert x.shape == (2, 2, nlat, nlon) and torch.isfinite(x).all()
    day = pd.Timestamp(fields["time"].values[40])
    obs = synthetic_observations(fields, n=30, seed=1, time=day)
    poles = obs.iloc[:2].copy()
    poles["lat"] = [90.0, -90.0]
    ds = assimilate(prior, pd.concat([obs, poles], ignore_index=True), day, members=4, seed=0, max_iter=20)
    assert int(ds["obs_used"].values.item()) == len(obs) + 2
    for v in VARS:
        a = ds[v].values[0]
        assert a.shape == (nlat, nlon) and np.isfinite(a).all()
        # the analysed pole rows are single points: one value along the row up to the decoder's own variation
        assert np.isfinite(ds[f"{v}_spread"].values).all()


def test_divisible_grids_are_not_padded():
    """48 x 96 and 16 x 32: no padding, encode/decode are the plain encoder/decoder (same bits as before)."""
    for nlat, nlon in ((48, 96), (16, 32)):
        torch.manual_seed(0)
        m = ConvVAE(3, nlat, nlon, latent_dim=8, base_channels=4)
        assert m.pad == (0, 0, 0) and m.coarse == (nlat // 8, nlon // 8)
        z = torch.randn(2, 8)
        h = torch.nn.functional.silu(m.from_latent(z)).view(2, m.channels[-1], *m.coarse)
        assert torch.equal(m.decode(z), m.decoder(h))
        x = torch.randn(2, 3, nlat, nlon)
        assert torch.equal(m.encode(x)[0], m.to_latent(m.encoder(x).flatten(1)).chunk(2, dim=1)[0])


def test_padding_is_replicated_rows_and_wrapped_columns():
    m = ConvVAE(1, 5, 6, latent_dim=2, base_channels=2, n_down=2)  # -> 8 x 8: rows 1 south, 2 north; 2 columns
    assert m.pad == (1, 2, 2)
    x = torch.arange(30.0).reshape(1, 1, 5, 6)
    p = m._pad_input(x)
    assert p.shape == (1, 1, 8, 8)
    assert torch.equal(p[0, 0, 1:6, :6], x[0, 0]) and torch.equal(p[0, 0, 1:6, 6:], x[0, 0, :, :2])
    assert torch.equal(p[0, 0, 0], p[0, 0, 1]) and torch.equal(p[0, 0, 6], p[0, 0, 5]) and torch.equal(p[0, 0, 7],
                                                                                                      p[0, 0, 5])
    assert torch.equal(m._crop(p), x)


def test_point_operator_at_the_poles_of_a_pole_row_grid():
    """On a grid with pole rows (one value per pole, as in ERA5) an observation at ±90 reads that value at any
    longitude; one just off the pole interpolates between the last two rows."""
    g = Grid.regular(7, 8, poles=True)  # rows -90, -60, ..., 90
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 7, 8))
    x[0, 0], x[0, -1] = 0.7, -1.3
    op = PointOperator(g, [90.0, -90.0, 89.0, 90.0], [10.0, 200.0, 0.0, 359.0])
    got = op.apply_np(x[None])[0]
    np.testing.assert_allclose(got[[0, 1, 3]], [-1.3, 0.7, -1.3], rtol=0, atol=1e-12)
    a = 29.0 / 30.0  # 89° lies 29/30 of the way from row 60° to row 90°
    assert got[2] == pytest.approx((1 - a) * x[0, -2, 0] + a * -1.3, abs=1e-9)
    np.testing.assert_allclose(op.to_sparse() @ x.reshape(-1), got, atol=1e-12)


def test_smoother_on_a_pole_row_grid_is_unit_variance_and_flat_at_the_poles():
    g = Grid.regular(37, 72, poles=True)
    s = GaussianSmoother(g, 800.0)
    S = s.matrix()
    np.testing.assert_allclose((S ** 2).sum(1), 1.0, rtol=1e-5)
    w = torch.as_tensor(np.random.default_rng(1).standard_normal((2, 37, 72)))
    out = s.apply(w)
    assert torch.allclose(out[:, 0], out[:, 0, :1].expand(-1, 72), atol=1e-6)  # the pole is one point
    rep = RepresentationError(g, torch.ones(1, 37, 72), 800.0)
    op = PointOperator(g, [90.0, -90.0, 0.0, 45.0], [0.0, 0.0, 100.0, 33.0])
    np.testing.assert_allclose(rep.variance_from_table(op), np.diag(rep.at_observations(op).cov.numpy()), rtol=1e-5)
