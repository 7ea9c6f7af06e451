"""train-prior flow: one Prefect task runs the training on Ray Train workers, which write everything to the run
directory (a path or URL); this process reads the summary and metrics from there, never from a worker's disk. The
flow publishes its dashboard, a metrics table and a train/val loss curve, and emits `EVENT` when the model is
trained, which a deployment trigger can react to (for example to run generation or evaluation on the new prior):

    triggers:
      - type: event
        expect: ["lambda-eclipse.prior.trained"]
"""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic.json_schema import SkipJsonSchema

from flows.handed import Handed, config_hash, plan_of
from flows.run_log import forwarded
from prior.config import load_train_config
from prior.driver import LOGGER, run_training
from prior.job import TrainJob
from prior.prepare import prepare_training
from storage.confine import confine
from storage.fs import is_file, join, write_bytes
from storage.layout import read_json
from storage.run_dir import read_metrics

EVENT = "lambda-eclipse.prior.trained"
COLORS = {"train": (0, 110, 200), "val": (230, 100, 20)}


@task(name="train", cache_policy=NO_CACHE)
def train(job: TrainJob) -> dict:
    with forwarded(LOGGER):
        return run_training(job)


@flow(name="train-prior")
def train_prior(
    data: str,
    output: str,
    profile: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    init_from: str | None = None,
    handed: SkipJsonSchema[Handed | None] = None,
) -> dict:
    """Train the λ-ECLIPSE prior on the dataset in `data`, writing checkpoints and the final model to `output`.

    `profile`: None picks it from the dataset (paper for 1280-d embeddings, else tiny). `init_from`: a run directory
    (or its final/, or a checkpoint) whose latest training state starts this new run; it is only read. Returns the
    run's summary.json plus `run_dir`, `data`, `dataset_hash` (dataset.json's config hash) and `metrics` (the last
    validation's). `handed`: the job `lambda-eclipse train-prior` prepared from these parameters (flows/handed.py);
    without it the flow prepares its own."""
    confine(data=data, output=output, config_file=config_file, init_from=init_from)
    job: TrainJob = plan_of(handed, lambda: prepare_training(
        data, output, profile, load_train_config(config_file, overrides or []), resume, init_from))
    return run_train(job, data)


def hand(job: TrainJob) -> Handed:
    """The CLI's job for the flow, and what its run records of it."""
    return Handed(plan=job, summary={"config_hash": config_hash(job.cfg), "profile": str(job.profile),
                                     "output": job.output, "start_from": job.start_from,
                                     "train_shards": len(job.data.splits["train"].shards),
                                     "val_shards": len(job.data.splits["val"].shards)})


def run_train(job: TrainJob, data: str) -> dict:
    """Train `job`, in a train-prior flow run (it logs to the run, publishes its artifacts and emits `EVENT`);
    `data`: the dataset as the run names it."""
    logger = get_run_logger()
    if job.warning:
        logger.warning("warning: %s", job.warning)
    start = ""
    if job.start_from:
        start = (f", resuming from {job.start_from}" if job.same_run
                 else f", a new run from the training state in {job.start_from}")
    logger.info(
        "%s prior (d = %d) on %s: %d train / %d val shards%s", job.profile, job.model_config["embedding_dim"], data,
        len(job.data.splits["train"].shards), len(job.data.splits["val"].shards), start,
    )
    try:
        summary = train(job)
    finally:  # a failed run (a non-finite loss) shows its curve up to the failure too
        _publish(job.output)
    meta = join(job.data.root, "dataset.json")
    result = summary | {
        "run_dir": job.output,
        "data": data,
        "dataset_hash": read_json(meta).get("config_hash") if is_file(meta) else None,
        "metrics": summary["val"],
    }
    emit_event(event=EVENT, resource={"prefect.resource.id": f"lambda-eclipse.prior.{job.output}"}, payload=result)
    logger.info("done: step %d, final model %s", summary["step"], summary["final"])
    return result


def _publish(run: str) -> None:
    records = read_metrics(run)
    if not records:
        return
    train_at = {r["step"]: r for r in records if r["split"] == "train"}
    rows = [
        {"step": v["step"], "train loss": _round(train_at.get(v["step"], {}).get("loss"))}
        | {f"val {k}": _round(v[k]) for k in ("loss", "mse", "contrastive", "cosine", "top1")}
        for v in records if v["split"] == "val"
    ]
    create_table_artifact(table=rows, key="train-prior-metrics", description="one row per validation")
    png = loss_curve(records)
    write_bytes(join(run, "loss_curve.png"), png)
    create_image_artifact(
        image_url="data:image/png;base64," + base64.b64encode(png).decode(),
        key="train-prior-loss-curve",
        description=f"train and val loss (Eq. 1) of {run}",
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


def loss_curve(records: list[dict], size: tuple[int, int] = (720, 420)) -> bytes:
    """Train and val loss against step, as a PNG (drawn with PIL: no plotting library needed)."""
    width, height = size
    left, right, top, bottom = 70, 20, 30, 40
    series = {split: [(r["step"], r["loss"]) for r in records if r["split"] == split] for split in COLORS}
    points = [p for s in series.values() for p in s]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1e-9)

    def xy(step: float, loss: float) -> tuple[float, float]:
        return (left + (step - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (loss - y0) / (y1 - y0) * (height - top - bottom))

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    for label, (x, y) in ((f"{y1:.4g}", (4, top - 6)), (f"{y0:.4g}", (4, height - bottom - 6)),
                          (str(x0), (left, height - bottom + 6)), (str(x1), (width - right - 40, height - bottom + 6)),
                          ("step", (width // 2, height - bottom + 20))):
        draw.text((x, y), label, fill="black")
    for i, (split, values) in enumerate(series.items()):
        draw.text((left + 10 + 90 * i, 8), f"{split} loss", fill=COLORS[split])
        line = [xy(*p) for p in values]
        if len(line) > 1:
            draw.line(line, fill=COLORS[split], width=2)
        for x, y in line:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=COLORS[split])
    png = io.BytesIO()
    image.save(png, format="PNG")
    return png.getvalue()
