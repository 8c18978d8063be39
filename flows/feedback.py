"""``latentda feedback``: departure statistics per variable and flagged stations from the per-observation
feedback of a run's archive (:mod:`latentda.feedback`). Reads the feedback files and the archive's done flags
only: no Prefect server, no Dask, no torch."""
from __future__ import annotations

import sys


def cmd_feedback(args, out=None) -> int:
    """Print the per-variable table (n used / rejected by reason / held out, O−B and O−A mean and RMS over used
    rows) and the stations with a persistent O−B bias or a high rejection rate, for ``--start..--end``."""
    out = out or sys.stdout
    from latentda import storage
    from latentda.config import load_config
    from latentda.feedback import (FeedbackSummaryOptions, feedback_url, format_summary, read_feedback,
                                   station_summary)

    cfg = load_config(args.config)
    opts = FeedbackSummaryOptions(bias_t=args.bias_t, reject_rate=args.reject_rate, min_rows=args.min_rows)
    url, so = cfg.archive_url, dict(cfg.archive.storage_options) or None
    out.write(f"feedback {storage.redact(feedback_url(url))}\n")
    if not storage.exists(url, so):
        out.write(f"no archive yet (period {cfg.archive.start}..{cfg.archive.end}); run "
                  f"`latentda backfill --config {args.config}`\n")
        return 0
    fb = read_feedback(url, args.start, args.end, so)
    out.write(format_summary(fb, opts, max_stations=args.max_stations))
    if args.stations_csv:
        station_summary(fb, opts.min_rows).to_csv(args.stations_csv, index=False, float_format="%.6g")
        out.write(f"per-station statistics: {args.stations_csv}\n")
    return 0


def add_arguments(sp) -> None:
    """The options of ``latentda feedback`` (besides ``--config``)."""
    sp.add_argument("--start", help="first day YYYY-MM-DD (default: the first day with feedback)")
    sp.add_argument("--end", help="last day YYYY-MM-DD (default: the last day with feedback)")
    sp.add_argument("--bias-t", type=float, default=3.0,
                    help="flag a station whose mean O-B over used rows has |t| above this (default 3)")
    sp.add_argument("--reject-rate", type=float, default=0.5,
                    help="flag a station with more than this fraction of its rows rejected (default 0.5)")
    sp.add_argument("--min-rows", type=int, default=3, help="rows a station needs to be flagged (default 3)")
    sp.add_argument("--max-stations", type=int, default=20, help="flagged stations listed (default 20)")
    sp.add_argument("--stations-csv", help="also write the departure statistics of every station and variable "
                                           "(latentda.feedback.station_summary) to this CSV file")
