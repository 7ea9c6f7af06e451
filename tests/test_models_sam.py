import pytest
import torch

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import ModelNotFoundError, UserError
from lambda_eclipse.models.sam import load_sam

CPU = torch.device("cpu")


def load(profile, **models):
    return load_sam(profile, ModelsSection(**models), CPU, torch.float32)


def test_tiny_builds_identically_twice():
    a, b = load("tiny").state_dict(), load("tiny").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_is_small_and_in_eval_mode():
    sam = load("tiny")
    assert sam.image_encoder.img_size == 64
    assert not sam.training


def test_paper_without_checkpoint_names_the_file_where_to_get_it_and_the_key(tmp_path):
    missing = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(ModelNotFoundError) as info:
        load("paper", sam_checkpoint=str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in message
    assert "models.sam_checkpoint=" in message


def test_paper_with_unknown_type_lists_the_valid_ones():
    with pytest.raises(UserError, match="vit_h, vit_l, vit_b"):
        load("paper", sam_type="vit_x")


class _Payload:
    """What a malicious checkpoint would hold: unpickling it runs code (here: creates a file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_holding_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.pos_embed": _Payload(str(marker))}, evil)
    with pytest.raises(Exception, match="Weights only load failed"):
        load("paper", sam_type="vit_b", sam_checkpoint=str(evil))
    assert not marker.exists()
