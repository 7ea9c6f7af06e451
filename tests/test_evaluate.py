"""evaluate end to end on a tiny generated benchmark folder: CLI → Prefect flow → images, CSV, summary, artifacts;
an interrupted evaluation continues where it stopped and ends where an uninterrupted one does; bad input."""

import csv

import pytest
from test_generate import tiny_prior
from test_generate_flow import artifact

from evaluation import run as run_module
from evaluation.run import prepare_evaluation
from flows.evaluate import evaluate
from lambda_eclipse.cli import main
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


@pytest.mark.usefixtures("prefect_harness")
def test_dreambench_run_writes_images_scores_and_the_summary(bench, capsys):
    output = bench["root"] / "dreambench"
    argv = ["evaluate", "--benchmark", "dreambench", "--data", bench["data"], "--prior", bench["prior"], "--output",
            str(output)] + sets(*SMALL, "evaluate.max_prompts=2")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "single subject: 2 prompts, DINO " in out and "2 of 2 prompts → " in out
    found = rows(output)
    assert [(r["id"], r["prompt"], r["subjects"], r["seed"], r["images"]) for r in found] == [
        ("backpack/00", "a backpack in the jungle", "backpack", "0", "2"),
        ("backpack/01", "a backpack in the snow", "backpack", "2", "2")]
    for r in found:
        assert -1 <= float(r["dino"]) <= 1 and -1 <= float(r["clip_i"]) <= 1 and -1 <= float(r["clip_t"]) <= 1
    assert sorted(p.name for p in (output / "images" / "backpack" / "00").iterdir()) == ["0.png", "1.png"]
    summary = (output / "summary.md").read_text()
    assert "| λ-ECLIPSE, this run: single subject | 2 | 4 |" in summary
    assert "| λ-ECLIPSE, paper: single subject | | | 0.613 | 0.783 | 0.307 |" in summary
    (table,) = artifact("evaluate-dreambench-summary")
    assert table["prompts"] == 2
    assert table["dino"] == pytest.approx((float(found[0]["dino"]) + float(found[1]["dino"])) / 2, abs=1e-4)
    assert [r["id"] for r in artifact("evaluate-dreambench-prompts")] == ["backpack/00", "backpack/01"]
    assert "paper: single subject" in artifact("evaluate-dreambench-report")


@pytest.mark.usefixtures("prefect_harness")
def test_an_interrupted_evaluation_continues_where_it_stopped(bench, monkeypatch):
    settings = SMALL + ["evaluate.max_prompts=3"]
    whole = bench["root"] / "whole"
    evaluate(benchmark="multibench", data=bench["data"], prior=bench["prior"], output=str(whole), overrides=settings)

    real, calls = run_module.Evaluator.evaluate, []

    def killed_after_one(self, prompt, job):
        calls.append(prompt.id)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return real(self, prompt, job)

    interrupted = bench["root"] / "interrupted"
    monkeypatch.setattr(run_module.Evaluator, "evaluate", killed_after_one)
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(benchmark="multibench", data=bench["data"], prior=bench["prior"], output=str(interrupted),
                 overrides=settings)
    assert [r["id"] for r in rows(interrupted)] == ["2/01/cat+backpack"]

    resumed = []
    monkeypatch.setattr(run_module.Evaluator, "evaluate",
                        lambda self, prompt, job: resumed.append(prompt.id) or real(self, prompt, job))
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


def test_a_different_evaluation_into_the_same_output_is_refused(bench):
    output = bench["root"] / "refuse"
    plan = prepare_evaluation("multibench", bench["data"], bench["prior"], str(output), overrides=SMALL)
    run_module.start(plan)
    with pytest.raises(UserError, match=r"holds another evaluation: evaluate.seed \(0 then, 1 now\); use a new"):
        prepare_evaluation("multibench", bench["data"], bench["prior"], str(output),
                           overrides=SMALL + ["evaluate.seed=1"])
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
    (["--prior", "{prior16}"], "but the tiny profile's CLIP gives 32-d embeddings"),
    (sets("evaluate.images_per_prompt=0"), "invalid config: evaluate.images_per_prompt must be ≥ 1 (got 0)"),
    (sets("evaluate.reference_image=3"), "evaluate.reference_image=3, but subject backpack has 2 photo(s)"),
    (sets("evaluate.size=30"),
     "image size height 30 (nearest 32), width 30 (nearest 32): the tiny Kandinsky 2.2 decoder"),
    (sets("evaluate.benchmarks=/nowhere.json"), "evaluate.benchmarks=/nowhere.json: no such file"),
    (sets("evaluate.images=4"), "unknown config key 'evaluate.images'"),
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
