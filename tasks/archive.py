"""Archive tasks: init (create or check), missing days, validate, register in the output catalog.

Also the pieces every task module shares: the cache policy whose key sees the latentda version and git sha
(Prefect's default key does not see code inside latentda), the retry condition (retry I/O errors, not bad
input); the per-process cache of loaded priors is :func:`tasks.worker.load_prior_cached`.
"""
from __future__ import annotations

import dataclasses

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.utilities.hashing import hash_objects

import latentda
from latentda import archive as lib
from latentda import backfill, storage
from latentda.config import RunConfig
from latentda.runtime import git_sha

from . import catalog as catalog_io
from .worker import load_prior_cached


# -------------------------------------------------------------------------------------------- shared pieces
@dataclasses.dataclass
class LatentdaVersion(CachePolicy):
    """Cache-key component: the latentda package version and the git commit of the checkout."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        return hash_objects(latentda.__version__, git_sha())


#: Cache policy of the cached tasks (ingest, train): inputs (which include the config hash) + task source +
#: latentda version/commit.
CACHE_POLICY = INPUTS + TASK_SOURCE + LatentdaVersion()

IO_ERRORS = (OSError, TimeoutError, ConnectionError)
#: OSErrors that a retry cannot fix: the same call fails the same way (a wrong path or permission is bad input).
PERMANENT_IO_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def is_transient(err: BaseException) -> bool:
    """True for an error worth retrying: network, timeout, object-store throttling (an OSError that is not one of
    :data:`PERMANENT_IO_ERRORS`); bad input, a missing file or a bug is never retried."""
    return isinstance(err, IO_ERRORS) and not isinstance(err, PERMANENT_IO_ERRORS)


def retry_on_io(task, task_run, state) -> bool:
    """Retry condition: retry only when the task failed with a transient I/O error (:func:`is_transient`)."""
    try:
        state.result()
    except BaseException as err:  # noqa: BLE001 - classified below
        return is_transient(err)
    return False


#: Task options of every task that touches storage: transient I/O errors are retried twice, after 2 s +/- 50 %
#: (jitter: many workers hitting a throttled object store do not retry in lock step).
RETRY_IO = {"retries": 2, "retry_delay_seconds": 2, "retry_jitter_factor": 0.5, "retry_condition_fn": retry_on_io}


# ---------------------------------------------------------------------------------------------------- tasks
@task(name="init-archive", cache_policy=NO_CACHE, **RETRY_IO)
def init_archive(config: RunConfig) -> str:
    """Create the run's pre-sized archive (metadata only) or check an existing one against the config.

    Returns ``"created"`` or ``"exists"``; a mismatching store raises ArchiveMismatchError (never overwritten).
    """
    prior = load_prior_cached(config.prior_path, "cpu", config.archive.storage_options)
    status, made_with = backfill.ensure_archive(config, prior)
    log = get_run_logger()
    log.info("archive %s: %s (%s..%s)", storage.redact(config.archive_url), status, config.archive.start,
             config.archive.end)
    if made_with:
        log.warning("the archive was created with prior %s; days written now use prior %s (each day records "
                    "its prior in model_sha256)", made_with[:12], prior.checksum()[:12])
    return status


@task(name="missing-days", cache_policy=NO_CACHE, **RETRY_IO)
def missing_days(config: RunConfig, start: str, end: str) -> list[str]:
    """ISO dates of ``start..end`` whose done flag is not set in the run's archive."""
    return [str(d.date()) for d in lib.missing_days(config.archive_url, start, end,
                                                    config.archive.storage_options)]


@task(name="validate-archive", cache_policy=NO_CACHE, **RETRY_IO)
def validate_archive(config: RunConfig, start: str | None = None, end: str | None = None) -> dict:
    """Every done day of the run's archive has finite fields and provenance; returns the report (raises
    ArchiveError if not)."""
    return lib.validate_archive(config.archive_url, config.archive.storage_options, start=start, end=end)


@task(name="register-archive", cache_policy=NO_CACHE, **RETRY_IO)
def register_archive(config: RunConfig) -> str:
    """Add or replace the run's entries in the output catalog (storage options without secrets): the archive
    (driver zarr, or ``IcechunkArchiveSource`` for an Icechunk archive) and its per-observation feedback
    (``<name>_feedback``, ``tasks.intake_sources.FeedbackSource``)."""
    entry = catalog_io.ZarrEntry(config.archive.name, config.archive_url, config.archive.storage_options,
                                 backfill.catalog_description(config), backfill.catalog_metadata(config))
    register = catalog_io.register_icechunk_source if config.archive.engine == "icechunk" \
        else catalog_io.register_zarr_source
    register(config.output_catalog, entry)
    fb = catalog_io.ZarrEntry(backfill.feedback_entry_name(config), config.archive_url,
                              config.archive.storage_options, backfill.feedback_description(config),
                              dict(backfill.catalog_metadata(config), archive_entry=config.archive.name))
    return catalog_io.register_feedback_source(config.output_catalog, fb)
