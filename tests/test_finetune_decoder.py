"""finetune-decoder (paper §3.3, Appendix D) on the tiny profile: the UNet learns (the loss falls), the fine-tuned
decoder renders other images than the base one and the same ones once saved and loaded, an interrupted run resumes to
the uninterrupted run's exact weights, and bad input fails in one line before any model loads."""

import json
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import logs_of_latest_run

from finetune.config import DataSection, load_finetune_config, steps_for
from finetune.data import TrainingPhotos
from finetune.driver import run_finetune
from finetune.loop import finetune
from finetune.prepare import place, prepare_finetune
from finetune.trainer import Trainer
from flows.cli import main
from lambda_eclipse.errors import UserError, WorkerError
from lambda_eclipse.synthetic import write_photos
from storage.fs import name
from storage.run_dir import CHECKPOINTS, checkpoints, read_metrics

ROOT = Path(__file__).resolve().parents[1]
# A learning rate that moves a random tiny UNet within a few steps (the paper's 1e-5 is for the real decoder).
# Batch 1 × gradient accumulation 4, whole photos, no flips: the defaults (the authors' script's).
SETTINGS = ["finetune.max_steps=12", "finetune.lr=1e-3", "log.every=4", "checkpoint.every=4", "checkpoint.keep=2"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    root = tmp_path_factory.mktemp("subjects")
    write_photos(root / "dog", 2, size=80)
    write_photos(root / "backpack_dog", 1, size=96, start=5)  # a DreamBench folder: segmented as "backpack"
    return [f"dog={root / 'dog'}", f"backpack_dog={root / 'backpack_dog'}"]


@pytest.fixture(scope="module")
def trained(subjects, tmp_path_factory):
    """One uninterrupted run of the segmented option: (output directory, in-memory UNet, finetune.json record)."""
    output = tmp_path_factory.mktemp("finetuned") / "decoder"
    cfg = load_finetune_config(None, [*SETTINGS, "data.segment=true"])
    unet, record = finetune(place(prepare_finetune(subjects, str(output), "tiny", cfg), 0))
    return output, unet, record


def test_loss_decreases(trained):
    output, _, record = trained
    losses = [r["loss"] for r in read_metrics(output)]
    assert [r["step"] for r in read_metrics(output)] == [4, 8, 12]
    assert losses[-1] < 0.8 * losses[0], losses
    assert record["loss"] == losses[-1] and record["steps"] == 12 and record["steps_per_s"] > 0


def test_output_layout_and_record(trained, subjects):
    output, _, record = trained
    assert {p.name for p in (output / "unet").iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert [name(c) for c in checkpoints(output)] == ["step-00000008", "step-00000012"]  # keep=2
    assert {p.name for p in Path(checkpoints(output)[-1]).iterdir()} == {"unet", "training_state.pt", "identity.json"}
    assert json.loads((output / "finetune.json").read_text()) == record
    assert record["profile"] == "tiny" and record["base_decoder"] == "kandinsky-2-2-decoder tiny (random weights)"
    assert record["config"]["finetune"]["lr"] == 1e-3 and record["resolution"] == 64
    assert [(s["name"], s["word"], len(s["photos"])) for s in record["subjects"]] == [
        ("dog", "dog", 2), ("backpack_dog", "backpack", 1)]
    photo = record["subjects"][0]["photos"][0]
    assert photo["path"] == str(Path(subjects[0].split("=")[1]) / "photo_00000.jpg") and len(photo["sha256"]) == 64
    assert photo["embedded"] in ("segmented", "whole photo (segmentation found no box)")
    crops = sorted(str(p.relative_to(output / "references")) for p in (output / "references").rglob("*.png"))
    assert crops == ["backpack_dog/photo_00005.png", "dog/photo_00000.png", "dog/photo_00001.png"]


def _render(pipeline, embedding: np.ndarray) -> np.ndarray:
    image_embeds = torch.from_numpy(embedding)[None]
    out = pipeline(image_embeds=image_embeds, negative_image_embeds=torch.zeros_like(image_embeds), height=64,
                   width=64, num_inference_steps=3, guidance_scale=4.0,
                   generator=torch.Generator("cpu").manual_seed(7), output_type="np")
    return out.images[0]


def test_finetuned_decoder_renders_differently_and_round_trips_bit_identically(trained):
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    from lambda_eclipse.models.kandinsky import load_decoder

    output, unet, _ = trained
    pipeline = load_decoder("tiny", "", 32, torch.device("cpu"), torch.float32).pipeline
    embedding = np.random.default_rng(0).normal(size=32).astype(np.float32)
    base = _render(pipeline, embedding)
    pipeline.unet = unet.eval()
    tuned = _render(pipeline, embedding)
    loaded = UNet2DConditionModel.from_pretrained(output / "unet")
    pipeline.unet = loaded
    reloaded = _render(pipeline, embedding)
    assert np.abs(base - tuned).max() > 1e-3  # same seed, other UNet: another image
    assert np.array_equal(tuned, reloaded)  # bit for bit
    saved, trained_weights = loaded.state_dict(), unet.state_dict()
    assert saved.keys() == trained_weights.keys()
    assert all(torch.equal(saved[k], trained_weights[k]) for k in saved)


def test_interrupted_run_resumes_to_the_uninterrupted_weights(trained, subjects, tmp_path, monkeypatch):
    """Killed in step 6's third micro-batch, after the step-4 checkpoint: resumed, bit-identical to `trained`."""
    output = tmp_path / "decoder"
    cfg = load_finetune_config(None, [*SETTINGS, "data.segment=true"])
    micro_step, micro_batches = Trainer.micro_step, []

    def crash_mid_accumulation(self, *batch):
        if self.step == 5 and len(micro_batches) == 5 * 4 + 2:
            raise KeyboardInterrupt
        micro_batches.append(self.step)
        return micro_step(self, *batch)

    monkeypatch.setattr(Trainer, "micro_step", crash_mid_accumulation)
    with pytest.raises(KeyboardInterrupt):
        finetune(place(prepare_finetune(subjects, str(output), "tiny", cfg), 0))
    assert [name(c) for c in checkpoints(output)] == ["step-00000004"]
    assert not (output / "unet").exists() and not (output / "finetune.json").exists()
    assert micro_batches[-2:] == [5, 5]  # two of step 6's four micro-batches had run
    monkeypatch.setattr(Trainer, "micro_step", micro_step)

    with pytest.raises(UserError, match="already holds checkpoints .latest step-00000004.; pass --resume"):
        prepare_finetune(subjects, str(output), "tiny", cfg)
    job = place(prepare_finetune(subjects, str(output), "tiny", cfg, resume=True), 0)
    assert job.resume_from == str(output / CHECKPOINTS / "step-00000004")
    resumed, record = finetune(job)

    uninterrupted = trained[1].state_dict()
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in uninterrupted.items())
    assert [r["step"] for r in read_metrics(output)] == [4, 8, 12]
    assert [r["loss"] for r in read_metrics(output)] == [r["loss"] for r in read_metrics(trained[0])]
    assert record["steps"] == 12


def test_resume_with_other_settings_is_refused(trained, subjects):
    output = trained[0]
    cfg = load_finetune_config(None, [*SETTINGS, "data.segment=true", "finetune.lr=1e-4", "data.flip=0.5",
                                      "finetune.gradient_accumulation=2"])
    with pytest.raises(UserError) as exc:
        prepare_finetune(subjects, str(output), "tiny", cfg, resume=True)
    assert "finetune.lr (0.001 then, 0.0001 now)" in str(exc.value)
    assert "data.flip (0.0 then, 0.5 now)" in str(exc.value)
    assert "finetune.gradient_accumulation (4 then, 2 now)" in str(exc.value)
    with pytest.raises(UserError, match="subjects"):
        cfg = load_finetune_config(None, [*SETTINGS, "data.segment=true"])
        prepare_finetune(subjects[:1], str(output), "tiny", cfg, resume=True)


def test_gradient_checkpointing_and_bf16_autocast(subjects, tmp_path):
    """The GPU memory and speed options compute the same step: checkpointing recomputes the same gradients, bf16
    autocast close ones."""
    def gradients(name: str, *overrides: str) -> tuple[float, torch.Tensor]:
        cfg = load_finetune_config(None, list(overrides))
        trainer = Trainer(place(prepare_finetune(subjects[:1], str(tmp_path / name), "tiny", cfg), 0))
        assert trainer.unet.is_gradient_checkpointing == ("runtime.gradient_checkpointing=true" in overrides)
        loss, _ = trainer.train_step()  # the gradients stay on the parameters until the next step
        return loss.item(), torch.cat([p.grad.flatten() for p in trainer.params if p.grad is not None])

    loss, plain = gradients("plain")
    checkpointed_loss, checkpointed = gradients("checkpointed", "runtime.gradient_checkpointing=true")
    bf16_loss, bf16 = gradients("bf16", "runtime.precision=bf16")
    assert checkpointed_loss == loss and torch.allclose(checkpointed, plain, rtol=1e-4, atol=1e-7)
    assert bf16_loss != loss and abs(bf16_loss - loss) < 0.01 * loss
    assert torch.nn.functional.cosine_similarity(bf16, plain, dim=0) > 0.99


def test_accumulating_four_micro_batches_of_one_is_one_batch_of_four(subjects, tmp_path):
    """The same photos, noise and timesteps (drawn once per step), the same gradient within float rounding, and so
    the same update: within 1 % of the learning rate wherever |gradient| ≫ AdamW's ε."""
    lr = 1e-3

    def one_step(name: str, *overrides: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = load_finetune_config(None, [f"finetune.lr={lr}", *overrides])
        trainer = Trainer(place(prepare_finetune(subjects, str(tmp_path / name), "tiny", cfg), 0))
        before = torch.cat([p.detach().flatten() for p in trainer.params])
        trainer.train_step()  # the gradients stay on the parameters until the next step
        grads = torch.cat([p.grad.flatten() for p in trainer.params if p.grad is not None])
        return before, torch.cat([p.detach().flatten() for p in trainer.params]), grads

    before, accumulated, accumulated_grad = one_step("4x1")  # the defaults: batch 1 × accumulation 4
    _, batched, batched_grad = one_step("1x4", "finetune.batch_size=4", "finetune.gradient_accumulation=1")
    _, _, two_grad = one_step("1x2", "finetune.batch_size=2", "finetune.gradient_accumulation=1")
    scale = batched_grad.abs().max().item()
    torch.testing.assert_close(accumulated_grad, batched_grad, rtol=1e-4, atol=1e-5 * scale)
    assert (accumulated - before).abs().max() == pytest.approx(lr, rel=0.01)  # it moved
    # AdamW's first update is g / (|g| + ε) · lr: where |g| is near ε = 1e-8, rounding noise decides it
    clear = batched_grad.abs() > 100 * 1e-8
    assert clear.float().mean() > 0.9
    torch.testing.assert_close(accumulated[clear], batched[clear], rtol=0, atol=0.01 * lr)
    # a step of two photos instead of four has another gradient: the comparison sees the batch
    assert not torch.allclose(two_grad, batched_grad, rtol=1e-4, atol=1e-5 * scale)


def test_steps_grow_with_the_concepts(subjects, tmp_path):
    assert [steps_for(n) for n in (1, 2, 15, 30, 31)] == [400, 662, 4069, 8000, 8262]
    assert load_finetune_config().finetune.max_steps == 0  # 0: steps_for(the number of subjects)
    for given, steps in ((subjects, 662), (subjects[:1], 400)):
        job = prepare_finetune(given, str(tmp_path / str(steps)), "tiny", load_finetune_config())
        assert job.cfg.finetune.max_steps == steps
    cfg = load_finetune_config(None, ["finetune.max_steps=7"])
    job = prepare_finetune(subjects, str(tmp_path / "set"), "tiny", cfg)
    assert job.cfg.finetune.max_steps == 7


def test_augmentations_are_seeded_and_shaped():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)]
    embeddings = np.eye(2, 8, dtype=np.float32)
    random = TrainingPhotos(images, embeddings, 32, DataSection(crop="random", crop_min_scale=0.5))
    a = random.batch(torch.Generator().manual_seed(3), 5)
    b = random.batch(torch.Generator().manual_seed(3), 5)
    assert a[0].shape == (5, 3, 32, 32) and a[1].shape == (5, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].min() >= -1 and a[0].max() <= 1
    # centre crop: the photo's centred square, resized once; flip=1 mirrors it
    plain = TrainingPhotos(images[:1], embeddings[:1], 32, DataSection(flip=0.0))
    mirrored = TrainingPhotos(images[:1], embeddings[:1], 32, DataSection(flip=1.0))
    x = plain.batch(torch.Generator().manual_seed(0), 1)[0]
    assert torch.equal(mirrored.batch(torch.Generator().manual_seed(0), 1)[0], x.flip(-1))
    assert not torch.equal(x, x.flip(-1))


@pytest.mark.parametrize(
    "subject, message",
    [
        ("dog", "--subject 'dog': expected NAME=DIR"),
        ("=photos", "--subject '=photos': expected NAME=DIR"),
        ("dog=/nonexistent/dog", "--subject dog=/nonexistent/dog: /nonexistent/dog is not a directory"),
        ("dog={empty}", "holds no photos (.jpg"),
        ("dog={dog} --subject dog={dog}", "--subject dog is given twice"),
        ("dog={dog} --set finetune.lr=0", "invalid config: finetune.lr must be > 0 (got 0.0)"),
        ("dog={dog} --set data.crop=zoom", "data.crop must be one of center, random (got 'zoom')"),
        ("dog={dog} --set data.resolution=50", "image size height 50 (nearest 48)"),
        ("dog={dog} --set finetune.optimizer=adamw8bit",
         "finetune.optimizer=adamw8bit runs on CUDA only; use finetune.optimizer=adamw on the CPU"),
        ("dog={dog} --set finetune.steps=3", "unknown config key 'finetune.steps'"),
        ("dog={dog} --profile paper --set data.segment=true --set models.decoder=/nowhere/decoder "
         "--set models.sam_checkpoint=/nowhere/sam",
         "Kandinsky 2.2 decoder models.decoder=/nowhere/decoder; Grounding DINO"),
        ("dog={dog} --profile paper --set models.decoder=/nowhere/decoder",
         "weights missing for --profile paper: OpenCLIP models.clip_model=ViT-bigG-14"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(subject, message, tmp_path, capsys):
    write_photos(tmp_path / "dog", 1, size=64)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a photo")
    extra = subject.format(dog=tmp_path / "dog", empty=tmp_path / "empty").split(" ")
    argv = ["finetune-decoder", "--output", str(tmp_path / "out"), "--subject", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-eclipse finetune-decoder: error: ") and message in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "out" / "unet").exists()


def test_adamw8bit_without_bitsandbytes_names_the_package(monkeypatch, tmp_path):
    write_photos(tmp_path / "dog", 1, size=64)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable, whether installed or not
    cfg = load_finetune_config(None, ["finetune.optimizer=adamw8bit"])
    job = prepare_finetune([f"dog={tmp_path / 'dog'}"], str(tmp_path / "out"), "tiny", cfg)
    with pytest.raises(UserError, match="needs bitsandbytes, which is not installed: pip install bitsandbytes"):
        place(job, gpus=1)  # a cluster with GPUs


def test_help_explains_itself_and_imports_nothing_heavy():
    code = ("import sys\nfrom flows.cli import main\n"
            "try:\n    main(['finetune-decoder', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'prefect', 'diffusers') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = run.stdout
    assert out.strip().splitlines()[-1] == "[]", out + run.stderr
    for text in ("--subject NAME=DIR", "finetune.lr=1e-05", "finetune.max_steps=0", "data.segment=False",
                 "data.flip=0.0", "finetune.gradient_accumulation=4", "400 for one concept, 8,000 for 30",
                 "runtime.gradient_checkpointing=False", "pip install bitsandbytes", "--resume", "unet/"):
        assert text in out, text


def test_a_killed_training_task_is_run_again_by_ray_and_resumes(subjects, tmp_path, ray_local, caplog):
    """The training runs in a Ray task (run_finetune); SIGKILLed after its first checkpoint, it is retried by Ray and
    continues from that checkpoint, with no one restarting it."""
    import logging

    import psutil

    caplog.set_level(logging.INFO, logger="finetune")
    output = tmp_path / "decoder"
    cfg = load_finetune_config(None, [*SETTINGS, "finetune.max_steps=60"])
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_finetune, place(prepare_finetune(subjects, str(output), "tiny", cfg), 0))
        deadline = time.monotonic() + 600
        while not checkpoints(output):
            assert not future.done(), future.result()
            assert time.monotonic() < deadline, "no checkpoint in 600 s"
            time.sleep(0.05)
        (task,) = [p for p in psutil.process_iter(["cmdline"])
                   if "ray::_finetune_task" in (p.info["cmdline"] or [""])[0]]  # Ray's title for a task's worker
        task.kill()
        record = future.result(timeout=600)
    assert record["steps"] == 60 and (output / "unet").is_dir()
    resumed = re.findall(r"\[finetune\] resumed from \S+step-(\d+) at step", caplog.text)
    assert resumed and 4 <= int(resumed[0]) < 60, caplog.text
    steps = [r["step"] for r in read_metrics(output)]
    assert steps == list(range(4, 61, 4)), steps  # one history: the killed task's lines after its checkpoint are gone


def test_a_failing_training_task_ends_the_run_in_one_line(tmp_path, ray_local):
    write_photos(tmp_path / "dog", 1, size=64)
    cfg = load_finetune_config(None, SETTINGS)
    job = place(prepare_finetune([f"dog={tmp_path / 'dog'}"], str(tmp_path / "out"), "tiny", cfg), 0)
    shutil.rmtree(tmp_path / "out")  # the output became a file once the run had started: not a user's input
    (tmp_path / "out").write_text("")
    with pytest.raises(WorkerError, match=r"^finetune-decoder's training task failed: \w+: .+; \S+ keeps its "
                                          r"checkpoints: continue it with --resume$"):
        run_finetune(job)


def test_cli_runs_the_flow(subjects, tmp_path, capsys, ray_local, prefect_harness):
    output = tmp_path / "decoder"
    assert main(["finetune-decoder", *[a for s in subjects[:1] for a in ("--subject", s)], "--output", str(output),
                 "--profile", "tiny", "--set", "finetune.max_steps=2"]) == 0
    assert "fine-tuned 2 steps on 2 photo(s) of 1 subject(s)" in capsys.readouterr().out
    line = "[finetune] step 2: loss "  # the Ray task's progress, relayed to the flow's run log
    logs = logs_of_latest_run("finetune-decoder", line)
    assert line in logs, logs
    record = json.loads((output / "finetune.json").read_text())
    assert {p["embedded"] for p in record["subjects"][0]["photos"]} == {"whole photo"}
    assert record["models"].keys() == {"clip", "decoder"}  # no segmentation models loaded
    assert (output / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_deployment_parameters_are_the_flow_s():
    import inspect

    from prefect.utilities.callables import parameter_schema

    from flows.finetune_decoder import finetune_decoder

    (deployment,) = [d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
                     if d["name"] == "finetune-decoder"]
    assert deployment["entrypoint"] == "flows.finetune_decoder:finetune_decoder"
    assert deployment["work_pool"]["name"] == "lambda-gpu"
    assert deployment["work_pool"]["job_variables"]["command"] == "python deploy/gpu_slot.py"
    # every parameter a deployment sets: the flow's, less `handed` (the CLI's plan, flows/handed.py: no schema)
    assert set(deployment["parameters"]) == set(inspect.signature(finetune_decoder.fn).parameters) - {"handed"}
    assert set(deployment["parameters"]) == set(parameter_schema(finetune_decoder.fn).properties)
