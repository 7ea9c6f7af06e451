"""The evaluation's results on disk: one CSV row per finished prompt (what a resumed run skips) and the summary.

A row is appended, flushed and fsynced only after the prompt's images are written and scored, so a killed run loses
at most the prompt in progress; a torn last line (killed mid-write) is dropped when the file is read back.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from storage.layout import tmp_path

# segmentation: "segmented", "off" (evaluate.segment=false) or "no box: NAME+…", the subjects whose reference photo
# Grounding DINO found no box in (embedded whole); decoder: "base" or "fine-tuned <sha256 prefix>".
COLUMNS = ("id", "group", "prompt", "subjects", "seed", "images", "dino", "clip_i", "clip_t", "segmentation",
           "decoder")
METRICS = ("dino", "clip_i", "clip_t")
NO_BOX = "no box: "
# The paper's λ-ECLIPSE rows as reported (Table 2: DreamBench; Table 4: Multibench), for comparison in the summary.
# The paper does not name its CLIP-I / CLIP-T encoder, so these are not necessarily the same measurement as ours.
PAPER = {
    "single subject": {"dino": 0.613, "clip_i": 0.783, "clip_t": 0.307},
    "two subjects": {"dino": 0.4478, "clip_i": 0.7409, "clip_t": 0.3327},
    "three subjects": {"dino": 0.3420, "clip_i": 0.6463, "clip_t": 0.3469},
}
PAPER_CANNY = {"single subject": {"dino": 0.5173, "clip_i": 0.7437, "clip_t": 0.3158}}  # Table 5, DreamBench + Canny


def _complete(row: dict) -> bool:
    try:
        return all(row.get(c) not in (None, "") for c in COLUMNS) and all(float(row[m]) == float(row[m])
                                                                          for m in METRICS)
    except ValueError:
        return False


class Results:
    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict]:
        """The complete rows; a file with a torn row is rewritten without it (atomically)."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        complete = [r for r in rows if _complete(r)]
        if len(complete) != len(rows):
            self.rewrite(complete)
        return complete

    def rewrite(self, rows: list[dict]) -> None:
        """The file holding exactly `rows`, replaced atomically."""
        tmp = tmp_path(self.path)
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        if not self.path.is_file():
            self.rewrite([])
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow(row)
            f.flush()
            os.fsync(f.fileno())


def summarize(rows: list[dict], groups: tuple[str, ...]) -> list[dict]:
    """One row per group that has results: prompts, images and the mean of each metric over its prompts."""
    summary = []
    for group in groups:
        done = [r for r in rows if r["group"] == group]
        if done:
            summary.append({"group": group, "prompts": len(done), "images": sum(int(r["images"]) for r in done)}
                           | {m: round(sum(float(r[m]) for r in done) / len(done), 4) for m in METRICS})
    return summary


def segmentation_failures(rows: list[dict]) -> dict[str, int]:
    """Per subject, how many prompts used its reference photo unsegmented (Grounding DINO found no box in it)."""
    counts: dict[str, int] = {}
    for row in rows:
        if row["segmentation"].startswith(NO_BOX):
            for name in row["segmentation"].removeprefix(NO_BOX).split("+"):
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def summary_markdown(title: str, summary: list[dict], total: int, note: str, encoders: dict[str, str],
                     failures: dict[str, int], segment: bool, paper_rows: dict[str, dict] = PAPER) -> str:
    done = sum(row["prompts"] for row in summary)
    lines = [f"# {title}", "", f"{done} of {total} prompts evaluated. {note}", "",
             f"Encoders: DINO — {encoders['dino']}; CLIP-I and CLIP-T — {encoders['clip']}. The paper's rows are as "
             "reported in the paper, which does not name its CLIP encoder.", "",
             "| | prompts | images | DINO ↑ | CLIP-I ↑ | CLIP-T ↑ |", "|---|---:|---:|---:|---:|---:|"]
    for row in summary:
        lines.append(f"| λ-ECLIPSE, this run: {row['group']} | {row['prompts']} | {row['images']} | "
                     f"{row['dino']:.4f} | {row['clip_i']:.4f} | {row['clip_t']:.4f} |")
    for row in summary:
        if row["group"] not in paper_rows:  # Table 5 is DreamBench's only
            continue
        paper = paper_rows[row["group"]]
        lines.append(f"| λ-ECLIPSE, reported (paper): {row['group']} | | | {paper['dino']} | {paper['clip_i']} | "
                     f"{paper['clip_t']} |")
    lines += ["", "## Segmentation of the reference photos", ""]
    if not segment:
        lines.append("Off (evaluate.segment=false): every reference photo was embedded whole.")
    elif not failures:
        lines.append("Grounding DINO found the subject in every reference photo used.")
    else:
        lines += [f"Grounding DINO found no box in the reference photo of {len(failures)} subject(s); that photo was "
                  "embedded whole (not segmented) in these prompts:", "", "| subject | prompts |", "|---|---:|"]
        lines += [f"| {name} | {count} |" for name, count in failures.items()]
    return "\n".join(lines)
