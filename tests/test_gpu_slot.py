"""deploy/gpu_slot.py holds its slots of the `gpu` global concurrency limit through Prefect's public API only, for
exactly as long as the flow run's process runs, and gives them back however it ends. (That it fails a run at once
when the limit is missing is tested in test_deployments.py.)"""

import ast
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "deploy" / "gpu_slot.py"


def _gpu_slot():
    spec = importlib.util.spec_from_file_location("gpu_slot", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_slot_imports_no_private_prefect_module():
    modules = [node.module for node in ast.walk(ast.parse(SOURCE.read_text()))
               if isinstance(node, ast.ImportFrom) and node.module]
    prefect = [m for m in modules if m.startswith("prefect")]
    assert "prefect.concurrency.sync" in prefect
    assert [m for m in prefect if any(part.startswith("_") for part in m.split("."))] == []


@pytest.fixture
def limit(prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = "gpu-slot-test"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=2))
    yield name
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(name)


def _active(name: str) -> int:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


@pytest.mark.parametrize("ending", ["completes", "raises"])
def test_the_run_holds_its_slots_while_it_runs_and_gives_them_back(limit, monkeypatch, ending):
    gpu_slot = _gpu_slot()
    seen = []

    def flow_run_process(module, **kwargs):
        assert module == "prefect.engine"
        seen.append(_active(limit))
        if ending == "raises":
            raise RuntimeError("the flow run's process failed")

    monkeypatch.setattr(gpu_slot.runpy, "run_module", flow_run_process)
    monkeypatch.setitem(os.environ, "LAMBDA_ECLIPSE_GPU_LIMIT", limit)
    monkeypatch.setitem(os.environ, "LAMBDA_ECLIPSE_GPU_SLOTS", "2")
    monkeypatch.delitem(os.environ, "PREFECT__FLOW_RUN_ID", raising=False)
    if ending == "raises":
        with pytest.raises(RuntimeError, match="the flow run's process failed"):
            gpu_slot.main()
    else:
        assert gpu_slot.main() == 0
    assert seen == [2]  # both slots taken while the flow run ran
    assert _active(limit) == 0


def test_more_slots_than_the_limit_has_fail_with_the_fix(limit, monkeypatch, capsys):
    gpu_slot = _gpu_slot()
    monkeypatch.setattr(gpu_slot.runpy, "run_module", lambda *a, **k: pytest.fail("the run must not start"))
    monkeypatch.setitem(os.environ, "LAMBDA_ECLIPSE_GPU_LIMIT", limit)
    monkeypatch.setitem(os.environ, "LAMBDA_ECLIPSE_GPU_SLOTS", "3")
    monkeypatch.delitem(os.environ, "PREFECT__FLOW_RUN_ID", raising=False)
    assert gpu_slot.main() == 1
    assert (f"needs 3 GPU slot(s) but the limit {limit!r} has only 2: lower LAMBDA_ECLIPSE_GPU_SLOTS or "
            f"`prefect gcl update {limit} --limit 3`") in capsys.readouterr().err
