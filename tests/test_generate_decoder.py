"""--decoder DIR: a fine-tuned decoder UNet (finetune-decoder's layout: DIR/unet/ + DIR/finetune.json) replaces the
profile's UNet; the outputs record which decoder made them; a missing or mismatched directory is refused before any
model loads."""

import copy
import hashlib
import json

import numpy as np
import pytest
import torch
from test_generate import subject_photos, tiny_prior

from generate.pipeline import Generator
from generate.plan import prepare
from generate.requests import GenerateRequest
from generate.run import generate_job
from generate.subjects import SubjectSpec
from lambda_eclipse.errors import UserError
from lambda_eclipse.models.kandinsky import unet_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FINETUNE = {"subjects": {"dog": "photos/"}, "max_steps": 3}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    (dog,) = subject_photos(root / "photos", 1)
    return {"root": root, "prior": tiny_prior(root / "prior"), "dog": dog}


def plan_for(assets, decoder=None, output="out"):
    request = GenerateRequest("a dog on the beach", [SubjectSpec("dog", assets["dog"])], seed=3, num_images=2)
    return prepare([request], assets["prior"], str(assets["root"] / output), steps=2, decoder=decoder)


@pytest.fixture(scope="module")
def base(assets):
    plan = plan_for(assets)
    return plan, Generator(plan.profile, plan.cfg, plan.prior, decoder=plan.decoder)


def save_decoder(unet, root, finetune=FINETUNE):
    unet.save_pretrained(root / "unet")
    if finetune is not None:
        (root / "finetune.json").write_text(json.dumps(finetune))
    return str(root)


def perturbed(unet):
    """A copy of `unet` with every weight moved a little: a stand-in for a fine-tuned UNet."""
    unet = copy.deepcopy(unet)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for parameter in unet.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return unet


def fine_tuned_decoder(root) -> str:
    """finetune-decoder's layout holding a perturbed tiny decoder UNet."""
    from lambda_eclipse.models.kandinsky import load_decoder

    base = load_decoder("tiny", "", 32, torch.device("cpu"), torch.float32).pipeline.unet
    return save_decoder(perturbed(base), root)


def test_the_base_unet_saved_and_loaded_renders_the_base_images_bit_for_bit(assets, base, tmp_path):
    plan, generator = base
    decoder = save_decoder(generator.decoder.pipeline.unet, tmp_path)
    tuned_plan = plan_for(assets, decoder)
    tuned = Generator(tuned_plan.profile, tuned_plan.cfg, tuned_plan.prior, decoder=tuned_plan.decoder)
    a = generator.generate(plan.jobs[0], plan.settings)
    b = tuned.generate(tuned_plan.jobs[0], tuned_plan.settings)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_fine_tuned_unet_gives_other_images_at_the_same_seed_and_is_recorded(assets, base, tmp_path):
    plan, generator = base
    decoder = save_decoder(perturbed(generator.decoder.pipeline.unet), tmp_path)
    tuned_plan = plan_for(assets, decoder, "tuned")
    tuned = Generator(tuned_plan.profile, tuned_plan.cfg, tuned_plan.prior, decoder=tuned_plan.decoder)
    base_paths = generate_job(generator, plan.jobs[0], plan.settings, plan.output)
    tuned_paths = generate_job(tuned, tuned_plan.jobs[0], tuned_plan.settings, tuned_plan.output)
    for a, b in zip(base_paths, tuned_paths):
        assert a.read_bytes() != b.read_bytes()
    weights = (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    meta = json.loads(tuned_paths[0].with_suffix(".json").read_text())
    assert meta["seed"] == 3 and meta["decoder"] == {
        "unet": str(tmp_path / "unet"), "unet_sha256": hashlib.sha256(weights).hexdigest(), "finetune": FINETUNE}
    assert meta["models"]["decoder"] == f"kandinsky-2-2-decoder tiny (random weights) + fine-tuned UNet {tmp_path}/unet"
    assert json.loads(base_paths[0].with_suffix(".json").read_text())["decoder"] == "base"
    # DIR/unet is accepted too, and finds DIR/finetune.json beside it
    direct = plan_for(assets, str(tmp_path / "unet")).decoder
    assert direct is not None and direct.unet == str(tmp_path / "unet") and direct.finetune == FINETUNE
    assert direct.sha256 == meta["decoder"]["unet_sha256"]


def test_bad_decoder_directories_are_refused_in_one_line(assets, base, tmp_path):
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    _, generator = base
    with torch.random.fork_rng():
        other = UNet2DConditionModel(**unet_config("tiny", 16))
    mismatched = save_decoder(other, tmp_path / "d16")
    with pytest.raises(UserError, match=r"unet is not a fine-tuned tiny Kandinsky 2\.2 decoder UNet: "
                                        r"encoder_hid_dim 16 \(the decoder's: 32\); fine-tune it from this profile's"):
        plan_for(assets, mismatched)

    no_weights = tmp_path / "no-weights" / "unet"
    no_weights.mkdir(parents=True)
    config = json.loads((tmp_path / "d16" / "unet" / "config.json").read_text())
    (no_weights / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="has config.json but no \\*.safetensors weights"):
        plan_for(assets, str(no_weights.parent))

    (no_weights / "config.json").write_text(json.dumps(config | {"_class_name": "VQModel"}))
    with pytest.raises(UserError, match="holds a 'VQModel', not a UNet2DConditionModel"):
        plan_for(assets, str(no_weights))

    (no_weights / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        plan_for(assets, str(no_weights))

    torn = save_decoder(generator.decoder.pipeline.unet, tmp_path / "torn", finetune=None)
    (tmp_path / "torn" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    torn_plan = plan_for(assets, torn)
    assert torn_plan.decoder is not None and torn_plan.decoder.finetune is None
    with pytest.raises(UserError, match=f"--decoder {tmp_path}/torn/unet cannot be loaded: "):
        Generator(torn_plan.profile, torn_plan.cfg, torn_plan.prior, decoder=torn_plan.decoder)
