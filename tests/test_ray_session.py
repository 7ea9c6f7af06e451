"""What every Ray worker of a session gets: torch's CPU tensors of 2 MB and more on transparent huge pages (the prior
loader's fresh batches would otherwise pay a page fault per 4 KB), and torchvision's ops at its first import of
torchvision, with no torch import in workers that never use it."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("ray_local")


def test_ray_workers_allocate_large_tensors_on_huge_pages():
    import ray

    def probe() -> tuple[str | None, int]:  # defined here: pickled by value (workers cannot import this module)
        import os

        import torch

        tensor = torch.empty(64 << 20, dtype=torch.uint8)
        tensor.fill_(1)  # touched: its pages exist
        rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
        (huge,) = [int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages:")]
        return os.environ.get("THP_MEM_ALLOC_ENABLE"), huge

    flag, huge_kb = ray.get(ray.remote(num_cpus=0)(probe).remote())
    assert flag == "1"
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.is_file() or "[never]" in thp.read_text():
        pytest.skip("this kernel gives no transparent huge pages")
    assert huge_kb >= 32 << 10, f"{huge_kb} kB on huge pages after touching a 64 MB tensor"


def test_a_worker_imports_torch_only_when_it_imports_torchvision_and_then_has_its_ops():
    import ray

    def probe() -> tuple[bool, list[int]]:
        import sys

        torch_at_start = "torch" in sys.modules
        import torch
        import torchvision  # noqa: F401 - the import the setup hook waits for

        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
        keep = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        return torch_at_start, keep.tolist()

    # env vars of its own: a fresh worker process, not one an earlier test's task already imported torch in
    fresh = {"env_vars": {"LAMBDA_ECLIPSE_PROBE": "fresh-worker"}}
    torch_at_start, keep = ray.get(ray.remote(num_cpus=0, runtime_env=fresh)(probe).remote())
    assert not torch_at_start, "the worker setup hook imported torch in a worker before it needed it"
    assert keep == [0, 2]  # the second box overlaps the first by IoU 0.81
