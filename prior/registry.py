"""The prior registry: every trained prior, and which one is `current` (what generate and evaluate use without
--prior).

A folder (a local path or an fsspec URL; default `$LAMBDA_ECLIPSE_RUNS/registry`, or `$LAMBDA_ECLIPSE_REGISTRY`):

    priors/<run>.json   one record per trained prior: run, run_dir, final (the checkpoint to load), data and its
                        config hash, profile, steps, training metrics (val), training (loss settings, global
                        batch, Canny settings: prior/job.py's training_record), evaluation metrics and their settings,
                        started_from (the prior it continued, or null), trained_at, promotions; provenance (what it
                        was trained on: prior/provenance.py) and leak_flag (why its training data may hold
                        the benchmark it is evaluated on, or null: `leak_flag`). Records written before provenance
                        have neither and read as before.
    current.json        the pointer: {run, final, promoted_at, by, reason, previous}

    claims/<key>.json   one per (dataset, its config hash and shards, training config, prior continued): the retrain
                        flow run that trains that candidate (`training_key`). It is created exclusively, so of two
                        runs for the same candidate (an event delivered twice) one trains and the other defers to it.

Every file is written whole and atomically (a rename locally; one PUT on object stores), so a reader never sees half
a record; a record is only ever replaced by its own run, so concurrent retraining runs do not collide.

`decide` is the automatic promotion rule: the candidate is promoted when each evaluation metric is at least the
current prior's minus `tolerance` (all three are cosine similarities, higher is better); the first prior is promoted.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lambda_eclipse.errors import UserError
from storage.fs import Location, is_file, join, location, makedirs, resolve
from storage.layout import DATASET_JSON, complete_shards, read_json, shard_paths, write_json_atomic

REGISTRY_ENV, RUNS_ENV = "LAMBDA_ECLIPSE_REGISTRY", "LAMBDA_ECLIPSE_RUNS"
METRICS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T"}  # evaluation metrics, higher is better
PRIORS, CURRENT, CLAIMS = "priors", "current.json", "claims"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def registry_location(registry: str | None = None) -> Location:
    """`registry`, else $LAMBDA_ECLIPSE_REGISTRY, else $LAMBDA_ECLIPSE_RUNS/registry."""
    if registry:
        return location(registry)
    if os.environ.get(REGISTRY_ENV):
        return location(os.environ[REGISTRY_ENV])
    if os.environ.get(RUNS_ENV):
        return join(os.environ[RUNS_ENV], "registry")
    raise UserError(f"no prior registry: set {RUNS_ENV} (the registry is then ${RUNS_ENV}/registry) or "
                    f"{REGISTRY_ENV} (a folder or a URL)")


class Registry:
    def __init__(self, root: Location):
        self.root = location(root)

    @classmethod
    def open(cls, registry: str | None = None) -> Registry:
        return cls(registry_location(registry))

    def _record_path(self, run: str) -> Location:
        return join(self.root, PRIORS, f"{run}.json")

    def records(self) -> list[dict]:
        """Every record, oldest first."""
        fs, base = resolve(join(self.root, PRIORS))
        if not fs.isdir(base):
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(base, detail=False)]
        found = [read_json(join(self.root, PRIORS, n)) for n in names if n.endswith(".json") and not n.startswith(".")]
        return sorted(found, key=lambda r: (r.get("trained_at") or "", r["run"]))

    def get(self, run: str) -> dict:
        path = self._record_path(run)
        if "/" in run or not is_file(path):
            known = [r["run"] for r in self.records()]
            if not known:
                raise UserError(f"the prior registry {self.root} is empty: no prior has been trained into it yet "
                                "(run a retrain deployment)")
            raise UserError(f"no prior {run!r} in the registry {self.root}; known: {', '.join(known)} "
                            "(`lambda-eclipse priors list`)")
        return read_json(path)

    def put(self, record: dict) -> dict:
        """Add or replace the record of `record["run"]`."""
        makedirs(join(self.root, PRIORS))
        write_json_atomic(self._record_path(record["run"]), record)
        return record

    def _claim_path(self, key: str) -> Location:
        return join(self.root, CLAIMS, f"{key}.json")

    def claim(self, key: str, claim: dict, replace: bool = False) -> dict:
        """Take the claim on candidate `key` for `claim` (its run and flow run); returns the claim that holds it
        afterwards: `claim` itself, or the one another run took first. `replace`: take it over (from a run that
        failed), then read back which run holds it."""
        makedirs(join(self.root, CLAIMS))
        path = self._claim_path(key)
        record = claim | {"key": key, "claimed_at": now()}
        if replace:
            write_json_atomic(path, record)
        elif not _create(path, json.dumps(record, indent=2, sort_keys=True).encode()):
            return read_json(path)
        return read_json(path)

    def claimed(self, key: str) -> dict | None:
        path = self._claim_path(key)
        return read_json(path) if is_file(path) else None

    def current(self) -> dict | None:
        """The current prior's record, with the pointer's fields under "promotion"; None when nothing is promoted."""
        path = join(self.root, CURRENT)
        if not is_file(path):
            return None
        pointer = read_json(path)
        return self.get(pointer["run"]) | {"promotion": pointer}

    def promote(self, run: str, by: str, reason: str) -> dict:
        """Make `run` current (an unknown run is a UserError); returns the pointer written."""
        record = self.get(run)
        before = self.current()
        pointer = {"run": run, "final": record["final"], "promoted_at": now(), "by": by, "reason": reason,
                   "previous": before["run"] if before else None}
        record.setdefault("promotions", []).append({k: pointer[k] for k in ("promoted_at", "by", "reason")})
        self.put(record)
        makedirs(self.root)
        write_json_atomic(join(self.root, CURRENT), pointer)
        return pointer


def _create(path: Location, data: bytes) -> bool:
    """Write `path` only if it does not exist yet, whole (False: it exists). On disk a hard link publishes the
    complete file at once and fails on an existing name; object stores get a conditional PUT (If-None-Match)."""
    if isinstance(path, Path):
        staged = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        staged.write_bytes(data)
        try:
            os.link(staged, path)
        except FileExistsError:
            return False
        finally:
            staged.unlink()
        return True
    fs, where = resolve(path)
    try:
        with fs.open(where, "xb") as f:
            f.write(data)  # pyright: ignore[reportArgumentType]  (fsspec types open() as text; "xb" is binary)
    except FileExistsError:
        return False
    return True


def dataset_identity(data: str) -> dict:
    """What makes a dataset the same dataset for training: where it is, its config hash (dataset.json) and its
    complete shards' contents (their files' sha256 from `_stats.json`: an incremental build that added shards is
    another dataset)."""
    root = location(data)
    meta = join(root, DATASET_JSON)
    digest = hashlib.sha256()
    for shard in complete_shards(root):
        files = read_json(shard_paths(root, shard)["stats"]).get("files", {})
        digest.update(f"{shard}:{json.dumps(files, sort_keys=True)}\n".encode())
    return {"data": str(root), "dataset_hash": read_json(meta).get("config_hash") if is_file(meta) else None,
            "shards": digest.hexdigest()}


def shard_digests(root: Location, shards: list[int]) -> dict[str, str | None]:
    """Shard number (5 digits) → the sha256 of its Parquet as `_stats.json` lists it (None where it lists none): what
    a training run or a leak check read."""
    digests = {}
    for shard in shards:
        files = read_json(shard_paths(root, shard)["stats"]).get("files", {})
        digests[f"{shard:05d}"] = (files.get(f"{shard:05d}.parquet") or {}).get("sha256")
    return digests


def same_place(a: str | None, b: str | None) -> bool:
    """Whether two paths or URLs name the same folder (a local path resolved, a URL without its trailing slash)."""
    if a is None or b is None:
        return a == b

    def normal(where: str) -> str:
        loc = location(where)
        return str(loc.resolve()) if isinstance(loc, Path) else str(loc).rstrip("/")

    return normal(a) == normal(b)


def leak_flag(provenance: dict | None, benchmark: str | None, started_from: dict | None = None) -> str | None:
    """Why a prior's training data may hold images of `benchmark` (the folder it is evaluated on), or None: the
    dataset was not checked against it (no check, another benchmark, or shards it read that the check did not see as
    they are), or leaks were marked and trained on (data.skip_leaks=false); or the prior it continued is flagged.
    None for a record without provenance (written before it was recorded)."""
    if provenance is None:
        return None
    reasons = []
    check = provenance.get("leak_check")
    if check is None:
        if benchmark:
            reasons.append(f"no leak check: the dataset was not checked against the benchmark {benchmark} "
                           "(lambda-eclipse decontaminate)")
    else:
        if benchmark and not same_place(check.get("benchmark"), benchmark):
            reasons.append(f"the dataset was checked against {check.get('benchmark')}, not the benchmark {benchmark}")
        if check.get("unchecked_shards"):
            shards = check["unchecked_shards"]
            reasons.append(f"{len(shards)} shard(s) read were not checked as they are now ({', '.join(shards[:5])}"
                           f"{', …' if len(shards) > 5 else ''})")
        if check.get("marked") and not provenance.get("skip_leaks", True):
            reasons.append(f"{check['marked']} sample(s) marked as benchmark leaks were trained on "
                           "(data.skip_leaks=false)")
    if started_from and started_from.get("leak_flag"):
        reasons.append(f"continues {started_from['run']}, which is flagged")
    return "; ".join(reasons) or None


def training_key(dataset: dict, profile: str | None, train_config: dict, started_from: str | None) -> str:
    """The candidate a retrain run would train: its dataset (`dataset_identity`), the training profile and config,
    and the prior it continues; two runs with the same key would train the same prior."""
    what = {"dataset": dataset, "profile": profile, "train": train_config, "started_from": started_from}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def resolve_prior(prior: str | None, registry: str | None = None) -> str:
    """`prior` when given, else the registry's current prior (its final/ checkpoint)."""
    if prior:
        return prior
    try:
        reg = Registry.open(registry)
    except UserError as exc:
        raise UserError(f"no --prior given and {exc}; or pass --prior DIR") from None
    current = reg.current()
    if current is None:
        raise UserError(f"no --prior given and the prior registry {reg.root} has no current prior: train one (the "
                        "retrain deployments promote it), promote one with `lambda-eclipse priors promote RUN`, or "
                        "pass --prior DIR")
    return current["final"]


@dataclass
class Decision:
    promote: bool
    reason: str
    rows: list[dict] = field(default_factory=list)  # per metric: candidate, current, floor, ok


def decide(candidate: dict[str, float], current: dict[str, float] | None, tolerance: float) -> Decision:
    """Promote when every metric of the candidate is ≥ the current prior's − tolerance; the first prior always is."""
    missing = [METRICS[m] for m in METRICS if m not in candidate]
    if missing:
        raise UserError(f"the candidate has no {', '.join(missing)} score: its evaluation did not finish")
    if current is None:
        rows = [{"metric": METRICS[m], "candidate": candidate[m], "current": None, "floor": None, "ok": True}
                for m in METRICS]
        return Decision(True, "no current prior: the first trained prior is promoted", rows)
    rows = [{"metric": METRICS[m], "candidate": candidate[m], "current": current[m], "floor": current[m] - tolerance,
             "ok": candidate[m] >= current[m] - tolerance} for m in METRICS]
    worse = [r["metric"] for r in rows if not r["ok"]]
    floor = f"− {tolerance:g}" if tolerance >= 0 else f"+ {-tolerance:g}"  # negative: must improve by that much
    if worse:
        return Decision(False, f"not promoted: {', '.join(worse)} below the current prior's {floor}", rows)
    return Decision(True, f"promoted: every metric ≥ the current prior's {floor}", rows)


def decision_markdown(decision: Decision, candidate: dict, current: dict | None, tolerance: float) -> str:
    def score(value: float | None) -> str:
        return "—" if value is None else f"{value:.4f}"

    lines = ["# prior promotion", "", f"**{decision.reason}**", "",
             f"candidate `{candidate['run']}` (step {candidate['steps']}, dataset `{candidate['data']}`) against "
             + (f"current `{current['run']}` (step {current['steps']})" if current else "no current prior")
             + f"; tolerance {tolerance:g}.", "",
             "| metric | candidate | current | floor (current − tolerance) | ok |", "|---|---:|---:|---:|:---:|"]
    lines += [f"| {r['metric']} | {score(r['candidate'])} | {score(r['current'])} | {score(r['floor'])} | "
              f"{'✅' if r['ok'] else '❌'} |" for r in decision.rows]
    if candidate.get("leak_flag"):
        lines += ["", f"**LEAK**: the candidate's training data may hold benchmark images: {candidate['leak_flag']}"]
    return "\n".join(lines)


def _skipped(counts: dict) -> str:
    return ",".join(f"{name}={n}" for name, n in sorted(counts.items()) if n) or "—"


def table(records: list[dict], current: str | None) -> str:
    """`lambda-eclipse priors list`: one row per prior, oldest first, `*` on the current one. When a record holds its
    provenance, SHARDS (shards read), SKIPPED (marked samples left out, per mark set) and LEAKS (LEAK: flagged,
    `leak_flag`; checked: the dataset was checked against the benchmark; ? for a record without provenance)."""
    header = ["", "RUN", "STEPS", "DINO", "CLIP-I", "CLIP-T", "TRAINED", "DATASET (CONFIG HASH)", "FROM"]
    provenance = any(r.get("provenance") for r in records)
    if provenance:
        header += ["SHARDS", "SKIPPED", "LEAKS"]
    rows = [header]
    for r in records:
        row = [
            "*" if r["run"] == current else "", r["run"], str(r["steps"]),
            *(f"{(r.get('metrics') or {})[m]:.4f}" if m in (r.get("metrics") or {}) else "—" for m in METRICS),
            r.get("trained_at") or "—", f"{r['data']} ({(r.get('dataset_hash') or '?')[:12]})",
            r.get("started_from") or "—",
        ]
        if provenance:
            p = r.get("provenance")
            row += ["?", "?", "?"] if not p else [
                str(len(p.get("shards") or {})), _skipped(p.get("skipped") or {}),
                "LEAK" if r.get("leak_flag") else ("checked" if p.get("leak_check") else "unchecked"),
            ]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def flagged(records: list[dict]) -> list[str]:
    """One line per prior flagged for benchmark leaks (`leak_flag`), for `priors list`."""
    return [f"LEAK {r['run']}: {r['leak_flag']}" for r in records if r.get("leak_flag")]
