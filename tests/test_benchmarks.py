"""Benchmark prompts: Multibench's role-aware prompts (paper Appendix F, Tables 8 and 9) and the bundled file."""

import json
from pathlib import Path

import pytest

from evaluation.benchmarks import BUNDLED, benchmark_prompts, load_benchmarks, multibench_candidates, read_subjects
from lambda_eclipse.errors import UserError

BENCH = load_benchmarks()
EXTRAS = ["bird", "horse", "guinea_pig", "hat", "park", "ruins", "castle", "desert", "hill", "church", "tower",
          "rainbow", "boat", "guitar", "french_horn", "robot"]  # Table 9's categories that DreamBench lacks


def _data(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).mkdir()
        (root / name / "0.png").write_bytes(b"")  # prompts read folder and file names, not pixels
    return root


def test_slots_take_only_subjects_of_their_role(tmp_path):
    prompts = benchmark_prompts("multibench", _data(tmp_path, ["dog", "cat", "hat", "park"]), BENCH)
    together = ["playing in the garden", "on top of the mountain", "in the jungle", "in the snow", "on the beach",
                "on a cobblestone street", "standing next to each other"]
    assert [p.prompt for p in prompts] == [
        "cat in the park", "dog in the park", "cat wearing a hat", "dog wearing a hat", "cat chasing a dog",
        "dog chasing a cat", *(f"cat and dog {place}" for place in together),  # unordered: no "dog and cat …"
    ]  # no object or landmark folder: no three-subject prompt
    assert [p.index for p in prompts] == list(range(13)) and {p.group for p in prompts} == {"two subjects"}
    assert prompts[2].id == "2/01/cat+hat" and [prompts[2].prompt[a:b] for a, b in prompts[2].spans] == ["cat", "hat"]


def test_no_subject_fills_a_slot_it_does_not_fit(tmp_path):
    prompts = benchmark_prompts("multibench", _data(tmp_path, [*BENCH["dreambench"]["subjects"], *EXTRAS]), BENCH)
    roles = BENCH["multibench"]["roles"]
    texts = {p.prompt for p in prompts}
    assert "dog wearing a dog" not in texts and "dog and dog in the snow" not in texts
    for p in prompts:
        words = [s.word for s in p.subjects]
        assert len(set(words)) == len(words)  # never one word twice
        assert words[0] in roles["subject"]  # a living subject (or a toy, a stuffed animal) first
        if " wearing a " in p.prompt:
            assert words[1] in roles["wearable"]
        if p.prompt.startswith(f"{words[0]} in the "):
            assert words[1] in roles["place"]
    assert {p.group for p in prompts} == {"two subjects", "three subjects"}


def test_paper_counts_are_met_and_stable(tmp_path):
    # DreamBench's 30 folders, one folder per Table 9 category it lacks, a second bird, horse and guinea pig
    names = [*BENCH["dreambench"]["subjects"], *EXTRAS, "bird_2", "horse_2", "guinea_pig_2"]
    data = _data(tmp_path, names)
    candidates = multibench_candidates(read_subjects(data, BENCH["dreambench"]), BENCH)
    assert len(candidates["two subjects"]) == 990 and len(candidates["three subjects"]) == 18104
    prompts = benchmark_prompts("multibench", data, BENCH)
    groups = [p.group for p in prompts]
    assert (groups.count("two subjects"), groups.count("three subjects")) == (904, 1476)
    assert groups == sorted(groups, key=["two subjects", "three subjects"].index)  # two-subject prompts first
    assert len({p.id for p in prompts}) == len(prompts) and [p.index for p in prompts] == list(range(2380))
    assert [p.id for p in benchmark_prompts("multibench", data, BENCH)] == [p.id for p in prompts]  # fixed seed
    bird2 = next(p for p in prompts if "bird_2" in p.id)
    assert "bird" in bird2.prompt  # a trailing number is not part of the word


def test_fewer_candidates_than_the_paper_keeps_them_all(tmp_path):
    data = _data(tmp_path, list(BENCH["dreambench"]["subjects"]))
    prompts = benchmark_prompts("multibench", data, BENCH)
    groups = [p.group for p in prompts]
    assert (groups.count("two subjects"), groups.count("three subjects")) == (162, 1476)


def test_a_folder_without_a_role_is_named(tmp_path):
    with pytest.raises(UserError, match=r"--data folders \['my_teapot_collection'\] are no Multibench category"):
        benchmark_prompts("multibench", _data(tmp_path, ["dog", "my_teapot_collection"]), BENCH)


def test_folders_no_template_fits(tmp_path):
    with pytest.raises(UserError, match=r"no Multibench prompt fits the --data folders \['hat', 'park'\]"):
        benchmark_prompts("multibench", _data(tmp_path, ["hat", "park"]), BENCH)


def test_a_benchmarks_file_without_roles(tmp_path):
    bench = json.loads(BUNDLED.read_text())
    del bench["multibench"]["roles"]
    with pytest.raises(UserError, match="multibench section lacks roles"):
        benchmark_prompts("multibench", _data(tmp_path, ["dog", "cat"]), bench)
    bench = json.loads(BUNDLED.read_text())
    bench["multibench"]["slots"]["{} in the {}"] = ["living"]
    with pytest.raises(UserError, match=r"template '\{\} in the \{\}' needs slots: one role per placeholder"):
        benchmark_prompts("multibench", tmp_path, bench)
    bench["multibench"]["slots"]["{} in the {}"] = ["living", "planet"]
    with pytest.raises(UserError, match=r"unknown roles \['planet'\]"):
        benchmark_prompts("multibench", tmp_path, bench)


def test_bundled_benchmarks_extend_the_reference():
    """tests/data/reference_benchmarks.json: the benchmark prompts as the project was specified with them (DreamBench's
    and Multibench's tables); the bundled file adds the roles of each template's slots."""
    reference = Path(__file__).parent / "data" / "reference_benchmarks.json"
    ours, theirs = json.loads(BUNDLED.read_text()), json.loads(reference.read_text())
    assert ours["dreambench"] == theirs["dreambench"]
    assert {k: v for k, v in ours["multibench"].items() if k in theirs["multibench"]} == theirs["multibench"]
    assert set(ours["multibench"]["slots"]) == {*theirs["multibench"]["two_subject_templates"],
                                               *theirs["multibench"]["three_subject_templates"]}
