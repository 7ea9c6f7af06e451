"""evaluate's other protocols: Multibench read from a folder of prompt files (the authors' released prompts) instead
of rebuilt from the paper's tables, and Table 5's Canny protocol (`--canny-from DIR`: an edge map per prompt)."""

import json

import numpy as np
import pytest
from PIL import Image
from test_generate import tiny_prior

from evaluation.benchmarks import benchmark_prompts, load_benchmarks
from evaluation.run import Evaluator, finish, prepare_evaluation, record
from flows.cli import main
from lambda_eclipse.errors import UserError
from lambda_eclipse.synthetic import write_photos
from tasks.edges import canny_rgb

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BENCH = load_benchmarks()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    write_photos(root / "data" / "dog", 2, size=64)
    write_photos(root / "data" / "backpack", 2, size=64, start=10)
    write_photos(root / "data" / "cat", 1, size=64, start=20)
    return root


def _lines(path, items) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path.parent)


def test_multibench_prompts_are_read_from_the_files_as_they_are(data, tmp_path):
    folder = _lines(tmp_path / "files" / "b_three.jsonl", [
        {"prompt": "A cat with a backpack and a dog", "subjects": ["cat", "backpack", "dog"]}])
    _lines(tmp_path / "files" / "a_two.jsonl", [
        {"prompt": "a dog wearing a backpack", "subjects": ["dog", "backpack"]},
        {"prompt": "a dog chasing a cat", "subjects": ["dog", "cat"]}])
    prompts = benchmark_prompts("multibench", data / "data", BENCH, folder)
    assert [(p.id, p.index, p.group, p.prompt) for p in prompts] == [
        ("a_two/00001", 0, "two subjects", "a dog wearing a backpack"),
        ("a_two/00002", 1, "two subjects", "a dog chasing a cat"),
        ("b_three/00001", 2, "three subjects", "A cat with a backpack and a dog")]
    assert [s.name for s in prompts[2].subjects] == ["cat", "backpack", "dog"]
    for p in prompts:  # each span is its subject's word in the prompt
        assert [p.prompt[a:b].lower() for a, b in p.spans] == [s.word for s in p.subjects]
    # without the folder, the prompts are the role-aware ones rebuilt from Tables 8 and 9
    assert benchmark_prompts("multibench", data / "data", BENCH)[0].id.startswith("2/")


@pytest.mark.parametrize("items, message", [
    ([{"prompt": "a dog wearing a hat", "subjects": ["dog", "hat"]}], r"two.jsonl:1: subjects \['hat'\] are not "
                                                                      r"folders of --data \(backpack, cat, dog\)"),
    ([{"prompt": "a dog and a cat", "subjects": ["cat", "dog"]}], r"two.jsonl:1: subject dog's word 'dog' is not in "
                                                                  r"'a dog and a cat' after the previous subject's"),
    ([{"prompt": "a dog", "subjects": ["dog"]}], r"two.jsonl:1: a prompt text and a list of 2 or 3 subject folders"),
    (["not an object"], r"two.jsonl:1: expected \{\"prompt\""),
])
def test_bad_multibench_files_name_the_file_and_line(data, tmp_path, items, message):
    folder = _lines(tmp_path / "files" / "two.jsonl", items)
    with pytest.raises(UserError, match=message):
        benchmark_prompts("multibench", data / "data", BENCH, folder)
    with pytest.raises(UserError, match=r"multibench_files=.*nowhere: no \*.jsonl prompt files there"):
        benchmark_prompts("multibench", data / "data", BENCH, str(tmp_path / "nowhere"))


def test_canny_from_controls_each_prompt_by_its_edge_map_and_compares_with_table_5(data, tmp_path):
    references = tmp_path / "sd15"
    write_photos(references / "backpack", 2, size=96, start=30)
    for k, photo in enumerate(sorted((references / "backpack").iterdir())):
        photo.rename(photo.with_name(f"{k:02d}{photo.suffix}"))  # DIR/<prompt id>.<ext>
    prior = tiny_prior(tmp_path / "prior")
    settings = ["evaluate.images_per_prompt=1", "evaluate.steps=1", "evaluate.max_prompts=2", "evaluate.segment=false",
                f"evaluate.canny_from={references}"]
    plan = prepare_evaluation("dreambench", str(data / "data"), prior, str(tmp_path / "out"), overrides=settings)
    canny = [job.canny for job in plan.generate.jobs]
    assert [p.id for p in plan.prompts] == ["backpack/00", "backpack/01"]
    assert canny == [str(p) for p in sorted((references / "backpack").iterdir())]
    evaluator = Evaluator(plan)
    control = evaluator.generator.prior_inputs(plan.generate.jobs[1])["control_embedding"][0].numpy()
    edges = canny_rgb(np.asarray(Image.open(str(canny[1]))), 100, 200, 0)  # a released-layout prior: the image's size
    np.testing.assert_allclose(control, evaluator.generator.clip.encode_images([edges])[0], rtol=1e-6)
    for prompt, job in plan.todo():
        record(plan, prompt, *evaluator.score(prompt, job))
    markdown = finish(plan)["markdown"]
    assert markdown.startswith("# DreamBench with Canny edge control (paper Table 5)")
    assert "| λ-ECLIPSE, reported (paper): single subject | | | 0.5173 | 0.7437 | 0.3158 |" in markdown
    assert f"Canny edge maps of {references}'s images control the prompts" in markdown
    # a prompt without its image is named, before anything loads
    (references / "backpack" / "01.jpg").unlink()
    with pytest.raises(UserError, match=r"--canny-from .*sd15: no image for 1 of 2 prompts, e.g. backpack/01.png"):
        prepare_evaluation("dreambench", str(data / "data"), prior, str(tmp_path / "out2"), overrides=settings)


def test_canny_from_on_the_command_line(data, tmp_path, capsys):
    argv = ["evaluate", "--benchmark", "dreambench", "--data", str(data / "data"), "--prior",
            tiny_prior(tmp_path / "prior"), "--output", str(tmp_path / "out"), "--canny-from", str(tmp_path / "no")]
    assert main(argv) == 2
    assert f"--canny-from {tmp_path / 'no'} is not a directory" in capsys.readouterr().err
