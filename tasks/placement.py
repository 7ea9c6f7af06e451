"""How a build fills the cluster it runs on: a pure function from the cluster's nodes and each model stage's cost per
sample to the size of every stage's actor pool and the number of unit tasks (docs/build-dataset.md, "Placement").

- With GPUs, the GPU stages share every GPU of the cluster in proportion to their GPU work per sample (docs/design.md's
  FLOP estimates): a stage whose share is one GPU or more gets whole-GPU actors, the remaining fractions are packed onto
  the GPUs left (a fraction that does not fit one GPU's remainder is split over two actors), so that every GPU is used
  and every actor fits. CPU-only stages (spaCy) get the actors the GPU stages' throughput needs.
- Without GPUs, every stage and the unit tasks share the CPUs in proportion to their CPU seconds per sample; two unit
  tasks share each unit slot's CPUs (`UNIT_OVERLAP`), since a unit waits on the actors most of its time.
- Costs start as the stages' declared estimates and are replaced by measured ones while the build runs (balancing).
- `runtime.actors.<stage>` and `runtime.gpus.<stage>` fix a stage's pool (bounds and overrides, not the way to get
  throughput); the rest of the cluster is shared among the other stages.
- Each node is planned on its own and its actors prefer it: every node's set fits that node (Ray could not always
  pack a cluster-wide set of fractional shares onto its nodes), a lost node takes only its own share of every pool
  with it, and a node that joins brings its own. Nodes without GPUs in a GPU cluster run unit tasks only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from lambda_eclipse.actor_pool import Placement

GPU_TFLOPS = 800.0  # dense bf16 TFLOP/s of one H100-class GPU, for predictions only (the ratio to the bound is exact)
UNIT_CPUS = 1.0  # one unit task: decode, CPU filters, crops, Canny, shard encoding
# Unit tasks per slot of a CPU plan: a unit waits on the actors most of its time (its batches visit the model stages
# one after another), so two share a slot's CPUs and one works while the other waits. One left a node's second core
# idle (flow / in-process loop 0.75 on 2 cores); two measured 0.94, the measured bound within 5 % of the placement's
# prediction; six oversubscribed the cores (0.39).
UNIT_OVERLAP = 2
FIT = 1e-4  # shares are rounded down to this, so that shares that fill a node exactly still fit on it


@dataclass(frozen=True)
class ClusterShape:
    """A named cluster of identical nodes, for predictions (bench, a sample build's forecast)."""

    name: str
    nodes: int
    cpus: int  # per node
    gpus: int = 0  # per node

    def nodes_resources(self) -> dict[str, dict[str, float]]:
        """The nodes as `plan_pools` takes them (as Ray reports them: no GPU key on a node without GPUs)."""
        node = {"CPU": float(self.cpus)} | ({"GPU": float(self.gpus)} if self.gpus else {})
        return {f"n{i}": dict(node) for i in range(self.nodes)}


CLUSTER_SHAPES = (
    ClusterShape("3 nodes x 6 CPUs (the local test cluster)", 3, 6),
    ClusterShape("one 64-core CPU node", 1, 64),
    ClusterShape("one node of 8 H100-class GPUs, 96 CPUs", 1, 96, 8),
    ClusterShape("16 such nodes", 16, 96, 8),
)


@dataclass(frozen=True)
class StageDemand:
    """What one model stage costs per sample, and its overrides."""

    name: str
    tflops: float  # GPU work per sample; 0: a stage that runs on CPUs only
    cpu_seconds: float  # CPU seconds per sample where it runs on CPUs (measured once known)
    cpus: float = 1.0  # CPUs per actor on a GPU cluster (input preparation beside the GPU)
    actors: int | None = None  # runtime.actors.<stage>: a fixed pool size
    gpus: float | None = None  # runtime.gpus.<stage>: a fixed GPU share per actor (0: on CPUs)


@dataclass
class PoolPlan:
    pools: dict[str, list[Placement]]  # per stage: one Placement per kind of actor (count in `actors`)
    unit_cpus: float  # CPUs one unit task asks for
    unit_slots: int  # unit tasks that run at once
    predicted: float  # samples/s the plan predicts from the costs
    bound: float  # samples/s of the cluster's bound: its GPUs' FLOPs, or without GPUs its CPUs
    notes: list[str] = field(default_factory=list)

    def actors(self, stage: str) -> int:
        return sum(p.actors for p in self.pools[stage])

    def reserved(self) -> dict[str, float]:
        """CPUs and GPUs the plan asks Ray for when every actor and unit slot runs."""
        cpus = sum(p.cpus * p.actors for kinds in self.pools.values() for p in kinds) + self.unit_cpus * self.unit_slots
        gpus = sum(p.gpus * p.actors for kinds in self.pools.values() for p in kinds)
        return {"CPU": cpus, "GPU": gpus}

    def describe(self) -> str:
        parts = []
        for name, kinds in self.pools.items():
            shown = " + ".join(f"{p.actors}×({p.cpus:g} CPU, {p.gpus:g} GPU)" for p in kinds)
            parts.append(f"{name} {shown}")
        return (", ".join(parts) + f"; {self.unit_slots} unit task(s) × {self.unit_cpus:g} CPU; predicted "
                f"{self.predicted:.3g} samples/s of a {self.bound:.3g} samples/s bound")


def _down(x: float) -> float:
    return math.floor(x / FIT) * FIT


def _pack(fractions: dict[str, float], gpus: int) -> dict[str, list[float]]:
    """Fractional GPU shares (each < 1) onto `gpus` whole GPUs, largest first; a share that does not fit a GPU's
    remainder is split into two actors. Returns each stage's actor shares."""
    free = [1.0] * gpus
    out: dict[str, list[float]] = {name: [] for name in fractions}
    for name, share in sorted(fractions.items(), key=lambda kv: -kv[1]):
        left = share
        for i in range(len(free)):
            if left <= FIT:
                break
            if free[i] <= FIT:
                continue
            take = min(left, free[i])
            out[name].append(_down(take))
            free[i] -= take
            left -= take
    return out


def _placements(shares: list[float], cpus: float) -> list[Placement]:
    """Actors of the given GPU shares (equal ones grouped), each with `cpus` CPUs."""
    counts: dict[float, int] = {}
    for share in shares:
        if share > FIT:
            counts[share] = counts.get(share, 0) + 1
    return [Placement(cpus=cpus, gpus=g, actors=n, threads=max(1, math.floor(cpus))) for g, n in counts.items()]


def _gpu_plan(nodes: list[dict[str, float]], demands: list[StageDemand], unit_seconds: float,
              tflops_per_gpu: float) -> PoolPlan:
    total_gpus = int(sum(n.get("GPU", 0) for n in nodes))
    total_cpus = sum(n.get("CPU", 0) for n in nodes)
    on_gpu = [d for d in demands if d.tflops > 0 and d.gpus != 0]
    fixed = [d for d in on_gpu if d.gpus is not None]
    shared = [d for d in on_gpu if d.gpus is None]
    pools: dict[str, list[Placement]] = {}
    capacity: dict[str, float] = {}  # GPUs per stage
    used = 0.0
    for d in fixed:
        n = d.actors or 1
        pools[d.name] = [Placement(cpus=d.cpus, gpus=d.gpus or 0.0, actors=n, threads=max(1, math.floor(d.cpus)))]
        capacity[d.name] = n * (d.gpus or 0.0)
        used += capacity[d.name]
    left = max(0.0, total_gpus - used)
    work = sum(d.tflops for d in shared)
    whole: dict[str, int] = {}
    fractions: dict[str, float] = {}
    for d in shared:
        share = left * d.tflops / work if work else 0.0
        whole[d.name] = math.floor(share + 1e-9)
        fractions[d.name] = share - whole[d.name]
    packed = _pack({k: v for k, v in fractions.items() if v > FIT}, int(round(left - sum(whole.values()))))
    for d in shared:
        shares = [1.0] * whole[d.name] + packed.get(d.name, [])
        if not shares:  # a share too small to place: one actor of the smallest fraction Ray places
            shares = [FIT * 100]
        pools[d.name] = _placements(shares, d.cpus)
        capacity[d.name] = sum(shares)
    gpu_rate = min((capacity[d.name] * tflops_per_gpu / d.tflops for d in on_gpu), default=math.inf)
    for d in demands:  # CPU-only stages: as many actors as the GPU stages' rate needs
        if d.name in pools:
            continue
        need = gpu_rate * d.cpu_seconds / d.cpus if math.isfinite(gpu_rate) else 1
        pools[d.name] = [Placement(cpus=d.cpus, gpus=0.0, actors=d.actors or max(1, math.ceil(need)),
                                   threads=max(1, math.floor(d.cpus)))]
    actor_cpus = sum(p.cpus * p.actors for kinds in pools.values() for p in kinds)
    slots = max(1, math.floor((total_cpus - actor_cpus) / UNIT_CPUS))
    notes = []
    if actor_cpus + UNIT_CPUS > total_cpus:
        notes.append(f"the actors ask for {actor_cpus:g} CPUs of the cluster's {total_cpus:g}: lower runtime.actors")
    rates = [gpu_rate, slots * UNIT_CPUS / unit_seconds if unit_seconds else math.inf]
    rates += [sum(p.actors * p.cpus for p in pools[d.name]) / d.cpu_seconds
              for d in demands if d.name not in capacity and d.cpu_seconds]
    bound = total_gpus * tflops_per_gpu / sum(d.tflops for d in on_gpu) if on_gpu else math.inf
    return PoolPlan(pools, UNIT_CPUS, slots, min(rates), bound, notes)


def _cpu_plan(nodes: list[dict[str, float]], demands: list[StageDemand], unit_seconds: float) -> PoolPlan:
    """Every stage and the unit tasks get CPUs in proportion to their CPU seconds per sample, in actors (and unit
    slots) of at most one CPU each: shares are exact, so the plan reserves the whole node and predicts its bound."""
    total = sum(n.get("CPU", 0) for n in nodes)
    fixed = {d.name: d for d in demands if d.actors is not None}
    fixed_cpus = min(total / 2, float(sum(d.actors or 0 for d in fixed.values())))  # one CPU per fixed actor
    free = [d for d in demands if d.actors is None]
    cost = sum(d.cpu_seconds for d in free) + unit_seconds
    room = total - fixed_cpus

    def split(share: float) -> tuple[int, float]:
        count = max(1, math.ceil(share - 1e-9))
        return count, _down(share / count)

    pools: dict[str, list[Placement]] = {}
    for d in demands:
        if d.name in fixed:
            per = _down(fixed_cpus / sum(f.actors or 1 for f in fixed.values()))
            pools[d.name] = [Placement(cpus=per, gpus=0.0, actors=d.actors or 1, threads=max(1, math.floor(per)))]
        else:
            count, per = split(room * d.cpu_seconds / cost)
            pools[d.name] = [Placement(cpus=per, gpus=0.0, actors=count, threads=1)]
    slots, unit_cpus = split(room * unit_seconds / cost)
    slots, unit_cpus = slots * UNIT_OVERLAP, _down(unit_cpus / UNIT_OVERLAP)
    rates = [sum(p.cpus * p.actors for p in pools[d.name]) / d.cpu_seconds for d in demands if d.cpu_seconds]
    rates.append(slots * unit_cpus / unit_seconds if unit_seconds else math.inf)
    return PoolPlan(pools, unit_cpus, slots, min(rates), total / (sum(d.cpu_seconds for d in demands) + unit_seconds))


def _node(resources: Mapping[str, float], demands: list[StageDemand], unit_seconds: float, tflops_per_gpu: float,
          gpu_cluster: bool) -> PoolPlan:
    node = [dict(resources)]
    if resources.get("GPU", 0) >= 1:
        return _gpu_plan(node, demands, unit_seconds, tflops_per_gpu)
    if gpu_cluster:  # a CPU node beside GPU nodes: unit tasks only (the models run on the GPUs)
        slots = max(1, math.floor(resources.get("CPU", 0) / UNIT_CPUS))
        return PoolPlan({d.name: [] for d in demands}, UNIT_CPUS, slots,
                        slots * UNIT_CPUS / unit_seconds if unit_seconds else math.inf, 0.0)
    return _cpu_plan(node, demands, unit_seconds)


def _split(demands: list[StageDemand], nodes: int, index: int) -> list[StageDemand]:
    """Node `index`'s part of fixed pool sizes (runtime.actors.<stage> counts actors of the whole cluster)."""
    def part(n: int) -> int:
        return n // nodes + (1 if index < n % nodes else 0)

    return [d if d.actors is None else replace(d, actors=part(d.actors)) for d in demands]


def plan_pools(nodes: Mapping[str, Mapping[str, float]] | Sequence[Mapping[str, float]], demands: list[StageDemand],
               unit_seconds: float, tflops_per_gpu: float = GPU_TFLOPS) -> PoolPlan:
    """The pools that fill the cluster of `nodes` (each node's total resources, as Ray counts them, by node id), for
    stages costing `demands` per sample and unit tasks costing `unit_seconds` of CPU per sample."""
    named = dict(nodes) if isinstance(nodes, Mapping) else {str(i): n for i, n in enumerate(nodes)}
    # a node with neither CPUs nor GPUs for us (a head node started with --num-cpus=0) takes no work
    named = {k: n for k, n in named.items() if n.get("CPU", 0) >= 0.1 or n.get("GPU", 0) >= 1} or named
    gpu_cluster = any(n.get("GPU", 0) >= 1 for n in named.values())
    plans = {}
    for i, (node_id, resources) in enumerate(sorted(named.items())):
        mine = [d for d in _split(demands, len(named), i) if d.actors != 0]
        plan = _node(resources, mine, unit_seconds, tflops_per_gpu, gpu_cluster)
        plans[node_id] = plan
    pools: dict[str, list[Placement]] = {d.name: [] for d in demands}
    for node_id, plan in plans.items():
        for name, kinds in plan.pools.items():
            pools[name] += [replace(p, node=node_id if isinstance(nodes, Mapping) else None) for p in kinds]
    unit_cpus = min((p.unit_cpus for p in plans.values()), default=UNIT_CPUS)
    slots = sum(max(1, math.floor(p.unit_slots * p.unit_cpus / unit_cpus + 1e-9)) for p in plans.values())
    notes = [f"node {node_id[:8]}: {n}" for node_id, p in plans.items() for n in p.notes]
    if not gpu_cluster:
        predicted = sum(p.predicted for p in plans.values())
        bound = sum(p.bound for p in plans.values())
    else:
        predicted = sum(p.predicted for p in plans.values() if p.bound)
        bound = sum(p.bound for p in plans.values())
    return PoolPlan(pools, unit_cpus, slots, predicted, bound, notes)
