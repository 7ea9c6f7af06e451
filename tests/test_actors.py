"""The Ray adapter for model stages: what each stage's actors ask for, and the overrides."""

import pytest

from lambda_eclipse.errors import UserError
from tasks.actors import placements, unit_cpus
from tasks.config import load_build_config
from tasks.pipeline import MODEL_STAGES


def test_declared_resources_fit_a_small_cpu_cluster():
    cfg = load_build_config()
    placed = placements(cfg, {"CPU": 2.0})
    assert list(placed) == MODEL_STAGES
    assert all(p.gpus == 0 and p.actors == 1 and p.threads == 1 for p in placed.values())  # no GPU: none asked
    total = sum(p.cpus * p.actors for p in placed.values()) + unit_cpus(cfg, {"CPU": 2.0})
    assert total <= 2.0 + 1e-6  # every actor and one unit task fit at once, or the build would wait forever


def test_gpu_shares_apply_only_where_the_cluster_has_gpus_and_overrides_win():
    cfg = load_build_config(overrides=["runtime.gpus.masks=0.5", "runtime.actors.masks=2", "runtime.actors.caption=3"])
    on_gpus = placements(cfg, {"CPU": 64.0, "GPU": 8.0})
    assert on_gpus["masks"].gpus == 0.5 and on_gpus["caption"].gpus == 0.2 and on_gpus["nouns"].gpus == 0
    assert on_gpus["masks"].actors == 2 and on_gpus["caption"].actors == 3 and on_gpus["boxes"].actors == 1
    assert on_gpus["caption"].cpus == 1.0 and on_gpus["caption"].threads == 1  # threads from the actor's share
    on_cpus = placements(cfg, {"CPU": 64.0})
    assert on_cpus["masks"].gpus == 0.5 and on_cpus["caption"].gpus == 0  # an explicit fraction is kept


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
        placements(load_build_config(overrides=[override]), {"CPU": 4.0})
