"""Convolutional VAE for stacks of (lat, lon) fields on a regular global grid.

Shapes: fields are ``(B, C, nlat, nlon)`` standardised anomalies (one channel per variable), latents ``(B, L)``.

Padding is explicit, so that every convolution sees the sphere's topology: circular in longitude (the field is
periodic across the dateline/Greenwich seam) and replicate in latitude (the rows next to the poles are repeated).

Any nlat x nlon works: a grid that 2**n_down does not divide (e.g. 73 x 144, 121 x 240, 181 x 360 with their pole
rows) is padded once on the way in to the next multiple (:func:`grid_padding`: the extra rows split between the
two poles and replicated from the outermost row, the extra columns wrapped around circularly) and the generator's
output is cropped back. Grids that divide are not padded: same network, same bits, same checkpoints.

Encoder: ``n_down`` stride-2 3x3 convolutions (channels ``base * 2**k``, capped at ``4 * base``), each followed by
SiLU, then a linear layer to ``(mu, logvar)``. Decoder (the generator ``g(z)``): a linear layer back to the coarsest
feature map, then ``n_down`` sub-pixel upsamplings (3x3 convolution at the coarse resolution to 4x the channels,
then ``pixel_shuffle`` x2; initialised "ICNR" so that it starts as nearest-neighbour upsampling followed by a
convolution); the last one maps to ``C`` output channels without an activation. Sub-pixel upsampling does the
same arithmetic as "upsample + conv" but avoids two full-resolution copies, which dominate on CPU: it made
decoding 2-4x faster here.

Options (all off by default; a network built without them has the same modules, bits and checkpoint keys as
before they existed): ``dropout`` p on the flattened encoder features (training only); ``res_blocks`` n residual
3x3 blocks ``h + conv(SiLU(conv(h)))`` after every encoder level and before every decoder upsampling (depth);
``linear_path`` a linear encoder/decoder pair beside the network, initialised at the leading EOFs
(:meth:`ConvVAE.init_linear_path`)::

    mu(x) = P (x - m) + NN_mu(x),      g(z) = m + E z + NN(z)

with ``E`` (N, L) the area-weighted EOFs scaled by their standard deviations and ``P`` their pseudo-inverse, and
the network's last layers initialised at zero, so that training starts from the EOF reconstruction.

Loss (negative ELBO per sample, one line): ``0.5 * sum_{c,i,j} w_i (x - g(z))^2 + beta * KL(N(mu, e^logvar) || N(0, I))``
with ``w_i = cos(lat_i) / mean(cos(lat))`` (unit-variance Gaussian likelihood in standardised units, area-weighted).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: logvar is clamped to this range in the encoder (exp() stays finite; variances 1e-13 .. 2e8).
LOGVAR_RANGE = (-30.0, 20.0)


def pad_sphere(x: torch.Tensor, p: int) -> torch.Tensor:
    """Pad a (B, C, nlat, nlon) tensor by ``p`` cells: circular in longitude, replicate in latitude.

    Same values as ``F.pad(x, (p, p, 0, 0), mode="circular")`` then ``F.pad(..., (0, 0, p, p), mode="replicate")``,
    written with ``torch.cat`` because the CUDA backward of replication padding is not deterministic.
    """
    if p == 0:
        return x
    if p > x.shape[-1]:
        raise ValueError(f"padding {p} wider than the {x.shape[-1]} longitudes")
    x = torch.cat([x[..., -p:], x, x[..., :p]], dim=-1)
    south = x[..., :1, :].expand(*x.shape[:-2], p, x.shape[-1])
    north = x[..., -1:, :].expand(*x.shape[:-2], p, x.shape[-1])
    return torch.cat([south, x, north], dim=-2)


class SphereConv2d(nn.Module):
    """3x3 (or k x k, k odd) convolution with explicit spherical padding; ``stride`` 1 keeps the shape, 2 halves it."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size={kernel_size} must be odd")
        self.pad = kernel_size // 2
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_sphere(x, self.pad))


def level_channels(base_channels: int, n_down: int, max_mult: int = 4) -> list[int]:
    """Feature channels after each downsampling: ``base * 2**k`` for k = 0..n_down-1, capped at ``max_mult * base``."""
    return [base_channels * min(2 ** k, max_mult) for k in range(n_down)]


def _padded(size: int, n_down: int) -> int:
    """The smallest multiple of 2**n_down >= size."""
    f = 2 ** n_down
    return -(-size // f) * f


def grid_padding(nlat: int, nlon: int, n_down: int) -> tuple[int, int, int]:
    """(south rows, north rows, east columns) that pad an nlat x nlon grid to multiples of 2**n_down.

    The extra rows are split between the poles (the odd one to the north); the columns are appended east of the
    last longitude, wrapped around from the first. All zero when 2**n_down divides both sizes.
    """
    extra = _padded(nlat, n_down) - nlat
    return extra // 2, extra - extra // 2, _padded(nlon, n_down) - nlon


def choose_n_down(nlat: int, nlon: int, n_down: int | None = None, max_down: int = 3) -> int:
    """Number of stride-2 levels for an ``nlat x nlon`` grid.

    With ``n_down=None``: the largest n <= ``max_down`` such that 2**n divides both sizes and the coarsest map keeps
    >= 2 rows (the grids of earlier versions keep their network); if no n >= 1 divides, ``max_down`` with padding
    (:func:`grid_padding`) as long as the padded coarsest map keeps >= 2 rows. A given ``n_down`` is used with
    padding where needed. ValueError naming the shape if the grid is too small for even one halving.
    """
    if nlat < 2 or nlon < 2:
        raise ValueError(f"grid shape {nlat}x{nlon} (nlat x nlon) is too small for the VAE (>= 2 x 2)")
    if n_down is None:
        for n in range(max_down, 0, -1):
            if nlat % 2 ** n == 0 and nlon % 2 ** n == 0 and nlat // 2 ** n >= 2:
                return n
        for n in range(max_down, 0, -1):
            if _padded(nlat, n) // 2 ** n >= 2:
                return n
        raise ValueError(f"grid shape {nlat}x{nlon} (nlat x nlon) cannot be halved: the VAE needs >= 3 rows")
    if n_down < 1 or _padded(nlat, n_down) // 2 ** n_down < 1:
        raise ValueError(f"n_down={n_down} is impossible for grid shape {nlat}x{nlon} (nlat x nlon); use n_down >= 1")
    return int(n_down)


class SubPixelUp(nn.Module):
    """x2 upsampling by sub-pixel convolution: spherical pad, 3x3 conv cin -> 4*cout, ``pixel_shuffle(2)``.

    (B, cin, h, w) -> (B, cout, 2h, 2w). ICNR initialisation: the 4 sub-pixel kernels start equal, so the layer
    starts as a coarse convolution followed by nearest-neighbour upsampling (no checkerboard at initialisation).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 4 * cout, 3, padding=0)
        with torch.no_grad():
            w0 = nn.Conv2d(cin, cout, 3)  # default init with the fan-in of a cout-channel conv
            self.conv.weight.copy_(w0.weight.repeat_interleave(4, dim=0))
            self.conv.bias.copy_(w0.bias.repeat_interleave(4, dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(pad_sphere(x, 1)), 2)


class ResBlock(nn.Module):
    """Residual block at constant shape: ``h + conv2(SiLU(conv1(h)))``, 3x3 spherical convolutions, then SiLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = SphereConv2d(channels, channels)
        self.conv2 = SphereConv2d(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.silu(h + self.conv2(F.silu(self.conv1(h))))


class ConvVAE(nn.Module):
    """Convolutional VAE: ``encode`` (B, C, nlat, nlon) -> (mu, logvar) each (B, L); ``decode`` (B, L) -> fields.

    Parameters: ``in_channels`` C; grid ``nlat``, ``nlon`` (any; padded internally to multiples of 2**n_down,
    see :func:`grid_padding`); ``latent_dim`` L;
    ``base_channels``; ``n_down`` (see :func:`choose_n_down`); ``max_mult``: channel cap as a multiple of
    ``base_channels`` (see :func:`level_channels`; 1 = the same width at every level); ``dropout``,
    ``res_blocks``, ``linear_path``: the options of the module docstring.
    """

    def __init__(self, in_channels: int, nlat: int, nlon: int, latent_dim: int = 64, base_channels: int = 32,
                 n_down: int | None = None, max_mult: int = 4, dropout: float = 0.0, res_blocks: int = 0,
                 linear_path: bool = False) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("latent_dim", latent_dim),
                            ("base_channels", base_channels), ("max_mult", max_mult)):
            if int(value) < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        if int(res_blocks) < 0:
            raise ValueError(f"res_blocks={res_blocks} must be >= 0")
        self.dropout, self.res_blocks, self.linear_path = float(dropout), int(res_blocks), bool(linear_path)
        self.n_down = choose_n_down(nlat, nlon, n_down)
        self.in_channels, self.nlat, self.nlon = int(in_channels), int(nlat), int(nlon)
        self.latent_dim = int(latent_dim)
        self.max_mult = int(max_mult)
        self.channels = level_channels(int(base_channels), self.n_down, self.max_mult)
        self.pad = grid_padding(self.nlat, self.nlon, self.n_down)  # (south, north, east)
        self.coarse = (_padded(self.nlat, self.n_down) // 2 ** self.n_down,
                       _padded(self.nlon, self.n_down) // 2 ** self.n_down)
        nflat = self.channels[-1] * self.coarse[0] * self.coarse[1]

        enc: list[nn.Module] = []
        cin = self.in_channels
        for c in self.channels:
            enc += [SphereConv2d(cin, c, stride=2), nn.SiLU()]
            cin = c
        self.encoder = nn.Sequential(*enc)
        self.to_latent = nn.Linear(nflat, 2 * self.latent_dim)

        self.from_latent = nn.Linear(self.latent_dim, nflat)
        dec: list[nn.Module] = []
        outs = self.channels[::-1][1:] + [self.in_channels]   # e.g. [128, 64, 32] -> convs 128->64->32->C
        cin = self.channels[-1]
        for k, c in enumerate(outs):
            dec.append(SubPixelUp(cin, c))
            if k < len(outs) - 1:
                dec.append(nn.SiLU())
            cin = c
        self.decoder = nn.Sequential(*dec)
        if self.dropout:
            self.drop = nn.Dropout(self.dropout)
        if self.res_blocks:
            self.enc_res = nn.ModuleList(nn.Sequential(*[ResBlock(c) for _ in range(self.res_blocks)])
                                         for c in self.channels)
            self.dec_res = nn.ModuleList(nn.Sequential(*[ResBlock(c) for _ in range(self.res_blocks)])
                                         for c in self.channels[::-1])
        if self.linear_path:
            n = self.in_channels * self.nlat * self.nlon
            self.register_buffer("lin_mean", torch.zeros(n))
            self.lin_enc = nn.Parameter(torch.zeros(self.latent_dim, n))
            self.lin_dec = nn.Parameter(torch.zeros(n, self.latent_dim))

    def arch(self) -> dict:
        """Constructor arguments (JSON-able), stored in checkpoints to rebuild the network (the options only when
        they are on, so networks without them keep the checkpoints of earlier versions byte for byte)."""
        out = {"in_channels": self.in_channels, "nlat": self.nlat, "nlon": self.nlon,
               "latent_dim": self.latent_dim, "base_channels": self.channels[0], "n_down": self.n_down,
               "max_mult": self.max_mult}
        for key, off in (("dropout", 0.0), ("res_blocks", 0), ("linear_path", False)):
            if getattr(self, key) != off:
                out[key] = getattr(self, key)
        return out

    @torch.no_grad()
    def init_linear_path(self, mean: torch.Tensor, modes: torch.Tensor, lat_weights: torch.Tensor) -> None:
        """Start the linear path at the EOFs: ``m`` = ``mean`` (N,), ``E`` = ``modes`` (N, L) (EOFs of the
        area-weighted anomalies times their standard deviations, in unweighted units), ``P`` = the weighted
        pseudo-inverse ``(E^T W E)^-1 E^T W`` (W = ``lat_weights`` (nlat,) per value), so ``P E = I`` and
        ``m + E P (x - m)`` is the weighted least-squares projection on the EOFs. Also zeroes the last layers
        that add the network's part to mu and g, so the model starts as the EOF reconstruction, with the posterior
        log-variance of probabilistic PCA under unit noise, ``logvar_k = -log(1 + e_k^T W e_k)``."""
        if not self.linear_path:
            raise ValueError("init_linear_path needs a network built with linear_path=True")
        n = self.lin_mean.numel()
        if mean.shape != (n,) or modes.shape != (n, self.latent_dim):
            raise ValueError(f"mean {tuple(mean.shape)} / modes {tuple(modes.shape)} must be ({n},) / "
                             f"({n}, {self.latent_dim})")
        wv = lat_weights.view(1, -1, 1).expand(self.in_channels, self.nlat, self.nlon).reshape(-1, 1).double()
        e = modes.double()
        gram = e.T @ (wv * e)
        self.lin_mean.copy_(mean)
        self.lin_dec.copy_(e.float())
        self.lin_enc.copy_(torch.linalg.solve(gram, (wv * e).T).float())
        self.to_latent.weight.zero_()
        self.to_latent.bias[:self.latent_dim].zero_()
        self.to_latent.bias[self.latent_dim:].copy_(-torch.log1p(torch.diagonal(gram)).float())
        last = self.decoder[-1].conv
        last.weight.zero_()
        last.bias.zero_()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, nlat, nlon) -> mu (B, L), logvar (B, L) (clamped to :data:`LOGVAR_RANGE`)."""
        h = self._pad_input(x)
        if self.res_blocks:
            for k in range(len(self.channels)):
                h = self.enc_res[k](self.encoder[2 * k + 1](self.encoder[2 * k](h)))
        else:
            h = self.encoder(h)
        h = h.flatten(1)
        if self.dropout:
            h = self.drop(h)
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        if self.linear_path:
            mu = mu + (x.flatten(1) - self.lin_mean) @ self.lin_enc.T
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Generator g(z): (B, L) -> (B, C, nlat, nlon) standardised anomalies."""
        h = F.silu(self.from_latent(z)).view(z.shape[0], self.channels[-1], *self.coarse)
        if self.res_blocks:
            for k, mod in enumerate(self.decoder):
                if isinstance(mod, SubPixelUp):
                    h = self.dec_res[k // 2](h)
                h = mod(h)
        else:
            h = self.decoder(h)
        y = self._crop(h)
        if self.linear_path:
            y = y + (self.lin_mean + z @ self.lin_dec.T).view(-1, self.in_channels, self.nlat, self.nlon)
        return y

    def _pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, nlat, nlon) -> the padded grid: rows replicated beyond the poles, columns wrapped (no-op if none)."""
        south, north, east = self.pad
        if east:
            x = torch.cat([x, x[..., :east]], dim=-1)
        if south or north:
            x = torch.cat([x[..., :1, :].expand(*x.shape[:-2], south, x.shape[-1]), x,
                           x[..., -1:, :].expand(*x.shape[:-2], north, x.shape[-1])], dim=-2)
        return x

    def _crop(self, y: torch.Tensor) -> torch.Tensor:
        """The padded grid -> (B, C, nlat, nlon) (no-op if no padding)."""
        south, north, east = self.pad
        if south or north or east:
            y = y[..., south:south + self.nlat, :self.nlon]
        return y

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        """Reparameterised pass: z = mu + exp(logvar / 2) * eps; returns (x_hat, mu, logvar). eps=None uses z = mu."""
        mu, logvar = self.encode(x)
        z = mu if eps is None else mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag e^logvar) || N(0, I)) per sample: 0.5 * sum(mu^2 + e^logvar - 1 - logvar). Shape (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def weighted_sq_error(x: torch.Tensor, x_hat: torch.Tensor, lat_weights: torch.Tensor) -> torch.Tensor:
    """Area-weighted squared error per sample: sum_{c,i,j} w_i (x - x_hat)^2, ``lat_weights`` (nlat,). Shape (B,)."""
    return ((x - x_hat).pow(2) * lat_weights.view(1, 1, -1, 1)).sum(dim=(1, 2, 3))
