"""evaluate end to end on a tiny generated benchmark folder: CLI → Prefect flow → Ray model actors → images, CSV,
summary, artifacts; an interrupted evaluation continues where it stopped and ends where an uninterrupted one does;
two actors give what one gives; segmentation failures and the decoder are recorded; bad input."""

import csv
import hashlib
from pathlib import Path

import pytest
from test_generate import tiny_prior
from test_generate_decoder import fine_tuned_decoder
from test_generate_flow import artifact

import flows.evaluate as evaluate_flow
from evaluation import run as run_module
from evaluation.run import Evaluator, finish, prepare_evaluation, record
from flows.cli import main
from flows.evaluate import evaluate
from lambda_eclipse.errors import UserError
from lambda_eclipse.synthetic import write_photos

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SMALL = ["evaluate.images_per_prompt=2", "evaluate.steps=2"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_photos(root / "data" / "dog", 3, size=72)
    write_photos(root / "data" / "backpack", 2, size=64, start=10)
    write_photos(root / "data" / "cat", 2, size=64, start=20)  # Multibench's role-aware prompts need two animals
    return {"root": root, "data": str(root / "data"), "prior": tiny_prior(root / "prior")}


def rows(output):
    with open(output / "per_prompt.csv", newline="") as f:
        return list(csv.DictReader(f))


def sets(*items):
    return [a for item in items for a in ("--set", item)]


@pytest.mark.usefixtures("prefect_harness", "ray_local")
def test_dreambench_run_writes_images_scores_and_the_summary(bench, capsys):
    output = bench["root"] / "dreambench"
    decoder = fine_tuned_decoder(bench["root"] / "decoder")
    argv = ["evaluate", "--benchmark", "dreambench", "--data", bench["data"], "--prior", bench["prior"], "--output",
            str(output), "--decoder", decoder] + sets(*SMALL, "evaluate.max_prompts=2")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "single subject: 2 prompts, DINO " in out and "2 of 2 prompts → " in out
    found = rows(output)
    sha = hashlib.sha256((Path(decoder) / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    assert [(r["id"], r["prompt"], r["subjects"], r["seed"], r["images"], r["segmentation"], r["decoder"])
            for r in found] == [
        ("backpack/00", "a backpack in the jungle", "backpack", "0", "2", "segmented", f"fine-tuned {sha[:16]}"),
        ("backpack/01", "a backpack in the snow", "backpack", "2", "2", "segmented", f"fine-tuned {sha[:16]}")]
    for r in found:
        assert -1 <= float(r["dino"]) <= 1 and -1 <= float(r["clip_i"]) <= 1 and -1 <= float(r["clip_t"]) <= 1
    assert sorted(p.name for p in (output / "images" / "backpack" / "00").iterdir()) == ["0.png", "1.png"]
    summary = (output / "summary.md").read_text()
    assert "| λ-ECLIPSE, this run: single subject | 2 | 4 |" in summary
    assert "| λ-ECLIPSE, reported (paper): single subject | | | 0.613 | 0.783 | 0.307 |" in summary
    assert ("Encoders: DINO — DINO ViT-S/16 tiny (random weights); CLIP-I and CLIP-T — a tiny OpenCLIP of its own "
            "(random weights, seed 4321; stands in for ViT-B-32-quickgelu:openai), not the conditioning encoder."
            in summary)
    assert f"fine-tuned decoder UNet `{decoder}/unet` (sha256 `{sha[:16]}…`)" in summary
    assert "Grounding DINO found the subject in every reference photo used." in summary
    (table,) = artifact("evaluate-dreambench-summary")
    assert table["prompts"] == 2
    assert table["dino"] == pytest.approx((float(found[0]["dino"]) + float(found[1]["dino"])) / 2, abs=1e-4)
    assert [r["id"] for r in artifact("evaluate-dreambench-prompts")] == ["backpack/00", "backpack/01"]
    assert "reported (paper): single subject" in artifact("evaluate-dreambench-report")


@pytest.mark.usefixtures("prefect_harness", "ray_local")
def test_two_actors_give_what_one_gives(bench):
    settings = SMALL + ["evaluate.max_prompts=5"]
    one, two = bench["root"] / "one-actor", bench["root"] / "two-actors"
    a = evaluate(benchmark="multibench", data=bench["data"], prior=bench["prior"], output=str(one),
                 overrides=settings)
    b = evaluate(benchmark="multibench", data=bench["data"], prior=bench["prior"], output=str(two),
                 overrides=settings + ["evaluate.actors=2"])
    assert [w["prompts"] for w in a["actors"]] == [5]
    assert len(b["actors"]) == 2 and all(w["prompts"] >= 1 for w in b["actors"])  # both actors scored prompts
    assert sum(w["prompts"] for w in b["actors"]) == 5
    assert rows(one) == rows(two) and len(rows(one)) == 5  # same scores, and in benchmark order
    assert a["summary"] == b["summary"]
    for row in rows(one):
        for k in (0, 1):
            assert ((one / "images" / row["id"] / f"{k}.png").read_bytes()
                    == (two / "images" / row["id"] / f"{k}.png").read_bytes())
    assert (one / "summary.md").read_text() == (two / "summary.md").read_text().replace("two-actors", "one-actor")


@pytest.mark.usefixtures("prefect_harness", "ray_local")
def test_an_interrupted_evaluation_continues_where_it_stopped(bench, monkeypatch):
    settings = SMALL + ["evaluate.max_prompts=3"]
    whole = bench["root"] / "whole"
    evaluate(benchmark="multibench", data=bench["data"], prior=bench["prior"], output=str(whole), overrides=settings)

    calls = []

    def killed_after_one(plan, prompt, row, images):
        calls.append(prompt.id)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return record(plan, prompt, row, images)

    interrupted = bench["root"] / "interrupted"
    monkeypatch.setattr(evaluate_flow, "record", killed_after_one)
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(benchmark="multibench", data=bench["data"], prior=bench["prior"], output=str(interrupted),
                 overrides=settings)
    assert [r["id"] for r in rows(interrupted)] == ["2/01/cat+backpack"]

    resumed = []

    def counted(plan, prompt, row, images):
        resumed.append(prompt.id)
        record(plan, prompt, row, images)

    monkeypatch.setattr(evaluate_flow, "record", counted)
    result = evaluate(benchmark="multibench", data=bench["data"], prior=bench["prior"], output=str(interrupted),
                      overrides=settings)
    assert resumed == ["2/01/dog+backpack", "2/02/cat+dog"]  # the finished prompt is not generated again
    assert rows(interrupted) == rows(whole)
    for prompt in ("2/01/cat+backpack", "2/02/cat+dog"):
        for k in (0, 1):
            assert ((interrupted / "images" / prompt / f"{k}.png").read_bytes()
                    == (whole / "images" / prompt / f"{k}.png").read_bytes())
    assert result["evaluated"] == 3 and result["summary"][0]["group"] == "two subjects"

    # growing max_prompts continues the same evaluation; nothing is redone
    resumed.clear()
    evaluate(benchmark="multibench", data=bench["data"], prior=bench["prior"], output=str(interrupted),
             overrides=SMALL + ["evaluate.max_prompts=4"])
    assert resumed == ["2/02/dog+cat"] and len(rows(interrupted)) == 4


def test_a_reference_photo_without_a_box_is_recorded_per_prompt_and_per_subject(bench):
    """Grounding DINO finds nothing (threshold 1): the photo is embedded whole, and the CSV and summary say so."""
    output = bench["root"] / "no-box"
    plan = prepare_evaluation("multibench", bench["data"], bench["prior"], str(output),
                              overrides=SMALL + ["evaluate.max_prompts=3"])
    evaluator = Evaluator(plan)
    assert evaluator.generator.segmenter is not None
    (first, *_), rest = plan.todo(), plan.todo()[1:]
    row, images = evaluator.score(*first)
    assert row["segmentation"] == "segmented"
    record(plan, first[0], row, images)
    evaluator.generator.segmenter.boxes.boxes.box_threshold = 1.0
    evaluator.generator._subjects.clear()  # embed the reference photos again, now without a box
    for prompt, job in rest:
        row, images = evaluator.score(prompt, job)
        record(plan, prompt, row, images)
    run_module.start(plan, "float32")
    result = finish(plan)
    assert [r["segmentation"] for r in rows(output)] == ["segmented", "no box: dog+backpack", "no box: cat+dog"]
    assert result["segmentation_failures"] == {"backpack": 1, "cat": 1, "dog": 2}
    summary = (output / "summary.md").read_text()
    assert ("Grounding DINO found no box in the reference photo of 3 subject(s); that photo was embedded whole (not "
            "segmented) in these prompts:\n\n| subject | prompts |\n|---|---:|\n"
            "| backpack | 1 |\n| cat | 1 |\n| dog | 2 |"
            in summary)


def test_a_different_evaluation_into_the_same_output_is_refused(bench):
    output = bench["root"] / "refuse"
    plan = prepare_evaluation("multibench", bench["data"], bench["prior"], str(output), overrides=SMALL)
    run_module.start(plan, "float32")
    with pytest.raises(UserError, match=r"holds another evaluation: evaluate.seed \(0 then, 1 now\); use a new"):
        prepare_evaluation("multibench", bench["data"], bench["prior"], str(output),
                           overrides=SMALL + ["evaluate.seed=1"])
    with pytest.raises(UserError, match=r"evaluate.clip_model \('ViT-B-32-quickgelu' then, 'conditioning' now\)"):
        prepare_evaluation("multibench", bench["data"], bench["prior"], str(output),
                           overrides=SMALL + ["evaluate.clip_model=conditioning"])
    # more actors, or more prompts, continue the same evaluation; another dtype in the actors does not
    wider = prepare_evaluation("multibench", bench["data"], bench["prior"], str(output),
                               overrides=SMALL + ["evaluate.actors=2", "evaluate.max_prompts=2"])
    with pytest.raises(UserError, match=r"dtype \('float32' then, 'float16' now\)"):
        run_module.start(wider, "float16")
    with pytest.raises(UserError,
                       match=r"holds another evaluation: benchmark \('multibench' then, 'dreambench' now\);"):
        prepare_evaluation("dreambench", bench["data"], bench["prior"], str(output), overrides=SMALL)


@pytest.fixture(scope="module")
def bad_data(bench):
    root = bench["root"] / "bad"
    write_photos(root / "broken" / "dog", 1, size=64)
    (root / "broken" / "dog" / "photo_00009.jpg").write_text("not a photo")
    return {"root": root, "prior16": tiny_prior(root / "prior16", 16)}


@pytest.mark.parametrize("extra, message", [
    (["--data", "/nowhere"], "--data /nowhere is not a directory"),
    (["--data", "{bad}/broken"], "subject dog: cannot read image {bad}/broken/dog/photo_00009.jpg: not an image"),
    (["--prior", "{prior16}"], "works on 16-d embeddings, which no profile's CLIP gives (tiny: 32, paper: 1280)"),
    (["--prior", "{prior16}", "--profile", "tiny"], "but the tiny profile's CLIP gives 32-d embeddings"),
    (sets("evaluate.images_per_prompt=0"), "invalid config: evaluate.images_per_prompt must be ≥ 1 (got 0)"),
    (sets("evaluate.reference_image=3"), "evaluate.reference_image=3, but subject backpack has 2 photo(s)"),
    (sets("evaluate.size=30"),
     "image size height 30 (nearest 32), width 30 (nearest 32): the tiny Kandinsky 2.2 decoder"),
    (sets("evaluate.benchmarks=/nowhere.json"), "evaluate.benchmarks=/nowhere.json: no such file"),
    (sets("evaluate.images=4"), "unknown config key 'evaluate.images'"),
    (sets("evaluate.actors=0"), "invalid config: evaluate.actors must be ≥ 1 (got 0)"),
    (["--decoder", "/nowhere"], "--decoder /nowhere is not a directory"),
])
def test_bad_input_is_one_line_and_exit_2(bench, bad_data, tmp_path, capsys, extra, message):
    names = {"bad": bad_data["root"], "prior16": bad_data["prior16"]}
    argv = ["evaluate", "--benchmark", "dreambench", "--data", bench["data"], "--prior", bench["prior"], "--output",
            str(tmp_path / "out")] + [a.format(**names) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-eclipse evaluate: error: ") and message.format(**names) in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "out" / "per_prompt.csv").exists()


def test_paper_profile_names_dino_among_the_missing_weights(bench, tmp_path, capsys):
    argv = ["evaluate", "--benchmark", "dreambench", "--data", bench["data"], "--prior", bench["prior"],
            "--profile", "paper", "--output", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "weights missing for --profile paper: OpenCLIP" in err and "Grounding DINO models.grounding_dino" in err
    assert "DINO ViT-S/16 models.dino=facebook/dino-vits16" in err and "prior --prior" not in err  # a local prior
    assert "OpenCLIP evaluate.clip_model=ViT-B-32-quickgelu evaluate.clip_pretrained=openai" in err
    assert main(argv + sets("evaluate.clip_model=conditioning")) == 2
    assert "evaluate.clip_model" not in capsys.readouterr().err  # scored with the conditioning CLIP: nothing more
    assert main(argv + sets("evaluate.clip_model=ViT-Q-99")) == 2
    assert ("evaluate.clip_model='ViT-Q-99' is not an OpenCLIP model; choose one of open_clip.list_models() (default "
            "ViT-B-32-quickgelu) or 'conditioning'") in capsys.readouterr().err


@pytest.mark.usefixtures("prefect_harness", "ray_local")
def test_a_failure_on_a_model_actor_is_one_line_in_the_run_log(tmp_path, bench, monkeypatch):
    """A reference photo that the actor cannot read (gone after the check, or not on the actor's node)."""
    import re

    from test_generate_flow import wait_for_error_log

    write_photos(tmp_path / "data" / "backpack", 2, size=64)
    lost = []

    def then_lost(*args, **kwargs):
        plan = prepare_evaluation(*args, **kwargs)
        lost.append(plan.prompts[0].subjects[0].photos[0])
        Path(lost[0]).unlink()
        return plan

    monkeypatch.setattr(evaluate_flow, "prepare_evaluation", then_lost)
    with pytest.raises(UserError) as raised:
        evaluate(benchmark="dreambench", data=str(tmp_path / "data"), prior=bench["prior"],
                 output=str(tmp_path / "out"), overrides=SMALL + ["evaluate.max_prompts=1"])
    message = str(raised.value)
    assert re.fullmatch(r"evaluate actor 0 \(node [0-9a-f]{8}\), scoring prompt backpack/00: subject 'backpack': image "
                        + re.escape(lost[0]) + " does not exist", message), message
    assert message in wait_for_error_log(message)
    assert not (tmp_path / "out" / "per_prompt.csv").exists()
