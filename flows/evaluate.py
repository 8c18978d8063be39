"""Flow ``evaluate``: skill of the archive against the truth or held-out stations, published as a Prefect markdown
artifact (a table and a link to a quicklook image) and written to the workdir (``reports/*.md`` beside
``quicklooks/*.png``: the artifact of a temporary Prefect server goes away with it)."""
from __future__ import annotations

import os
import re

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from latentda import archive as lib
from latentda import storage
from latentda.config import RunConfig, load_config
from tasks.evaluate import evaluate, make_quicklook

from . import untagged_tasks


def quicklook_path(cfg: RunConfig, day: str, variable: str) -> str:
    return storage.join(cfg.workdir, "quicklooks", f"{cfg.archive.name}_{variable}_{day}.png")


def report_path(cfg: RunConfig, start: str, end: str) -> str:
    """Where ``evaluate`` writes its Markdown report: ``<workdir>/reports/<archive>_skill_<start>_<end>.md``."""
    return storage.join(cfg.workdir, "reports", f"{cfg.archive.name}_skill_{start}_{end}.md")


def write_report(cfg: RunConfig, markdown: str, path: str) -> str:
    """Write the report to ``path`` (local or remote) and return it."""
    if not storage.is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with storage.open(path, "wb", dict(cfg.archive.storage_options) or None) as f:
        f.write(markdown.encode())
    return path


def pick_day(cfg: RunConfig, start: str | None, end: str | None) -> str | None:
    """The middle done day of the range (None if none is done)."""
    st = lib.day_status(cfg.archive_url, cfg.archive.storage_options, start, end)
    done = st.index[st.values]
    return None if len(done) == 0 else str(done[len(done) // 2].date())


@flow(name="evaluate")
def evaluate_flow(config_path: str, start: str | None = None, end: str | None = None,
                  overrides: dict | None = None, day: str | None = None) -> dict:
    """Evaluate the done days of ``start..end`` (default: the backfill range); returns scores and the PNG path."""
    with untagged_tasks():
        return _evaluate(config_path=config_path, start=start, end=end, overrides=overrides, day=day)


def _evaluate(config_path: str, start: str | None = None, end: str | None = None,
                  overrides: dict | None = None, day: str | None = None) -> dict:
    """The body of :func:`evaluate_flow`."""
    log = get_run_logger()
    cfg = load_config(config_path, overrides)
    p = cfg.backfill_period()
    start, end = str(start or p.start), str(end or p.end)
    url = cfg.archive_url
    result = evaluate(cfg, start, end)
    day = day or pick_day(cfg, start, end)
    png = None
    if day is not None:
        png = make_quicklook(cfg, day, quicklook_path(cfg, day, cfg.quicklook_variable))
    head = (f"# latentda reanalysis `{cfg.name}`: skill {start} .. {end}\n\n"
            f"Archive: `{storage.redact(url)}` (catalog `{cfg.output_catalog}`, entry `{cfg.archive.name}`)\n\n"
            + result["markdown"])
    link = file_link = ""
    if png:
        href = png if storage.is_remote(png) else "file://" + os.path.abspath(png)
        link = f"\n\nQuicklook of {cfg.quicklook_variable} on {day}: [{os.path.basename(png)}]({href})"
        file_link = f"\n\nQuicklook of {cfg.quicklook_variable} on {day}:\n\n![{os.path.basename(png)}]" \
                    f"(../quicklooks/{os.path.basename(png)})\n"  # the PNG beside the report in the workdir
    md = head + link
    report = write_report(cfg, head + file_link, report_path(cfg, start, end))
    key = re.sub(r"[^a-z0-9-]+", "-", f"latentda-skill-{cfg.name}".lower()).strip("-")
    artifact = create_markdown_artifact(markdown=md, key=key, description=f"reanalysis skill {start}..{end}")
    log.info("evaluation of %d day(s) published as artifact %s and written to %s", result["days"], key,
             storage.redact(report))
    return {"evaluation": result, "quicklook": png, "artifact_key": key, "artifact_id": str(artifact),
            "markdown": md, "report": report}


def run_evaluate(config_path: str, start: str | None = None, end: str | None = None,
                 overrides: dict | None = None, day: str | None = None) -> dict:
    """Run the ``evaluate`` flow (its tasks are light: they run in the flow process)."""
    return evaluate_flow(config_path=str(config_path), start=start, end=end, overrides=overrides, day=day)
