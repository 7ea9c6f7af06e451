"""A training run's directory, as train-prior (prior/) and finetune-decoder (finetune/) share it: its checkpoints, its
metrics.jsonl and the RNG state each checkpoint saves. A run directory is a location (storage/fs.py): a local path or
an fsspec URL, and every function here takes either.

    checkpoints/step-NNNNNNNN/   a checkpoint (what each trainer saves in it is its own), its training_state.pt among
                                 them; one being written under a temporary name (.step-NNNNNNNN.tmp) is none yet
    metrics.jsonl                the run's one history: a JSON record per line, each with its "step"

Torch is imported only by the RNG functions, which run where training does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from storage.fs import Location, is_file, join, name, read_bytes, resolve, write_bytes

if TYPE_CHECKING:
    import torch

CHECKPOINTS, STATE, METRICS = "checkpoints", "training_state.pt", "metrics.jsonl"
STEP = "step-"  # a checkpoint's name: STEP and its step in 8 digits, so that names sort as steps do


def checkpoint_name(step: int) -> str:
    return f"{STEP}{step:08d}"


def checkpoints(run: Location) -> list[Location]:
    """The run's checkpoints, oldest first: paths in a local run (relative where `run` is), URLs otherwise."""
    fs, path = resolve(join(run, CHECKPOINTS))
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = sorted(n for n in (name(str(e)) for e in entries) if n.startswith(STEP))
    return [join(run, CHECKPOINTS, n) for n in names]


def read_metrics(run: Location) -> list[dict]:
    """metrics.jsonl's records, oldest first; none before the run has written one."""
    loc = join(run, METRICS)
    if not is_file(loc):
        return []
    return [json.loads(line) for line in read_bytes(loc).decode().splitlines()]


def write_metrics(run: Location, records: list[dict]) -> None:
    """metrics.jsonl as `records`, replacing it whole: a resumed run writes the history its checkpoint continues
    (what a stopped run logged after that checkpoint is dropped), so the file holds one history."""
    write_bytes(join(run, METRICS), "".join(json.dumps(r) + "\n" for r in records).encode())


def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """This process's random state, for a checkpoint: torch's CPU generator ("cpu"), every visible CUDA device's
    ("cuda", a list by device index; absent without CUDA) and each of `generators` under its name."""
    import torch

    state: dict = {key: generator.get_state() for key, generator in (generators or {}).items()}
    state["cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Set the random state `capture_rng` captured: `generators` from their entries, torch's CPU generator, and the
    CUDA devices' where there are CUDA devices here (one state: the current device's, as finetune-decoder's
    checkpoints before `capture_rng` held it; a list: by index, as many devices as both have)."""
    import torch

    for key, generator in (generators or {}).items():
        generator.set_state(state[key])
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda)
        return
    for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(device_state, device)
