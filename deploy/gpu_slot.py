"""Run one Prefect flow run while holding slots of the `gpu` global concurrency limit.

The `lambda-gpu` deployments in prefect.yaml set this as the process worker's command
(`job_variables.command: python deploy/gpu_slot.py`). It is the worker's usual flow-run process
(`python -m prefect.engine`, run here in the same process) inside

    with concurrency("gpu", occupy=LAMBDA_ECLIPSE_GPU_SLOTS, strict=True):

so at most `limit` GPUs' worth of flow runs run at once across every worker and machine: a run waits in Pending until
its slots are free, holds them until it ends (its lease is renewed while it runs, and expires if the process is
killed), and gives them back however it ends. Create the limit once: `prefect gcl create gpu --limit N`, N the GPUs
of the cluster. If the limit does not exist the run fails at once, with the command to create it as its state message.

Environment (job variables): LAMBDA_ECLIPSE_GPU_SLOTS (default 1; 0 runs without a slot), LAMBDA_ECLIPSE_GPU_LIMIT
(default "gpu"), LAMBDA_ECLIPSE_GPU_LEASE_SECONDS (default 60, the server's minimum: renewed every 45 s while the run
lives; the slots of a run killed with its machine come back within about this long plus the server's 15 s lease
sweep), PREFECT__FLOW_RUN_ID (set by the worker).
"""

from __future__ import annotations

import os
import runpy
import sys
from uuid import UUID


def _fail(flow_run_id: str | None, message: str) -> int:
    """Put the reason in the flow run's state message (the worker would only say "exited with status 1")."""
    print(f"gpu_slot: {message}", file=sys.stderr, flush=True)
    if flow_run_id:
        from prefect import get_client
        from prefect.states import Failed

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(UUID(flow_run_id), Failed(message=message), force=True)
    return 1


def main() -> int:
    # Prefect's public API: `sync.concurrency` and the error it raises (re-exported by `prefect.concurrency.asyncio`)
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    limit = os.environ.get("LAMBDA_ECLIPSE_GPU_LIMIT", "gpu")
    try:
        slots = int(os.environ.get("LAMBDA_ECLIPSE_GPU_SLOTS", "1"))
        if slots < 0:
            raise ValueError
    except ValueError:
        return _fail(flow_run_id, f"LAMBDA_ECLIPSE_GPU_SLOTS={os.environ['LAMBDA_ECLIPSE_GPU_SLOTS']!r}: "
                                  "expected a whole number of GPUs (0 or more)")
    try:
        lease = float(os.environ.get("LAMBDA_ECLIPSE_GPU_LEASE_SECONDS", "60"))
        if lease < 60:  # the server's minimum
            raise ValueError
    except ValueError:
        return _fail(flow_run_id, "LAMBDA_ECLIPSE_GPU_LEASE_SECONDS="
                                  f"{os.environ['LAMBDA_ECLIPSE_GPU_LEASE_SECONDS']!r}: expected seconds, at least 60")
    sys.argv = [sys.argv[0]]  # prefect.engine reads the flow run id from PREFECT__FLOW_RUN_ID
    if slots == 0:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
        return 0
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run_id)) if flow_run_id else None
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            found = None
    if found is None:
        return _fail(flow_run_id, f"the global concurrency limit {limit!r} does not exist: create it with "
                                  f"`prefect gcl create {limit} --limit N` (N = the GPUs of the cluster), or set "
                                  "LAMBDA_ECLIPSE_GPU_SLOTS=0 to run without one")
    if slots > found.limit:
        return _fail(flow_run_id, f"this run needs {slots} GPU slot(s) but the limit {limit!r} has only {found.limit}: "
                                  f"lower LAMBDA_ECLIPSE_GPU_SLOTS or `prefect gcl update {limit} --limit {slots}`")
    print(f"gpu_slot: waiting for {slots} slot(s) of the global concurrency limit {limit!r}", file=sys.stderr,
          flush=True)
    try:
        with concurrency(limit, occupy=slots, strict=True, holder=holder, lease_duration=lease,
                         raise_on_lease_renewal_failure=False):
            print(f"gpu_slot: holding {slots} slot(s) of {limit!r}", file=sys.stderr, flush=True)
            runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except ConcurrencySlotAcquisitionError as exc:
        return _fail(flow_run_id, f"could not take {slots} slot(s) of the global concurrency limit {limit!r}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
