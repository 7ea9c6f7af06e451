"""Lines logged in Ray workers reach the driver's logger of the same name, labelled, in order, INFO and up."""

import logging

import pytest

from lambda_eclipse.ray_logs import relayed_logs

pytestmark = pytest.mark.usefixtures("ray_local")


def test_worker_lines_reach_the_driver_labelled_and_in_order(caplog):
    import ray

    def work(logs, label: str) -> int:  # defined here: pickled by value (the workers cannot import this module)
        log = logging.getLogger("lambda_eclipse.test_worker")
        log.info("not relayed: outside the block")
        with logs.forwarding(label, log.name):
            for i in range(3):
                log.info("step %d", i)
            log.debug("not relayed: below INFO")
            log.warning("slow node")
        return log.level

    caplog.set_level(logging.DEBUG, logger="lambda_eclipse.test_worker")
    with relayed_logs() as logs:
        levels = ray.get([ray.remote(num_cpus=0)(work).remote(logs, f"worker {i}") for i in range(2)])
    assert levels == [logging.NOTSET] * 2  # the worker's logger is left as it was
    for i in range(2):
        lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith(f"[worker {i}]")]
        assert lines == [(logging.INFO, f"[worker {i}] step 0"), (logging.INFO, f"[worker {i}] step 1"),
                         (logging.INFO, f"[worker {i}] step 2"), (logging.WARNING, f"[worker {i}] slow node")]
    assert not [r for r in caplog.records if "not relayed" in r.getMessage()]
