"""build-dataset's model stages on Ray: each stage's costs and overrides (what the placement sizes its pool from),
checked before Ray starts."""

import pytest

from lambda_eclipse.errors import UserError
from tasks.actors import demands
from tasks.config import load_build_config
from tasks.pipeline import MODEL_STAGES


def test_every_model_stage_declares_its_costs_and_overrides_reach_it():
    cfg = load_build_config(overrides=["runtime.gpus.masks=0.5", "runtime.actors.masks=2", "runtime.actors.caption=3"])
    by_name = {d.name: d for d in demands(cfg)}
    assert list(by_name) == MODEL_STAGES
    assert all(d.cpu_seconds > 0 for d in by_name.values())
    assert by_name["nouns"].tflops == 0
    assert all(by_name[s].tflops > 0 for s in ("caption", "boxes", "masks", "features"))
    assert by_name["masks"].tflops == max(d.tflops for d in by_name.values())  # SAM ViT-H: the most GPU work
    assert (by_name["masks"].gpus, by_name["masks"].actors, by_name["caption"].actors) == (0.5, 2, 3)
    assert by_name["boxes"].actors is None and by_name["boxes"].gpus is None
    measured = {d.name: d.cpu_seconds for d in demands(cfg, {"masks": 0.25})}
    assert measured["masks"] == 0.25 and measured["caption"] == by_name["caption"].cpu_seconds


@pytest.mark.parametrize(
    "override, message",
    [
        ("runtime.actors.sam=2", "runtime.actors: unknown stage sam; model stages are caption, nouns, boxes"),
        ("runtime.gpus.decode=1", "runtime.gpus: unknown stage decode"),
        ("runtime.actors.masks=0", "runtime.actors: masks=0.0 must be a whole number of at least 1"),
        ("runtime.actors.masks=1.5", "runtime.actors: masks=1.5 must be a whole number of at least 1"),
        ("runtime.gpus.masks=-1", "runtime.gpus: masks=-1.0 must be a fraction of at least 0"),
    ],
)
def test_bad_placements_name_the_stage(override, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        demands(load_build_config(overrides=[override]))


@pytest.mark.parametrize("override, message", [
    ("runtime.unit_retries=-1", r"runtime.unit_retries must be 0 \(no retry\) or more, got -1"),
    ("runtime.max_failed_units=-2", r"runtime.max_failed_units must be 0 \(automatic\) or more, got -2"),
    ("runtime.placement_timeout=0", "runtime.placement_timeout must be > 0 seconds, got 0"),
])
def test_bad_runtime_values_fail_before_ray_starts(override, message):
    from tasks.actors import check_runtime

    with pytest.raises(UserError, match=message):
        check_runtime(load_build_config(overrides=[override]))
