"""The metrics against hand-computed cosines, the DINO embedding, the benchmark prompts, and the results file."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.benchmarks import benchmark_prompts, fill, load_benchmarks
from evaluation.metrics import pairwise_similarity, subjects_similarity, text_similarity
from evaluation.results import Results, segmentation_failures, summarize
from lambda_eclipse.errors import UserError
from lambda_eclipse.models.dino import load_dino
from lambda_eclipse.synthetic import write_photos

BENCH = load_benchmarks()


def test_pairwise_similarity_is_the_mean_over_every_generated_real_pair():
    generated = np.array([[1.0, 0.0], [1.0, 1.0]])
    real = np.array([[1.0, 0.0], [0.0, 2.0]])
    # pairs: 1, 0, 1/√2, 1/√2
    assert pairwise_similarity(generated, real) == pytest.approx((1 + 0 + 2 / math.sqrt(2)) / 4)
    assert pairwise_similarity(5 * generated, 0.1 * real) == pytest.approx((1 + math.sqrt(2)) / 4)  # scale-free


def test_several_subjects_average_their_own_pairwise_similarity():
    generated = np.array([[1.0, 0.0], [0.0, 1.0]])
    dog = np.array([[1.0, 0.0]])  # cosines 1, 0 → 0.5
    hat = np.array([[-1.0, 0.0], [1.0, 1.0]])  # cosines -1, 1/√2, 0, 1/√2 → (√2 − 1)/4
    assert subjects_similarity(generated, [dog, hat]) == pytest.approx((0.5 + (math.sqrt(2) - 1) / 4) / 2)


def test_clip_t_is_the_mean_image_text_cosine():
    images = np.array([[3.0, 4.0], [0.0, 1.0]])
    text = np.array([0.0, 2.0])
    assert text_similarity(images, text) == pytest.approx((4 / 5 + 1) / 2)


def test_dino_embedding_is_the_cls_token_of_dinos_eval_transform():
    dino = load_dino("tiny", "", torch.device("cpu"), torch.float32)
    image = np.full((40, 60, 3), (255, 0, 51), np.uint8)
    pixels = dino.preprocess(image)
    assert pixels.shape == (3, 32, 32)  # shorter side to 32·256/224 ≈ 37, centre crop 32
    expected = (np.array([1.0, 0.0, 0.2]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(pixels[:, 16, 16].numpy(), expected, rtol=1e-5)
    other = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = dino.encode_images([image, other])
    with torch.no_grad():
        hidden = dino.model(pixel_values=torch.stack([dino.preprocess(image), dino.preprocess(other)]))
    np.testing.assert_allclose(out, hidden.last_hidden_state[:, 0].numpy(), rtol=1e-6)
    assert out.shape == (2, 32) and dino.model.pooler is None


def test_fill_records_each_words_span():
    prompt, spans = fill("{} and {} in the snow", ["dog", "stuffed animal"])
    assert prompt == "dog and stuffed animal in the snow"
    assert [prompt[a:b] for a, b in spans] == ["dog", "stuffed animal"]
    prompt, spans = fill("a {subject} wearing a santa hat", ["cat"])
    assert (prompt, spans) == ("a cat wearing a santa hat", [(2, 5)])


def _data(root: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        write_photos(root / name, 2, size=64, start=10 * i)
    return root


def test_dreambench_prompts_use_the_class_name_and_the_live_prompts(tmp_path):
    prompts = benchmark_prompts("dreambench", _data(tmp_path, ["bear_plushie", "dog"]), BENCH)
    assert len(prompts) == 50 and [p.index for p in prompts] == list(range(50))
    bear, dog = prompts[:25], prompts[25:]
    assert bear[0].prompt == "a stuffed animal in the jungle" and bear[0].id == "bear_plushie/00"
    assert bear[0].spans == ((2, 16),) and bear[10].prompt == "a stuffed animal with a wheat field in the background"
    assert dog[10].prompt == "a dog wearing a red hat"  # live subjects get the live-subject prompts
    assert {p.group for p in prompts} == {"single subject"}
    assert len(dog[0].subjects[0].photos) == 2


@pytest.mark.parametrize("names, benchmark, message", [
    (["dog", "my_teddy"], "dreambench", "--data folders ['my_teddy'] are not DreamBench subjects"),
    (["dog"], "multibench", "Multibench needs at least 2 subject folders in --data, found 1"),
    ([], "dreambench", "has no subject folders"),
])
def test_bad_data_folders(tmp_path, names, benchmark, message):
    with pytest.raises(UserError) as error:
        benchmark_prompts(benchmark, _data(tmp_path, names), BENCH)
    assert message in str(error.value)


def test_a_subject_folder_without_photos(tmp_path):
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("")
    with pytest.raises(UserError, match=r"subject folder .*/dog has no photos"):
        benchmark_prompts("dreambench", tmp_path, BENCH)


def test_results_drop_a_torn_last_row_and_summarize_per_group(tmp_path):
    results = Results(tmp_path / "per_prompt.csv")
    rows = [{"id": f"dog/{i:02d}", "group": "single subject", "prompt": "a dog", "subjects": "dog", "seed": 4 * i,
             "images": 4, "dino": d, "clip_i": 0.5, "clip_t": t, "segmentation": "segmented", "decoder": "base"}
            for i, (d, t) in enumerate([(0.6, 0.3), (0.8, 0.2)])]
    for row in rows:
        results.append(row)
    with open(results.path, "a") as f:
        f.write("dog/02,single subject,a dog,dog,8,4,0.7,0.5,0.2,segmented")  # killed mid-write
    read = results.read()
    assert [r["id"] for r in read] == ["dog/00", "dog/01"]
    assert results.path.read_text().count("\n") == 3  # rewritten without the torn row
    (summary,) = summarize(read, ("single subject",))
    assert summary == {"group": "single subject", "prompts": 2, "images": 8, "dino": 0.7, "clip_i": 0.5,
                       "clip_t": 0.25}


def test_segmentation_failures_are_counted_per_subject():
    rows = [{"segmentation": s} for s in ("segmented", "no box: dog", "no box: hat+dog", "off", "no box: hat")]
    assert segmentation_failures(rows) == {"dog": 2, "hat": 2}
    assert segmentation_failures(rows[:1]) == {}


def test_the_evaluation_clip_is_not_the_conditioning_one_unless_asked():
    from evaluation.config import load_eval_config
    from evaluation.encoders import describe, load_eval_clip
    from lambda_eclipse.config import ModelsSection
    from lambda_eclipse.models.clip import load_clip

    cpu = torch.device("cpu")
    conditioning = load_clip("tiny", ModelsSection(), cpu, torch.float32)
    cfg = load_eval_config()
    own = load_eval_clip("tiny", cfg, conditioning, cpu, torch.float32)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert own is not conditioning and own.embed_dim == 24 and conditioning.embed_dim == 32
    assert own.encode_images([image]).shape == (1, 24) and own.encode_text(["a dog"])[1].shape == (1, 24)
    assert own.model_id == describe("tiny", cfg)["clip"]
    assert describe("paper", cfg) == {"dino": "DINO ViT-S/16 facebook/dino-vits16",
                                      "clip": "OpenCLIP ViT-B-32-quickgelu:openai, not the conditioning encoder"}
    same = load_eval_config(overrides=["evaluate.clip_model=conditioning"])
    assert load_eval_clip("tiny", same, conditioning, cpu, torch.float32) is conditioning
    assert describe("paper", same)["clip"] == ("OpenCLIP ViT-bigG-14:laion2b_s39b_b160k, the generator's own "
                                               "conditioning encoder")


def test_the_summary_names_the_encoders_labels_the_reported_rows_and_the_segmentation():
    from evaluation.results import summary_markdown

    summary = [{"group": "two subjects", "prompts": 3, "images": 12, "dino": 0.5, "clip_i": 0.7, "clip_t": 0.3}]
    encoders = {"dino": "DINO ViT-S/16 facebook/dino-vits16", "clip": "OpenCLIP ViT-B-32-quickgelu:openai"}
    text = summary_markdown("Multibench", summary, 5, "note.", encoders, {}, segment=False)
    assert ("Encoders: DINO — DINO ViT-S/16 facebook/dino-vits16; CLIP-I and CLIP-T — OpenCLIP ViT-B-32-quickgelu:"
            "openai." in text)
    assert "| λ-ECLIPSE, this run: two subjects | 3 | 12 | 0.5000 | 0.7000 | 0.3000 |" in text
    assert "| λ-ECLIPSE, reported (paper): two subjects | | | 0.4478 | 0.7409 | 0.3327 |" in text
    assert text.endswith("Off (evaluate.segment=false): every reference photo was embedded whole.")
    found = summary_markdown("Multibench", summary, 5, "note.", encoders, {}, segment=True)
    assert found.endswith("Grounding DINO found the subject in every reference photo used.")
    failed = summary_markdown("Multibench", summary, 5, "note.", encoders, {"dog": 3}, segment=True)
    assert failed.endswith("(not segmented) in these prompts:\n\n| subject | prompts |\n|---|---:|\n| dog | 3 |")
