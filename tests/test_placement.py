"""Placement as a pure function (tasks/placement.py): the pools fill the cluster they are given, GPUs by each stage's
GPU work, CPUs by each stage's CPU seconds, every actor fits a node, and overrides are kept. No GPU is needed."""

import math

import pytest

from tasks.actors import UNIT_SECONDS, demands
from tasks.config import load_build_config
from tasks.placement import FIT, StageDemand, plan_pools


def _nodes(count: int, cpus: float, gpus: float = 0) -> dict[str, dict[str, float]]:
    return {f"node{i:02d}": {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus} for i in range(count)}


def _fits(plan, nodes) -> bool:
    """Each node's actors fit it: their CPUs, and their GPU shares first-fit onto its GPUs, largest first, as Ray
    places fractional GPUs; with one unit task on each node's CPUs that are left."""
    for node_id, resources in nodes.items():
        mine = [p for kinds in plan.pools.values() for p in kinds if p.node == node_id for _ in range(p.actors)]
        if sum(p.cpus for p in mine) + plan.unit_cpus > resources["CPU"] + 1e-6:
            return False
        free = [1.0] * int(resources.get("GPU", 0))
        for share in sorted((p.gpus for p in mine if p.gpus), reverse=True):
            for i, left in enumerate(free):
                if share <= left + 1e-9:
                    free[i] -= share
                    break
            else:
                return False
    return True


DEFAULT = demands(load_build_config())


@pytest.mark.parametrize("count, cpus", [(1, 2), (1, 4), (3, 6), (2, 2), (1, 64), (4, 16), (16, 96)])
def test_a_cpu_cluster_is_reserved_whole_and_every_actor_fits(count, cpus):
    nodes = _nodes(count, cpus)
    plan = plan_pools(nodes, DEFAULT, UNIT_SECONDS)
    reserved = plan.reserved()
    total = count * cpus
    assert reserved["GPU"] == 0
    assert 0.9 * total <= reserved["CPU"] <= total + 1e-6  # ≥ 90 % of the CPUs, never more than there are
    for kinds in plan.pools.values():
        assert all(p.cpus <= cpus and p.actors >= 1 and p.cpus > 0 for p in kinds)
    assert _fits(plan, nodes)
    assert plan.unit_slots >= 1 and 0 < plan.unit_cpus <= 1
    assert plan.predicted <= plan.bound * (1 + 1e-9)


def test_on_cpus_the_costliest_stage_gets_the_most_actors_and_measured_costs_move_them():
    nodes = _nodes(3, 6)
    plan = plan_pools(nodes, DEFAULT, UNIT_SECONDS)
    cost = {d.name: d.cpu_seconds for d in DEFAULT}
    costliest, cheapest = max(cost, key=lambda n: cost[n]), min(cost, key=lambda n: cost[n])
    assert plan.actors(costliest) >= plan.actors(cheapest)
    measured = demands(load_build_config(), {"masks": 0.5, "caption": 0.005, "boxes": 0.005, "features": 0.005})
    again = plan_pools(nodes, measured, UNIT_SECONDS)
    assert again.actors("masks") > plan.actors("masks") and again.actors("masks") == max(
        again.actors(n) for n in again.pools)


@pytest.mark.parametrize("count, gpus, cpus", [(1, 1, 16), (1, 2, 32), (1, 8, 96), (2, 4, 48), (16, 8, 96), (3, 3, 24)])
def test_every_gpu_is_shared_by_the_gpu_stages_in_proportion_to_their_flops(count, gpus, cpus):
    nodes = _nodes(count, cpus, gpus)
    plan = plan_pools(nodes, DEFAULT, 0.06)
    total = count * gpus
    assert plan.reserved()["GPU"] == pytest.approx(total, abs=0.01)  # every GPU, and no more
    assert _fits(plan, nodes)
    work = {d.name: d.tflops for d in DEFAULT if d.tflops}
    for name, tflops in work.items():
        share = sum(p.gpus * p.actors for p in plan.pools[name])
        assert share == pytest.approx(total * tflops / sum(work.values()), abs=FIT * 10 * count)  # rounding per node
        assert all(p.gpus == 1.0 or p.gpus < 1 for p in plan.pools[name])  # whole GPUs, or fractions of one
    assert all(p.gpus == 0 for p in plan.pools["nouns"])  # spaCy stays on CPUs
    assert plan.predicted >= 0.99 * plan.bound
    assert plan.reserved()["CPU"] <= count * cpus


def test_eight_gpus_use_whole_gpu_actors_for_sam_and_the_bound_is_the_flop_bound():
    plan = plan_pools(_nodes(1, 96, 8), DEFAULT, 0.06, tflops_per_gpu=800)
    masks = plan.pools["masks"]
    assert any(p.gpus == 1.0 and p.actors >= 4 for p in masks)  # 8 × 5.9 / 11.1 = 4.25 GPUs of SAM
    assert plan.bound == pytest.approx(8 * 800 / sum(d.tflops for d in DEFAULT))
    assert plan.pools["nouns"][0].actors == math.ceil(plan.predicted * 0.005)


def test_overrides_fix_a_pool_and_the_rest_shares_what_is_left():
    cfg = load_build_config(overrides=["runtime.gpus.masks=0.5", "runtime.actors.masks=2", "runtime.gpus.caption=0"])
    plan = plan_pools(_nodes(1, 32, 4), demands(cfg), 0.06)
    assert [(p.gpus, p.actors) for p in plan.pools["masks"]] == [(0.5, 2)]
    assert all(p.gpus == 0 for p in plan.pools["caption"])  # runtime.gpus.caption=0: on CPUs
    others = sum(p.gpus * p.actors for n in ("boxes", "features") for p in plan.pools[n])
    assert others == pytest.approx(3.0, abs=0.01)  # the 3 GPUs masks does not use
    cpu_only = plan_pools(_nodes(1, 8), demands(load_build_config(overrides=["runtime.actors.boxes=3"])), 0.02)
    assert cpu_only.actors("boxes") == 3


def test_a_lost_node_takes_only_its_own_share_and_cpu_nodes_beside_gpus_run_units():
    nodes = _nodes(2, 2)
    plan = plan_pools(nodes, DEFAULT, UNIT_SECONDS)
    for name in plan.pools:  # every node has an actor of every stage: losing one leaves a whole set
        assert {p.node for p in plan.pools[name]} == set(nodes)
    head = plan_pools({"head": {"CPU": 0.0}, "w": {"CPU": 4.0}}, DEFAULT, UNIT_SECONDS)  # a head with --num-cpus=0
    assert {p.node for kinds in head.pools.values() for p in kinds} == {"w"}
    mixed = {"gpu": {"CPU": 32, "GPU": 2}, "cpu": {"CPU": 16}}
    plan = plan_pools(mixed, DEFAULT, 0.06)
    assert all(p.node == "gpu" for kinds in plan.pools.values() for p in kinds)
    assert plan.unit_slots >= 16 + 1  # the CPU node's CPUs become unit slots


def test_a_cpu_only_stage_on_a_gpu_cluster_keeps_up_with_the_gpus():
    slow_nlp = [d if d.name != "nouns" else StageDemand("nouns", 0.0, 0.05) for d in DEFAULT]
    plan = plan_pools(_nodes(1, 96, 8), slow_nlp, 0.06)
    nouns = plan.pools["nouns"][0].actors
    assert nouns * 1.0 / 0.05 >= plan.predicted  # its actors serve at least the GPU stages' rate
