"""The options of ``latentda.assimilate`` as one typed model (:class:`AssimilationOptions`).

The same model validates the keyword arguments of :func:`latentda.assimilate` (a dict or keywords still work) and
the ``assimilation.options`` section of a run config, so a misspelt or impossible option is refused when the
config is loaded, naming the key, before any store is created. Only pydantic and the standard library: importing
it does not import torch.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

__all__ = ["AssimilationOptions", "as_options", "REPR_MODES", "SAMPLERS"]

REPR_MODES = ("augmented", "likelihood", "none")
SAMPLERS = ("rto", "laplace", "langevin")


class AssimilationOptions(BaseModel):
    """Everything ``latentda.assimilate`` takes besides the prior, the observations, the day, ``members``, ``seed``
    and ``keep_members``. See :func:`latentda.da.rto.assimilate` for what each option does."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")

    qc_threshold: float = Field(5.0, description="k of the gross-departure check |y - H x_b| > k sqrt(var); inf: off")
    max_iter: StrictInt = Field(200, ge=0, description="L-BFGS iterations per member")
    tol: float = Field(0.1, gt=0, allow_inf_nan=False,
                       description="Newton decrement tolerance, in posterior standard deviations")
    default_error: float | dict[str, float] | None = Field(
        None, description="observation error std dev (scalar or per variable) when the table has no error column")
    representation_error: Literal["augmented", "likelihood", "none"] = "augmented"
    repr_length_scale: float | None = Field(None, gt=0, allow_inf_nan=False,
                                            description="km; None: the prior's, else 1.5 grid spacings")
    repr_scale: float = Field(1.0, ge=0, allow_inf_nan=False, description="factor on the prior's recon_std")
    residual_modes: StrictBool = Field(True, description="use the prior's residual modes, if it has them")
    perturb_obs: StrictBool = Field(True, description="draw observation perturbations (False: tests/ablations)")
    adam_steps: StrictInt = Field(0, ge=0, description="Adam warm-up iterations before L-BFGS")
    adam_lr: float = Field(0.05, ge=0, allow_inf_nan=False)
    history: StrictInt = Field(10, ge=1, description="L-BFGS memory")
    ftol: float = Field(1e-7, ge=0, allow_inf_nan=False, description="relative round-off floor of J")
    max_linesearch: StrictInt = Field(10, ge=1)
    precondition: StrictBool = Field(True, description="Gauss-Newton preconditioner and linearised member starts")
    covariance_form: Literal["auto", "obs", "grid"] = Field(
        "auto", description="R = R_o + G G^T: 'obs' (dense n x n Cholesky), 'grid' (Woodbury in grid space, cost "
                            "independent of n), 'auto' (the cheaper; latentda.da.obs_covariance)")
    on_all_rejected: Literal["fail", "prior"] = Field(
        "fail", description="a day whose observations are present but all rejected by QC: 'fail' (raise "
                            "AllObservationsRejected, the QC reasons counted) or 'prior' (the prior ensemble, "
                            "no_obs=1)")
    covariance_rank_tol: float = Field(
        1e-3, ge=0, lt=1, description="grid form: drop singular values of the smoother S below this fraction of "
                                      "the largest (eigenvalues of S S^T below its square; 0: full rank; "
                                      "latentda.da.lowrank)")
    window: StrictInt | None = Field(
        None, ge=0, description="half-width k in days of the assimilation window [d - k, d + k] "
                                "(latentda.da.window); None: the prior's (0 for a day prior, PriorConfig.window "
                                "for a window prior); k >= 1 needs a window prior")
    repr_time_correlation: Literal["fitted", "none"] = Field(
        "fitted", description="window analysis (k >= 1): the representation error AR(1) in time per variable with "
                              "the window prior's fitted rho ('fitted'; a prior without it: rho = 0) or independent "
                              "between days ('none'); latentda.da.window_covariance")
    window_neighbours: Literal["linearised", "nonlinear"] = Field(
        "linearised", description="window analysis (k >= 1), members' solve: the neighbouring days' H g(z_t) "
                                  "linearised at the window's posterior mode (one outer loop of incremental "
                                  "4D-Var: each cost evaluation decodes the centre day only) or decoded at every "
                                  "evaluation ('nonlinear'); needs precondition=True (without it: 'nonlinear'); "
                                  "latentda.da.window")
    # -- posterior samplers (latentda.da.samplers; issue 12) --------------------------------------------------
    sampler: str = Field("rto", description="'rto' (randomise-then-optimise), 'laplace' (Gaussian at the MAP, "
                                            "Gauss-Newton covariance) or 'langevin' (MALA from the MAP)")
    langevin_steps: StrictInt = Field(100, description="MALA steps after the burn-in (>= 1)")
    langevin_burnin: StrictInt = Field(100, ge=0, description="MALA burn-in steps adapting the step size")
    langevin_target_accept: float = Field(0.574, gt=0, lt=1, description="acceptance rate the burn-in adapts to")
    langevin_init: Literal["map", "laplace"] = Field(
        "map", description="where each MALA chain starts: at the MAP ('map') or at its member's Laplace draw "
                           "MAP + L xi ('laplace': the chains start spread like the posterior's Gaussian "
                           "approximation, so short chains are not a cloud around the MAP)")

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        if v not in SAMPLERS:
            raise ValueError(f"sampler={v!r} is not one of {list(SAMPLERS)}")
        return v

    @field_validator("langevin_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"langevin_steps={v} must be >= 1 (MALA steps after the burn-in)")
        return v

    @field_validator("qc_threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if math.isnan(v) or v <= 0:
            raise ValueError(f"qc_threshold={v!r} must be a positive number (inf disables the gross departure check)")
        return v

    @field_validator("default_error")
    @classmethod
    def _error(cls, v: float | dict[str, float] | None) -> float | dict[str, float] | None:
        values = v.values() if isinstance(v, dict) else ([] if v is None else [v])
        bad = [e for e in values if not (math.isfinite(e) and e > 0)]
        if bad:
            raise ValueError(f"default_error {v!r} must be positive finite standard deviation(s)")
        return v

    def solver(self) -> dict[str, Any]:
        """The keyword arguments of :func:`latentda.da.solver.minimize_batched`."""
        return dict(max_iter=self.max_iter, tol=self.tol, ftol=self.ftol, history=self.history,
                    max_linesearch=self.max_linesearch, adam_steps=self.adam_steps, adam_lr=self.adam_lr)


def as_options(options: "AssimilationOptions | Mapping[str, Any] | None" = None, **overrides: Any
               ) -> AssimilationOptions:
    """:class:`AssimilationOptions` from a model, a mapping or None, with keyword ``overrides`` on top.

    Raises ValueError naming every unknown or impossible option (and listing the valid ones for a misspelling).
    """
    if options is None:
        base: dict[str, Any] = {}
    elif isinstance(options, AssimilationOptions):
        base = options.model_dump(exclude_unset=True)
    elif isinstance(options, Mapping):
        base = dict(options)
    else:
        raise TypeError(f"options must be AssimilationOptions, a dict or None, got {type(options).__name__}")
    base.update(overrides)
    unknown = sorted(set(base) - set(AssimilationOptions.model_fields))
    if unknown:
        raise ValueError(f"unknown assimilate option(s) {unknown}; valid options are "
                         f"{sorted(AssimilationOptions.model_fields)}")
    try:
        return AssimilationOptions.model_validate(base)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: "
                             f"{e['msg'].removeprefix('Value error, ')}" for e in err.errors())
        raise ValueError(f"invalid assimilate option(s): {problems}") from None
