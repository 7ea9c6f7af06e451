"""A sample build's forecast for its whole listing (`build-dataset --sample`): what the funnel will keep, how many
subject crops and bytes the dataset will hold, and how long it will take on the cluster the sample ran on and on the
named cluster shapes (tasks/placement.py's `CLUSTER_SHAPES`). Written as `DIR/forecast.json` and shown as markdown;
after the full build, `forecast_vs_actual` says how the forecast held.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lambda_eclipse.errors import UserError
from storage.build_totals import BuildTotals
from storage.fs import is_file, join, location
from storage.layout import read_json
from tasks.actors import demands
from tasks.config import BuildConfig
from tasks.placement import CLUSTER_SHAPES, plan_pools

Z95 = 1.959964  # the standard normal's 97.5 % quantile: two-sided 95 % intervals
SAMPLE_CLUSTER = "the sample's cluster"
FORECAST = "forecast.json"  # in the sample's dataset directory


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default). Unlike p ± z·√(p(1−p)/n) it stays inside [0, 1]
    and does not shrink to nothing at 0 or n successes, which a small sample's rare stages often give."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # exact at the ends (the formula reaches 0 and 1 there only up to rounding)
    return (0.0 if successes <= 0 else centre - half), (1.0 if successes >= trials else centre + half)


def _cluster_row(name: str, nodes: Mapping[str, Mapping[str, float]], cfg: BuildConfig, costs: dict[str, float],
                 unit_seconds: float, images: int) -> dict:
    rate = plan_pools(nodes, demands(cfg, costs), unit_seconds).predicted
    gpus = sum(n.get("GPU", 0) for n in nodes.values())
    hours = images / rate / 3600 if math.isfinite(rate) and rate > 0 else None
    return {"name": name, "nodes": len(nodes), "cpus": sum(n.get("CPU", 0) for n in nodes.values()), "gpus": gpus,
            "samples_per_second": rate if hours is not None else None, "hours": hours,
            "gpu_hours": hours * gpus if hours is not None else None}


def forecast(totals: BuildTotals, images: int, measured: Mapping[str, float], unit_seconds: float,
             nodes: Mapping[str, Mapping[str, float]], cfg: BuildConfig, *, estimated: bool = False) -> dict:
    """The forecast for a listing of `images` inputs (`estimated`: a tar listing's count is), from the sample's
    `totals`, its measured CPU seconds per sample of each model stage (per sample that reached the stage, as
    `tasks.actors.demands` takes them), its unit tasks' CPU seconds per input, and the `nodes` it ran on (as
    `tasks.actors.alive_nodes` gives them). A JSON-able dict.

    - Per stage: the inputs that reached it and the ones it rejected; its pass rate with a 95 % Wilson interval.
    - Accepted samples: the Wilson interval of accepted / inputs times `images` (the estimate of `images` itself, for
      tars, is not in the interval); subject crops: subjects per accepted sample times that; bytes: the sample's
      output bytes per input times `images`.
    - Time: `plan_pools(...).predicted` on each cluster, where a stage's cost per input is its measured cost per
      sample times the share of inputs that reach it (the funnel's); GPU-hours are hours times the cluster's GPUs.
      The prediction is the placement's: on nodes with GPUs the model stages' throughput comes from their declared
      TFLOPs per sample (not measured, and as if every input reached them: a lower bound when the filters reject
      early), on CPU nodes from the measured CPU costs; unit tasks cost `unit_seconds` per input on every cluster,
      whatever its photos' sizes; and the cluster is filled for the whole run (no start-up, no stragglers).
    """
    if totals.inputs <= 0:
        raise ValueError("a forecast needs a sample with inputs")
    reach = {stage: count / totals.inputs for stage, (count, _) in totals.funnel.items()}
    stages = []
    for stage, (count, rejected) in totals.funnel.items():
        low, high = wilson(count - rejected, count) if count else (None, None)
        stages.append({"stage": stage, "in": count, "rejected": rejected,
                       "pass_rate": (count - rejected) / count if count else None, "low": low, "high": high})
    rate_low, rate_high = wilson(totals.accepted, totals.inputs)
    rate = totals.accepted / totals.inputs
    accepted = rate * images
    costs = {stage: seconds * reach.get(stage, 1.0) for stage, seconds in measured.items()}
    clusters = [_cluster_row(SAMPLE_CLUSTER, nodes, cfg, costs, unit_seconds, images)]
    clusters += [_cluster_row(s.name, s.nodes_resources(), cfg, costs, unit_seconds, images) for s in CLUSTER_SHAPES]
    return {
        "sample": {"shards": totals.shards, "inputs": totals.inputs, "accepted": totals.accepted,
                   "subjects": totals.subjects, "bytes": totals.bytes},
        "listing": {"images": images, "estimated": estimated},
        "stages": stages,
        "accepted": {"expected": round(accepted), "low": round(rate_low * images), "high": round(rate_high * images),
                     "rate": rate, "rate_low": rate_low, "rate_high": rate_high},
        "subjects": round(totals.subjects / totals.accepted * accepted) if totals.accepted else 0,
        "bytes": round(totals.bytes / totals.inputs * images),
        "cost_per_input": costs,
        "unit_seconds": unit_seconds,
        "clusters": clusters,
    }


def _size(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.3g} {units[i]}"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def duration(hours: float | None) -> str:
    """Hours as a person reads them: seconds, minutes, hours or days."""
    if hours is None:
        return "—"
    seconds = hours * 3600
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def forecast_markdown(f: dict) -> str:
    """The forecast as markdown: the sample's funnel, the yield expected, the time and GPU-hours per cluster."""
    s, a = f["sample"], f["accepted"]
    about = "~" if f["listing"]["estimated"] else ""
    lines = [
        "# build-dataset forecast",
        "",
        f"From a sample of {s['inputs']} inputs ({s['accepted']} accepted, {s['shards']} shards) for a listing of "
        f"{about}{f['listing']['images']} images" + (" (estimated from the tars' sizes)" if about else "") + ".",
        "",
        "| stage | in | rejected | pass rate | 95 % interval |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['stage']} | {r['in']} | {r['rejected']} | {_rate(r['pass_rate'])} | "
              f"{_rate(r['low'])} – {_rate(r['high'])} |" for r in f["stages"]]
    lines += [
        "",
        "| for the listing | expected | 95 % interval |",
        "|---|---:|---:|",
        f"| accepted samples | {a['expected']} | {a['low']} – {a['high']} |",
        f"| acceptance rate | {_rate(a['rate'])} | {_rate(a['rate_low'])} – {_rate(a['rate_high'])} |",
        f"| subject crops | {f['subjects']} | |",
        f"| output | {_size(f['bytes'])} | |",
        "",
        "| cluster | nodes | CPUs | GPUs | samples/s | time | GPU-hours |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {c['name']} | {c['nodes']} | {c['cpus']:g} | {c['gpus']:g} | {_number(c['samples_per_second'])} | "
              f"{duration(c['hours'])} | {_number(c['gpu_hours']) if c['gpus'] else '—'} |" for c in f["clusters"]]
    return "\n".join(lines)


def _inside(value: float | None, low: float | None, high: float | None) -> str:
    if value is None or low is None or high is None:
        return "—"
    return "yes" if low <= value <= high else "**no**"


def forecast_vs_actual(f: dict, totals: BuildTotals) -> str:
    """Markdown of a sample's forecast beside the full build that ran after it: accepted samples and each stage's
    pass rate, and whether each fell inside the forecast's 95 % interval."""
    a = f["accepted"]
    rate = totals.accepted / totals.inputs if totals.inputs else None
    lines = [
        "# forecast vs actual",
        "",
        f"Forecast from a sample of {f['sample']['inputs']} inputs for {f['listing']['images']} images"
        + (" (estimated)" if f["listing"]["estimated"] else "") + f"; the build read {totals.inputs}.",
        "",
        "| | forecast | 95 % interval | actual | inside |",
        "|---|---:|---:|---:|---|",
        f"| accepted samples | {a['expected']} | {a['low']} – {a['high']} | {totals.accepted} | "
        f"{_inside(totals.accepted, a['low'], a['high'])} |",
        f"| acceptance rate | {_rate(a['rate'])} | {_rate(a['rate_low'])} – {_rate(a['rate_high'])} | {_rate(rate)} | "
        f"{_inside(rate, a['rate_low'], a['rate_high'])} |",
        "",
        "| stage | forecast pass rate | 95 % interval | actual | inside |",
        "|---|---:|---:|---:|---|",
    ]
    for r in f["stages"]:
        count, rejected = totals.funnel.get(r["stage"], (0, 0))
        actual = (count - rejected) / count if count else None
        lines.append(f"| {r['stage']} | {_rate(r['pass_rate'])} | {_rate(r['low'])} – {_rate(r['high'])} | "
                     f"{_rate(actual)} | {_inside(actual, r['low'], r['high'])} |")
    return "\n".join(lines)


def forecast_cost_line(f: dict) -> str:
    """One line of what the listing costs: hours on the sample's cluster, and hours and GPU-hours on each shape."""
    parts = []
    for c in f["clusters"]:
        parts.append(f"{duration(c['hours'])} on {c['name']}"
                     + (f" ({_number(c['gpu_hours'])} GPU-hours)" if c["gpus"] else ""))
    return "; ".join(parts)


def read_forecast(where: str | None, required: bool = False) -> dict | None:
    """A sample's forecast: `where` is its forecast.json or the sample's dataset; None where there is none (an error
    when `required`: the user named it)."""
    if where is None:
        return None
    path = where if str(where).endswith(".json") else join(location(where), FORECAST)
    if not is_file(path):
        if required:
            raise UserError(f"--forecast {where}: no {FORECAST} there; pass a sample build's dataset directory "
                            "(build-dataset --sample writes it) or its forecast.json")
        return None
    return read_json(path)
