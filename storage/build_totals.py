"""A build's totals, kept as running sums: each shard's stats (`_stats.json`) is added once and forgotten, so the flow
that watches 100,000 units holds kilobytes, not every shard's stats. Totals of two sets of shards merge (the shards
of earlier runs are summed in chunks on the workers and merged here).

Besides the sums they keep the few shard numbers the summary reads pixels from: the lowest-numbered shards with
accepted samples (the contact sheet) and, per stage, the lowest-numbered shards that rejected something there (the
rejects gallery), so the report reads a bounded number of files whatever the build's size, and the same ones
whatever order the shards finished in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHEET_SHARDS = 16  # shards with accepted samples kept for the contact sheet (it draws at most 16 samples)
GALLERY_SHARDS = 6  # shards kept per rejecting stage for the rejects gallery (it shows at most 6 rejects a stage)


def _add(mine: dict, theirs: dict) -> None:
    for key, n in theirs.items():
        mine[key] = mine.get(key, 0) + n


def _lowest(shards: list[int], more: list[int], keep: int) -> list[int]:
    return sorted(set(shards) | set(more))[:keep]


@dataclass
class BuildTotals:
    shards: int = 0
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    seconds: float = 0.0  # summed over shards: the workers' time, not the build's wall time
    dropped_subjects: int = 0  # subjects the features stage removed from samples it still accepted
    subjects: int = 0  # subject crops of the accepted samples
    bytes: int = 0  # of the shards' files
    funnel: dict[str, list[int]] = field(default_factory=dict)  # stage → [in, rejected], in stage order
    reused: dict[str, int] = field(default_factory=dict)  # stage → outputs reused from an earlier build
    computed: dict[str, int] = field(default_factory=dict)  # stage → outputs computed
    stage_seconds: dict[str, float] = field(default_factory=dict)  # stage → seconds spent (the stats' stage_seconds)
    sheet_shards: list[int] = field(default_factory=list)
    gallery_shards: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, stats: dict) -> BuildTotals:
        """One shard's totals, from its stats (`_stats.json`). Counts that older shards do not hold (dropped and
        kept subjects, reused and computed outputs) are 0 or empty for them."""
        shard = stats["shard"]
        return cls(shards=1, inputs=stats["inputs"], accepted=stats["accepted"], rejected=stats["rejected"],
                   seconds=stats["seconds"], dropped_subjects=stats.get("dropped_subjects", 0),
                   subjects=stats.get("subjects", 0),
                   bytes=sum(f["bytes"] for f in (stats.get("files") or {}).values()),
                   funnel={step["stage"]: [step["in"], step["rejected"]] for step in stats["funnel"]},
                   reused=dict(stats.get("reused_by_stage") or {}),
                   computed=dict(stats.get("computed_by_stage") or {}),
                   stage_seconds=dict(stats.get("stage_seconds") or {}),
                   sheet_shards=[shard] if stats["accepted"] else [],
                   gallery_shards={stage: [shard] for stage, n in (stats.get("rejected_by_stage") or {}).items() if n})

    def add(self, stats: dict) -> None:
        """One shard's stats (`_stats.json`)."""
        self.merge(BuildTotals.of(stats))

    def merge(self, other: BuildTotals) -> None:
        """Add another set of shards' totals (disjoint from these)."""
        self.shards += other.shards
        self.inputs += other.inputs
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.seconds += other.seconds
        self.dropped_subjects += other.dropped_subjects
        self.subjects += other.subjects
        self.bytes += other.bytes
        for stage, (count, rejected) in other.funnel.items():
            row = self.funnel.setdefault(stage, [0, 0])
            row[0] += count
            row[1] += rejected
        for mine, theirs in ((self.reused, other.reused), (self.computed, other.computed),
                             (self.stage_seconds, other.stage_seconds)):
            _add(mine, theirs)
        self.sheet_shards = _lowest(self.sheet_shards, other.sheet_shards, SHEET_SHARDS)
        for stage, shards in other.gallery_shards.items():
            self.gallery_shards[stage] = _lowest(self.gallery_shards.get(stage, []), shards, GALLERY_SHARDS)

    def seconds_per_sample(self) -> dict[str, float]:
        """Each stage's seconds per sample it ran on: per sample that reached it, or for a model stage that counts
        them, per output it computed (outputs reused from an earlier build cost nothing and measure nothing).
        Stages that ran on no sample are left out."""
        ran = {stage: self.computed.get(stage, count) for stage, (count, _) in self.funnel.items()}
        return {stage: spent / ran[stage] for stage, spent in self.stage_seconds.items() if ran.get(stage)}

    def funnel_rows(self) -> list[dict]:
        """Per stage: in, rejected, out, in stage order; and reused, computed where the shards counted them."""
        rows = []
        for stage, (count, rejected) in self.funnel.items():
            row = {"stage": stage, "in": count, "rejected": rejected, "out": count - rejected}
            row |= {k: v[stage] for k, v in (("reused", self.reused), ("computed", self.computed)) if stage in v}
            rows.append(row)
        return rows

    def rejected_by_stage(self) -> dict[str, int]:
        return {stage: rejected for stage, (_, rejected) in self.funnel.items()}
