"""What every Ray worker of a session gets: torch's CPU tensors of 2 MB and more on transparent huge pages (the prior
loader's fresh batches would otherwise pay a page fault per 4 KB)."""

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
