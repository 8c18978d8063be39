"""The prior's hyper-parameters (:class:`PriorConfig`): the one model that ``latentda.train_prior``, the checkpoint
and the run config's ``prior:`` section all use (the run config embeds it; no hand copy).

Only pydantic and the standard library: importing it pulls in neither torch nor the training code.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["PriorConfig", "as_config", "check_device_name"]

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class PriorConfig(BaseModel):
    """Hyper-parameters of the VAE prior and its training. Unknown keys and impossible values are refused
    (pydantic ValidationError, a ValueError, naming the field)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    latent_dim: int = Field(64, ge=1, description="size L of the latent vector z")
    base_channels: int = Field(32, ge=1, description="channels after the first downsampling (x2 per level up to "
                                                      "max_channel_mult x base)")
    max_channel_mult: int = Field(4, ge=1, description="channel cap per level as a multiple of base_channels")
    beta: float = Field(1.0, ge=0, description="weight of the KL term (1 = ELBO with unit-variance likelihood)")
    epochs: int = Field(60, ge=1, description="maximum number of epochs")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate")
    patience: int = Field(6, ge=1, description="epochs without validation improvement before stopping")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="fraction of days held out for validation")
    seed: int = Field(0, ge=0, description="seeds initialisation, split, shuffling and noise")
    device: str = Field("auto", description="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    n_harmonics: int = Field(3, ge=0, description="harmonics of the day-of-year climatology (0: no seasons)")
    max_minutes: float | None = Field(None, gt=0, description="stop training after this wall time (minutes)")
    kl_warmup_epochs: int = Field(5, ge=0, description="epochs over which beta ramps up linearly to its value")
    n_down: int | None = Field(None, ge=1, le=6, description="stride-2 levels; None: chosen from the grid (<= 3)")
    val_block_days: int = Field(8, ge=1, description="validation days are drawn in blocks of this many days")
    weight_decay: float = Field(0.0, ge=0, description="Adam(W) decoupled weight decay")
    zonal_symmetry: bool | None = Field(None, description="data statistics are zonally symmetric (e.g. Held-Suarez: "
                                        "no land, orography or seasons in longitude): fit a zonally uniform "
                                        "climatology and augment training with random longitude rotations; None: "
                                        "from the data's attributes (latentda.prior.zonal.data_zonal_symmetry), "
                                        "resolved to True/False in the trained prior's config")
    residual_modes: int = Field(0, ge=0, description="leading modes of the reconstruction residual on the training "
                                "days kept for the representation-error covariance (0: none; see "
                                "latentda.prior.residual)")
    residual_mode_weights: bool = Field(True, description="shrink each variable's residual modes towards the "
                                        "isotropic part by a weight in [0, 1] fitted on the validation days "
                                        "(latentda.prior.mode_weights); checkpoints from before this field were "
                                        "not weighted and load with False")
    window: int = Field(0, ge=0, le=15, description="half-width k in days of the window prior: 0 is the per-day "
                        "prior; k >= 1 adds a latent transition (latentda.prior.transition) and the assimilation "
                        "uses the observations of [d - k, d + k]")
    num_threads: int | None = Field(None, ge=1, description="CPU threads while training (None: torch's setting); "
                                                            "1 is fastest for tiny models on a busy machine")
    # -- flow prior (latentda.prior.flow; issue 12): the assimilation searches u with z = f(u), u ~ N(0, I) --
    flow_prior: bool = Field(False, description="fit a normalising flow z = f(u) to the encoded training days "
                             "after the VAE (latentda.prior.flow); the assimilation then uses g∘f and ½‖u‖²")
    flow_transforms: int = Field(2, ge=1, description="coupling spline transforms of the flow")
    flow_hidden: int = Field(64, ge=1, description="hidden width of each flow conditioner")
    flow_hidden_layers: int = Field(2, ge=1, description="hidden layers of each flow conditioner")
    flow_bins: int = Field(8, ge=2, description="rational-quadratic spline bins")
    flow_epochs: int = Field(60, ge=1, description="maximum flow epochs")
    flow_batch_size: int = Field(256, ge=1)
    flow_learning_rate: float = Field(1e-3, gt=0, description="flow AdamW learning rate")
    flow_weight_decay: float = Field(1e-5, ge=0, description="flow AdamW decoupled weight decay")
    flow_patience: int = Field(5, ge=1, description="flow epochs without held-out improvement before stopping")
    flow_fit_on: Literal["mean", "sample"] = Field("mean", description="fit the flow to encoder means mu(x) or "
                                                   "to posterior samples mu + sigma * eps")
    flow_samples: int = Field(1, ge=1, description="posterior samples per day for flow_fit_on='sample'")
    flow_rotations: int = Field(8, ge=1, description="evenly spaced longitude rotations of every training day "
                                "for zonally symmetric data (zonal_symmetry; 1: none; ignored otherwise). 8 doubled "
                                "the flow's held-out gain over N(0, I) on the shipped prior (README, issue 12)")

    @model_validator(mode="after")
    def _flow_not_window(self) -> "PriorConfig":
        if self.flow_prior and self.window:
            raise ValueError(f"flow_prior=True with window={self.window}: a flow prior is a day prior (the latent "
                             "transition models z, the flow prior's assimilation latent is u)")
        return self

    # --- issue 12 item 1: regularisation and capacity levers (bench/prior_variance.py measures them) ---
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout probability on the flattened encoder features "
                           "(training only)")
    res_blocks: int = Field(0, ge=0, le=4, description="residual 3x3 blocks after every encoder level and before "
                            "every decoder upsampling (depth)")
    linear_path: bool = Field(False, description="add a linear encoder/decoder path initialised at the leading "
                              "area-weighted EOFs of the training days: g(z) = m + E z + NN(z)")

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        return check_device_name(v)


def check_device_name(v: str) -> str:
    """The one check of a device name (syntax only; whether CUDA is present is
    :func:`latentda.prior.device.resolve_device`'s business on the machine that runs it)."""
    if not isinstance(v, str) or not DEVICE_RE.match(v):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}")
    return v


def as_config(config: "PriorConfig | dict | None") -> PriorConfig:
    """PriorConfig from a PriorConfig, a dict (validated) or None (defaults)."""
    if config is None:
        return PriorConfig()
    if isinstance(config, PriorConfig):
        return config
    if isinstance(config, dict):
        return PriorConfig.model_validate(config)
    raise TypeError(f"config must be a PriorConfig, a dict or None, got {type(config).__name__}")


