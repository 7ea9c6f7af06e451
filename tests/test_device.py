"""The one device and dtype policy (lambda_eclipse/device.py): one vocabulary, `auto` per use, and the device decided
where the work runs (an actor's node) or from the cluster (a flow process without a GPU)."""

import pytest
import torch

from lambda_eclipse.device import check_device, check_dtype, cluster_device, dtype_name, local_device, torch_dtype
from lambda_eclipse.errors import UserError
from tasks.config import BuildConfig


@pytest.mark.parametrize("use, on_cuda", [("stages", torch.bfloat16), ("embeddings", torch.float16),
                                          ("decoder", torch.float16), ("training", torch.bfloat16)])
def test_auto_is_float32_on_the_cpu_and_each_uses_own_precision_on_cuda(use, on_cuda):
    assert torch_dtype("auto", "cpu", use) == torch.float32
    assert torch_dtype("auto", "cuda", use) == on_cuda
    assert torch_dtype("float32", "cuda", use) == torch.float32
    assert torch_dtype("bfloat16", "cpu", use) == torch.bfloat16


def test_one_vocabulary_with_the_short_names_as_aliases():
    assert [dtype_name(a, "cpu", "training") for a in ("fp32", "bf16", "fp16")] == ["float32", "bfloat16", "float16"]
    assert check_dtype("runtime.precision", "bf16") == "bfloat16" and check_dtype("features.dtype", "auto") == "auto"
    with pytest.raises(UserError, match=r"^features.dtype must be auto or one of float32, bfloat16, float16, got"):
        check_dtype("features.dtype", "fp8")
    with pytest.raises(UserError, match=r"^runtime.device must be one of auto, cpu, cuda, got 'gpu'$"):
        check_device("runtime.device", "gpu")
    assert BuildConfig().features.dtype == "auto"


def test_the_device_is_decided_where_the_work_runs_or_by_the_cluster():
    assert local_device("cpu") == torch.device("cpu")
    assert local_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="runtime.device=cuda, but no CUDA device is visible"):
            local_device("cuda")
    assert (cluster_device("auto", 2), cluster_device("auto", 0), cluster_device("cpu", 8)) == ("cuda", "cpu", "cpu")
    with pytest.raises(UserError, match="runtime.device=cuda, but the Ray cluster has no GPUs"):
        cluster_device("cuda", 0)


def test_a_build_with_a_bad_device_or_dtype_fails_before_ray_starts(tmp_path):
    from tasks.plan import prepare_build

    (tmp_path / "in").mkdir()
    for override, message in (("runtime.device=gpu", "runtime.device must be one of"),
                              ("runtime.dtype=half", "runtime.dtype must be one of auto, float32, bfloat16, float16"),
                              ("features.dtype=fp8", "features.dtype must be one of auto, float32")):
        with pytest.raises(UserError, match=message):
            prepare_build([str(tmp_path / "in")], str(tmp_path / "out"), overrides=[override])


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16"])
def test_generate_runs_clip_at_the_embeddings_precision_whatever_the_decoders(dtype):
    """generate's CLIP encodes as build-dataset's features stage does at its default (float32 on the CPU here), so
    the prior gets embeddings of the precision it was trained on; runtime.dtype is the decoder's alone."""
    from generate.config import RuntimeSection

    device, decoder, clip = RuntimeSection(device="cpu", dtype=dtype).resolve()
    assert device.type == "cpu"
    assert decoder == (torch.float32 if dtype == "auto" else getattr(torch, dtype))
    assert clip == torch_dtype("auto", "cpu", "embeddings") == torch.float32
