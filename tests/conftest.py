import os
import tempfile

# Before Prefect is imported anywhere: a private home, no analytics, no hub downloads.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lambda_eclipse.sample import Detection, Noun, Sample, SourceRef  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (it takes ~13 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models' ops take microseconds: on a shared CPU a second intra-op thread costs more than the math
    (10–50× slower steps under load). Modules opt in; the thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from lambda_eclipse.ray_session import RUNTIME_ENV

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", runtime_env=RUNTIME_ENV, log_to_driver=False)
    yield
    ray.shutdown()


def featured_sample(key: str, d: int = 8, w: int = 8, n_subjects: int = 2, size: int = 48) -> Sample:
    """An accepted sample with every field the shard writer stores, filled with known random values."""
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    image = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
    caption = "a dog and a cat on a sofa"
    spans = [(2, 5, "dog"), (12, 15, "cat")][:n_subjects]
    subjects = []
    for i, (start, end, noun) in enumerate(spans):
        mask = np.zeros(image.shape[:2], bool)
        mask[5 + i : 20 + i, 5:25] = True
        subjects.append(
            Detection(
                noun=noun, start=start, end=end, box=np.array([5, 5 + i, 25, 20 + i], np.float32),
                logit=0.9 - 0.1 * i, mask=mask, mask_ratio=0.95, token_positions=[2 + 3 * i],
                crop=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), embedding=rng.normal(size=d).astype(np.float32),
            )
        )
    ids = np.zeros(77, np.int32)
    ids[:8] = rng.integers(1, 1000, 8)
    return Sample(
        key=key, source=f"/data/{key}.jpg", ref=SourceRef(f"/data/{key}.jpg"), image=image, caption=caption,
        nouns=[Noun(n, s, e) for s, e, n in spans], detections=list(subjects), subjects=subjects,
        edge=np.zeros_like(image),
        features={
            "target_embedding": rng.normal(size=d).astype(np.float32),
            "edge_embedding": rng.normal(size=d).astype(np.float32),
            "text_hidden_states": rng.normal(size=(77, w)).astype(np.float16),
            "text_embedding": rng.normal(size=d).astype(np.float32),
            "token_ids": ids,
            "attention_mask": (np.arange(77) < 8).astype(np.int8),
        },
        seconds={"decode": 0.01},
    )
