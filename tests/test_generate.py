"""generate on the tiny profile: images and metadata, reproducibility, subject conditioning, and every bad input."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from generate.outputs import job_metadata
from generate.pipeline import Generator
from generate.plan import prepare
from generate.requests import GenerateRequest, requests_from_args
from generate.run import generate_job
from generate.subjects import SubjectSpec, as_given, mask_crop
from lambda_eclipse.models.clip import TINY_EMBED_DIM
from lambda_eclipse.synthetic import write_photos
from prior.model import EclipsePrior
from tasks.edges import canny_rgb

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_prior(path, embedding_dim=TINY_EMBED_DIM):
    """A tiny prior checkpoint in train-prior's layout, sized for the tiny CLIP."""
    EclipsePrior.tiny(embedding_dim).save_pretrained(path)
    return str(path)


def subject_photos(directory, count=2, size=80):
    return [str(p) for p in write_photos(directory, count, size=size)]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    dog, hat = subject_photos(root / "photos")
    return {"root": root, "prior": tiny_prior(root / "prior"), "dog": dog, "hat": hat}


@pytest.fixture(scope="module")
def plan(assets):
    requests = requests_from_args("a Dog wearing a labradoodle hat", [f"dog={assets['dog']}",
                                  f"labradoodle={assets['hat']}"], None, None, seed=5, num_images=2)
    return prepare(requests, assets["prior"], str(assets["root"] / "out"), steps=2)


@pytest.fixture(scope="module")
def generator(plan):
    return Generator(plan.profile, plan.cfg, plan.prior)


def test_writes_images_and_metadata(plan, generator, assets):
    paths = generate_job(generator, plan.jobs[0], plan.settings, plan.output)
    assert [p.name for p in paths] == ["0000-a-dog-wearing-a-labradoodle-hat-0.png",
                                       "0000-a-dog-wearing-a-labradoodle-hat-1.png"]
    for k, path in enumerate(paths):
        assert Image.open(path).size == (64, 64)
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["prompt"] == "a Dog wearing a labradoodle hat" and meta["seed"] == 5 + k
        assert meta["image_index"] == k and meta["steps"] == 2 and meta["guidance"] == 7.5
        assert [(s["word"], s["span"], s["token_positions"], s["embedded"]) for s in meta["subjects"]] == [
            ("dog", [2, 5], [2], "as given"), ("labradoodle", [16, 27], [5, 6], "as given")]
        assert meta["subjects"][0]["image"] == assets["dog"]
        assert meta["control"] == "zero image" and meta["truncated"] is None and meta["scheduler"] == "DDIM"
        assert meta["models"] == {"clip": "open_clip tiny (random weights)",
                                  "decoder": "kandinsky-2-2-decoder tiny (random weights)", "prior": assets["prior"]}
        weights = (assets["root"] / "prior" / "diffusion_pytorch_model.safetensors").read_bytes()
        assert meta["prior_sha256"] == hashlib.sha256(weights).hexdigest()
    first, second = (np.asarray(Image.open(p)) for p in paths)
    assert not np.array_equal(first, second)  # seeds 5 and 6


def test_same_seed_same_bits_with_freshly_loaded_models(plan, generator):
    again = Generator(plan.profile, plan.cfg, plan.prior)
    job = plan.jobs[0]
    a, b = generator.generate(job, plan.settings), again.generate(job, plan.settings)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(generator.predict(job).numpy(), again.predict(job).numpy())
    other = generator.predict(job, [99])
    assert not np.allclose(other.numpy(), generator.predict(job, [5]).numpy())


def test_subject_embeddings_replace_exactly_their_words_tokens(plan, generator):
    job = plan.jobs[0]
    inputs = generator.prior_inputs(job)
    text, _, _, _ = generator.clip.encode_text([job.prompt])
    states = inputs["encoder_hidden_states"][0].numpy()
    dog, hat = (generator.subject(s.spec).vector for s in job.subjects)
    np.testing.assert_array_equal(states[2], dog)
    np.testing.assert_array_equal(states[5], hat)
    np.testing.assert_array_equal(states[6], hat)  # both tokens of "labradoodle"
    others = [i for i in range(77) if i not in (2, 5, 6)]
    np.testing.assert_array_equal(states[others], text[0][others])
    np.testing.assert_array_equal(inputs["control_embedding"][0].numpy(), generator.clip.zero_image_embedding())


def test_the_decoder_gets_the_zero_image_embedding_as_negative(plan, generator, monkeypatch):
    calls = []
    real = generator.decoder.pipeline

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(generator.decoder, "pipeline", spy)
    generator.generate(plan.jobs[0], plan.settings)
    (call,) = calls
    negative = call["negative_image_embeds"].numpy()
    assert negative.shape == (2, TINY_EMBED_DIM)
    np.testing.assert_array_equal(negative[1], generator.clip.zero_image_embedding())
    assert call["num_inference_steps"] == 2 and call["guidance_scale"] == 7.5
    assert (call["height"], call["width"]) == (64, 64)


def _canny_embedding(generator, image: str, size: int) -> np.ndarray:
    return generator.clip.encode_images([canny_rgb(np.asarray(Image.open(image)), 100, 200, size)])[0]


def test_canny_with_a_released_layout_prior_is_at_the_image_s_own_size(plan, generator, assets):
    """No training.json (the released checkpoint's layout): Canny(100, 200) on the 80 px image as it is, as the
    released inference code runs it; the metadata says so."""
    job = prepare([GenerateRequest("a dog", [], canny=assets["hat"])], assets["prior"], str(plan.output),
                  steps=2).jobs[0]
    control = generator.prior_inputs(job)["control_embedding"][0].numpy()
    np.testing.assert_allclose(control, _canny_embedding(generator, assets["hat"], 0), rtol=1e-6)
    assert not np.allclose(control, _canny_embedding(generator, assets["hat"], 512), rtol=1e-3)
    assert not np.allclose(control, generator.zero_image)
    edge_map = job_metadata(job, plan.settings, generator)["control"]["edge_map"]
    assert edge_map == {"low_threshold": 100, "high_threshold": 200, "size": 0,
                        "from": "the released inference code (the prior records no training data)"}


def test_canny_with_one_of_our_priors_follows_its_training_data(plan, assets, tmp_path):
    """A prior whose training.json records its dataset's edge settings: --canny's map is made as they were."""
    prior = tiny_prior(tmp_path / "prior")
    edge = {"low_threshold": 100, "high_threshold": 200, "size": 40}
    (tmp_path / "prior" / "training.json").write_text(json.dumps({"edge": edge, "loss": {}, "batch": {}}))
    planned = prepare([GenerateRequest("a dog", [], canny=assets["hat"])], prior, str(tmp_path / "out"), steps=2)
    job, ours = planned.jobs[0], Generator(planned.profile, planned.cfg, planned.prior)
    control = ours.prior_inputs(job)["control_embedding"][0].numpy()
    np.testing.assert_allclose(control, _canny_embedding(ours, assets["hat"], 40), rtol=1e-6)
    assert not np.allclose(control, _canny_embedding(ours, assets["hat"], 0), rtol=1e-3)
    edge_map = job_metadata(job, plan.settings, ours)["control"]["edge_map"]
    assert edge_map == edge | {"from": "the prior's training data (training.json)"}


def test_subject_crops_follow_the_prior_s_training_data_else_the_build_default(plan, generator, assets, tmp_path):
    """The crop size the prior's dataset was built with (training.json's `subjects`), not the code default: a dataset
    built with subjects.crop_size=112 is generated from 112 px crops; a prior without a record uses 224."""
    spec = SubjectSpec("dog", assets["dog"])
    assert generator.subject(spec).crop.shape == (224, 224, 3)
    prior = tiny_prior(tmp_path / "prior")
    (tmp_path / "prior" / "training.json").write_text(json.dumps({"subjects": {"crop_size": 112}}))
    planned = prepare([GenerateRequest("a dog", [])], prior, str(tmp_path / "out"), steps=2)
    ours = Generator(planned.profile, planned.cfg, planned.prior)
    assert ours.subject(spec).crop.shape == (112, 112, 3)


def test_a_mask_puts_the_subject_on_white(generator, assets, tmp_path):
    mask = np.zeros((80, 80), np.uint8)
    mask[10:50, 10:30] = 255  # an L: its box (10..70 × 10..50) also holds unmasked pixels
    mask[30:50, 30:70] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    masked = generator.subject(SubjectSpec("dog", assets["dog"], str(tmp_path / "mask.png")))
    assert masked.how == "mask" and masked.crop.shape == (224, 224, 3)
    # box 60 wide × 40 high → padded to 60 × 60: white bands above and below, white in the L's missing corner
    assert (masked.crop[:30] == 255).all() and (masked.crop[-30:] == 255).all()
    assert (masked.crop[60:90, 150:200] == 255).all()
    assert not (masked.crop[120:140, 20:60] == 255).all()
    given = generator.subject(SubjectSpec("dog", assets["dog"]))
    assert given.how == "as given" and not np.allclose(masked.vector, given.vector)


def test_as_given_pads_to_a_white_square():
    image = np.zeros((50, 100, 3), np.uint8)
    crop = as_given(image)
    assert crop.shape == (224, 224, 3)
    assert (crop[:50] == 255).all() and (crop[-50:] == 255).all() and (crop[70:150] == 0).all()


def test_segmentation_masks_the_subject_with_grounding_dino_and_sam(plan, assets):
    segmenting = Generator(plan.profile, plan.cfg, plan.prior, segment=True)
    assert set(segmenting.model_ids()) == {"clip", "decoder", "prior", "grounding_dino", "sam"}
    image = np.array(Image.open(assets["dog"]).convert("RGB"))
    assert segmenting.segmenter is not None
    mask = segmenting.segmenter.mask(image, "dog")
    assert mask is not None
    assert mask.shape == (80, 80) and mask.dtype == bool and 0 < mask.sum() < mask.size
    embedded = segmenting.subject(SubjectSpec("dog", assets["dog"]))
    assert embedded.how == "segmented"
    np.testing.assert_array_equal(embedded.crop, mask_crop(image, mask))
    # no box above the threshold: the image is used as given, and the metadata says so
    segmenting.segmenter.boxes.boxes.box_threshold = 1.0
    assert segmenting.segmenter.mask(image, "hat") is None
    fallback = segmenting.subject(SubjectSpec("hat", assets["dog"]))
    assert fallback.how == "as given (segmentation found no box)"
    np.testing.assert_array_equal(fallback.crop, as_given(image))


def test_a_long_prompt_warns_with_the_cut_text(assets, tmp_path):
    prompt = "a dog " + " ".join(["red"] * 80)
    plan = prepare([GenerateRequest(prompt, [SubjectSpec("dog", assets["dog"])])], assets["prior"], str(tmp_path),
                   steps=2)
    (warning,) = plan.warnings
    assert ("is 82 CLIP tokens; CLIP keeps the first 75, so this part is ignored: 'red red red red red red red'"
            in warning)
    assert plan.jobs[0].truncated == " ".join(["red"] * 7)


# Every bad input: one line, exit status 2, before any image is generated.

@pytest.fixture(scope="module")
def bad_files(assets):
    root = assets["root"] / "bad"
    root.mkdir()
    (root / "notes.jpg").write_text("not an image")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "small_mask.png")
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(root / "black_mask.png")
    (root / "bad.jsonl").write_text('{"prompt": "a dog"}\n{"prompt": "a dog", "subjects": {"dog": \n')
    (root / "unknown.jsonl").write_text('{"prompt": "a dog", "negative": "blurry"}\n')
    (root / "missing.jsonl").write_text(json.dumps({"prompt": "a dog", "subjects": {"dog": "nowhere.jpg"}}) + "\n")
    return {"root": root, "prior16": tiny_prior(root / "prior16", 16)}


BAD = [
    (["--subject", "dog=/nowhere/dog.jpg"], "subject 'dog': image /nowhere/dog.jpg does not exist"),
    (["--subject", "dog={bad}/notes.jpg"], "subject 'dog': cannot read image {bad}/notes.jpg: not an image"),
    (["--subject", "cat={dog}"], "subject word 'cat' is not in the prompt 'a dog wearing a hat on the beach'"),
    (["--subject", "dogs={dog}"], "subject word 'dogs' is not in the prompt"),
    (["--subject", "dog={dog}"] * 2, "2 subjects are given for the word 'dog', but the prompt"),
    ([a for w in ("dog", "hat", "beach", "a", "the") for a in ("--subject", f"{w}={{dog}}")],
     "5 subjects given; the prior takes at most 4 (it was trained on images with 1–4 subjects, paper Appendix B)"),
    (["--subject", "dog={dog}:{bad}/small_mask.png"],
     "subject 'dog': mask {bad}/small_mask.png is 10×10 px but the image is 80×80 px"),
    (["--subject", "dog={dog}:{bad}/black_mask.png"], "mask {bad}/black_mask.png has no white pixels"),
    (["--subject", "dog"], "--subject 'dog': expected WORD=IMAGE or WORD=IMAGE:MASK"),
    (["--canny", "/nowhere/edges.png"], "--canny: image /nowhere/edges.png does not exist"),
    (["--prior", "{prior16}"], "prior {prior16} works on 16-d embeddings, which no profile's CLIP gives (tiny: 32, "
                               "paper: 1280); choose --profile yourself"),
    (["--prior", "{prior16}", "--profile", "tiny"], "works on embedding_dim=16, clip_embed_dim=16, "
                                                    "embedding_proj_dim=16, but the tiny profile's CLIP gives 32-d "
                                                    "embeddings"),
    (["--decoder", "/nowhere/decoder"], "--decoder /nowhere/decoder is not a directory; pass the output directory of "
                                        "finetune-decoder"),
    (["--decoder", "{bad}"], "has no unet/config.json (nor config.json); pass the output directory of "
                             "finetune-decoder"),
    (["--set", "runtime.gpus=-1"], "runtime.gpus must be ≥ 0, and a whole number of GPUs above 1 (got -1"),
    (["--set", "runtime.gpus=1.5"], "runtime.gpus must be ≥ 0, and a whole number of GPUs above 1 (got 1.5)"),
    (["--prior", "/nowhere/prior"], "prior /nowhere/prior does not exist"),
    (["--prior", "{bad}"], "has no config.json (nor final/config.json)"),
    (["--height", "66"], "image size height 66 (nearest 64): the tiny Kandinsky 2.2 decoder renders multiples of 4 px "
                         "only"),
    (["--width", "2"], "image size width 2 (nearest 4): the tiny Kandinsky 2.2 decoder renders multiples of 4 px"),
    (["--num-images", "0"], "--num-images must be ≥ 1, got 0"),
    (["--steps", "0"], "--steps must be ≥ 1, got 0"),
    (["--set", "runtime.device=tpu"], "runtime.device must be one of auto, cpu, cuda"),
    (["--set", "models.unet=x"], "unknown config key 'models.unet'"),
]


@pytest.mark.parametrize("extra, message", BAD)
def test_bad_input_is_one_line_and_exit_2(assets, bad_files, tmp_path, capsys, extra, message):
    names = {"dog": assets["dog"], "bad": bad_files["root"], "prior16": bad_files["prior16"]}
    extra = [a.format(**names) for a in extra]
    argv = ["generate", "--prompt", "a dog wearing a hat on the beach", "--prior", assets["prior"], "--steps", "2",
            "--output", str(tmp_path / "out")]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-eclipse generate: error: ") and message.format(**names) in err, err
    assert err.count("\n") == 1
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_a_subject_cut_off_by_truncation_is_refused(assets, tmp_path, capsys):
    prompt = "a dog and " + " ".join(["red"] * 80) + " hat"
    argv = ["generate", "--prompt", prompt, "--subject", f"hat={assets['hat']}", "--prior", assets["prior"],
            "--output", str(tmp_path)]
    assert main(argv) == 2
    assert "subject word 'hat' (tokens 84–84) falls in the part that is cut" in capsys.readouterr().err


@pytest.mark.parametrize("batch, message", [
    ("bad.jsonl", "bad.jsonl:2: not valid JSON"),
    ("unknown.jsonl", "unknown.jsonl:1: unknown keys ['negative']"),
    ("missing.jsonl", "missing.jsonl:1: subject 'dog': image {bad}/nowhere.jpg does not exist"),
    ("absent.jsonl", "--batch {bad}/absent.jsonl does not exist"),
])
def test_bad_batch_files(assets, bad_files, tmp_path, capsys, batch, message):
    argv = ["generate", "--batch", str(bad_files["root"] / batch), "--prior", assets["prior"],
            "--output", str(tmp_path)]
    assert main(argv) == 2
    assert message.format(bad=bad_files["root"]) in capsys.readouterr().err


def test_prompt_and_batch_are_exclusive(assets, tmp_path, capsys):
    assert main(["generate", "--prior", assets["prior"], "--output", str(tmp_path)]) == 2
    assert "give either --prompt (one prompt) or --batch FILE.jsonl" in capsys.readouterr().err


def test_paper_profile_names_every_missing_model(assets, tmp_path, capsys):
    argv = ["generate", "--prompt", "a dog", "--prior", "ECLIPSE-Community/Lambda-ECLIPSE-Prior-v1.0", "--profile",
            "paper", "--output", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-eclipse generate: error: weights missing for --profile paper: OpenCLIP "
                          "models.clip_model=ViT-bigG-14 models.clip_pretrained=laion2b_s39b_b160k; Kandinsky 2.2 "
                          "decoder models.decoder=kandinsky-community/kandinsky-2-2-decoder; prior --prior "
                          "ECLIPSE-Community/Lambda-ECLIPSE-Prior-v1.0.")
    assert err.count("\n") == 1


def test_the_profile_is_the_prior_checkpoints_own(tmp_path, capsys):
    """A released-size (1280-d) prior: without --profile it runs on the paper profile (here: whose weights are
    missing); with --profile tiny it is refused before anything loads. A tiny prior picks the tiny profile."""
    prior = tiny_prior(tmp_path / "prior1280", 1280)
    assert main(["generate", "--prompt", "a dog", "--prior", prior, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "weights missing for --profile paper: OpenCLIP models.clip_model=ViT-bigG-14" in err
    assert "prior --prior" not in err  # the prior itself is here
    argv = ["generate", "--prompt", "a dog", "--prior", prior, "--profile", "tiny", "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "works on embedding_dim=1280, clip_embed_dim=1280, embedding_proj_dim=1280, but the tiny profile's CLIP " \
           "gives 32-d embeddings" in err and "or leave --profile out to use the prior's own" in err
    tiny = prepare([GenerateRequest("a dog")], tiny_prior(tmp_path / "prior32"), str(tmp_path / "out"), steps=2)
    assert tiny.profile == "tiny"


def test_paper_shapes_are_the_released_architectures():
    """Built on the meta device: parameter counts of the Kandinsky 2.2 decoder (UNet ≈ 1.25e9 in diffusers' layout,
    MoVQ 67M) and DINO ViT-S/16 (21.7M); the paper decoder renders multiples of 64 px, the tiny one of 4."""
    import torch
    from diffusers.models.autoencoders.vq_model import VQModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import ViTConfig, ViTModel

    from evaluation.config import EvalModelsSection
    from generate.config import GenerateModelsSection
    from lambda_eclipse.models import dino, kandinsky

    with torch.device("meta"):
        unet = UNet2DConditionModel(**kandinsky.unet_config("paper-shapes", 1280))
        movq = VQModel(**kandinsky.movq_config("paper-shapes"))
        vit = ViTModel(ViTConfig(**dino.VIT_S16), add_pooling_layer=False)
    assert sum(p.numel() for p in unet.parameters()) == 1_253_057_288
    assert sum(p.numel() for p in movq.parameters()) == 67_832_495
    assert sum(p.numel() for p in vit.parameters()) == 21_665_664
    assert kandinsky.size_multiple(kandinsky.unet_config("paper", 1280), kandinsky.movq_config("paper")) == 64
    assert kandinsky.size_multiple(kandinsky.unet_config("tiny", 32), kandinsky.movq_config("tiny")) == 4
    assert GenerateModelsSection().decoder == kandinsky.PAPER_DECODER and EvalModelsSection().dino == dino.PAPER_DINO


def test_help_lists_the_config_keys():
    import subprocess
    import sys

    for command, keys in (("generate", ["models.decoder=kandinsky-community/kandinsky-2-2-decoder",
                                        "runtime.dtype=auto"]),
                          ("evaluate", ["evaluate.images_per_prompt=4", "evaluate.max_prompts=0", "models.dino="])):
        out = subprocess.run([sys.executable, "-m", "flows.cli", command, "--help"], capture_output=True,
                             text=True, check=True).stdout
        assert all(key in out for key in keys), out
