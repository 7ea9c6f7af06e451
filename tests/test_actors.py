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
        ("runtime.actors.sam=2", "runtime.actors must name model stages (caption, nouns, boxes, masks, features) "
                                 "with whole numbers of actors ≥ 1, e.g. runtime.actors.masks=2 (got {'sam': 2"),
        ("runtime.gpus.decode=1", "runtime.gpus must name model stages (caption, nouns, boxes, masks, features) "
                                  "with GPU fractions ≥ 0, e.g. runtime.gpus.masks=0.5 (got {'decode': 1"),
        ("runtime.actors.masks=0", "runtime.actors must name model stages"),
        ("runtime.actors.masks=1.5", "(got {'masks': 1.5})"),
        ("runtime.gpus.masks=-1", "runtime.gpus must name model stages"),
    ],
)
def test_bad_placements_name_the_key_and_the_value(override, message):
    with pytest.raises(UserError) as err:
        load_build_config(overrides=[override]).check(MODEL_STAGES)
    assert message in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("runtime.unit_retries=-1", r"runtime.unit_retries must be ≥ 0 \(0: no retry\) \(got -1\)"),
    ("runtime.max_failed_units=-2", r"runtime.max_failed_units must be ≥ 0 \(0: automatic\) \(got -2\)"),
    ("runtime.placement_timeout=0", r"runtime.placement_timeout must be > 0 seconds \(got 0"),
    ("boxes.max_boxes=0", r"boxes.max_boxes must be ≥ boxes.min_boxes ≥ 0 \(got 0\)"),
    ("duplicates.max_distance=64", r"duplicates.max_distance must be in \[-1, 63\]"),
    ("caption.batch_size=0", r"caption.batch_size must be ≥ 1 \(got 0\)"),
])
def test_bad_values_fail_before_ray_starts(override, message):
    with pytest.raises(UserError, match=message):
        load_build_config(overrides=[override]).check(MODEL_STAGES)


def test_every_bad_key_is_named_at_once():
    cfg = load_build_config(overrides=["runtime.unit_retries=-1", "white_background.threshold=2",
                                       "runtime.actors.nope=2"])
    with pytest.raises(UserError) as err:
        cfg.check(MODEL_STAGES)
    message = str(err.value)
    assert message.startswith("invalid config: ") and "\n" not in message
    for key in ("runtime.unit_retries", "white_background.threshold", "runtime.actors must name model stages"):
        assert key in message
