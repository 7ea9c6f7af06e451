"""How the Ray Data pipeline is composed: its operators and the batch size each one asks for."""

import ray.data

from lambda_eclipse.config import load_config
from lambda_eclipse.sample import Sample, SourceRef
from lambda_eclipse.tasks.decode import Decode
from lambda_eclipse.tasks.pipeline import run_ray


def test_model_stages_keep_their_batch_and_cpu_stages_take_blocks_as_they_come(ray_local, monkeypatch):
    """A CPU stage asking for more rows than a block holds makes Ray bundle blocks, and the pipeline stops streaming."""
    calls = []

    def record(self, fn, **kwargs):
        calls.append((getattr(fn, "__name__", ""), kwargs.get("fn_constructor_kwargs", {}).get("stage"),
                      [s.name for s in kwargs.get("fn_kwargs", {}).get("stages", [])], kwargs["batch_size"]))
        return self

    monkeypatch.setattr(ray.data.Dataset, "map_batches", record)
    monkeypatch.setattr(ray.data.Dataset, "iter_batches", lambda self, **kwargs: iter([]))
    cfg = load_config(overrides=["caption.batch_size=6", "masks.batch_size=3"])
    list(run_ray([Sample(key="k", source="x", ref=SourceRef("x"))], cfg, "tiny"))

    sizes = {(stage.name if stage else ",".join(cpu)): size for _, stage, cpu, size in calls}
    assert sizes == {
        "decode,resolution,white_background": 3, "caption": 6, "nouns": 3, "boxes": 8,
        "box_filters": 3, "masks": 3, "mask_filters,subjects,crops,edge": 3, "features": 32,
    }
    assert Decode.batch_size_for(cfg) == 64 and Decode.batch_size_for(cfg, 5) == 5  # the in-process default
