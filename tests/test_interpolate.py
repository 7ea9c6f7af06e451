"""Interpolation grids (paper Fig. 7): bilinear weights, exact corners, the grid image, and bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_generate import subject_photos, tiny_prior

from flows.cli import main
from generate.interpolate import bilinear_weights, interpolate, render_grid
from generate.pipeline import Generator
from generate.plan import prepare
from generate.requests import corner_requests
from lambda_eclipse.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_four_corner_weights_are_bilinear():
    w = bilinear_weights(4, 3)
    assert w.shape == (3, 3, 4)
    np.testing.assert_array_equal(w[0, 0], [1, 0, 0, 0])
    np.testing.assert_array_equal(w[0, 2], [0, 1, 0, 0])
    np.testing.assert_array_equal(w[2, 0], [0, 0, 1, 0])
    np.testing.assert_array_equal(w[2, 2], [0, 0, 0, 1])
    np.testing.assert_allclose(w[1, 1], [0.25] * 4)
    np.testing.assert_allclose(w[0, 1], [0.5, 0.5, 0, 0])  # top edge: between the top corners only
    np.testing.assert_allclose(w[1, 0], [0.5, 0, 0.5, 0])  # left edge: between the left corners only
    np.testing.assert_allclose(w.sum(-1), 1)


def test_two_corner_weights_are_one_row():
    w = bilinear_weights(2, 5)
    assert w.shape == (1, 5, 2)
    np.testing.assert_allclose(w[0, :, 1], [0, 0.25, 0.5, 0.75, 1])


def test_corner_cells_are_the_corner_embeddings_exactly():
    corners = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    cells = interpolate(corners, bilinear_weights(4, 4))
    for (r, c), k in {(0, 0): 0, (0, 3): 1, (3, 0): 2, (3, 3): 3}.items():
        assert torch.equal(cells[r, c], corners[k])
    torch.testing.assert_close(cells[1, 2], (2 / 9) * corners[0] + (4 / 9) * corners[1] + (1 / 9) * corners[2]
                               + (2 / 9) * corners[3])


@pytest.mark.parametrize("corners, steps, message", [
    (3, 4, "--corners takes 2 or 4 concept sets"),
    (4, 1, "--steps must be ≥ 2"),
])
def test_bad_grids(corners, steps, message):
    with pytest.raises(UserError, match=message):
        bilinear_weights(corners, steps)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("interpolate")
    dog1, dog2, hat1, hat2 = subject_photos(root / "photos", 4, size=64)
    prior = tiny_prior(root / "prior")
    corners = [f"dog={dog1},hat={hat1}", f"dog={dog2},hat={hat1}", f"dog={dog1},hat={hat2}", f"dog={dog2},hat={hat2}"]
    plan = prepare(corner_requests(["a dog wearing a hat"], corners, seed=7), prior, str(root / "out"), steps=2)
    generator = Generator(plan.profile, plan.cfg, plan.prior)
    metadata = render_grid(generator, plan.jobs, 3, 7, plan.settings, plan.output)
    return plan, generator, metadata


def test_grid_corners_are_the_endpoint_embeddings(grid_run):
    plan, generator, _ = grid_run
    cells = np.load(plan.output / "embeddings.npy")
    assert cells.shape == (3, 3, 32)
    for (r, c), job in zip([(0, 0), (0, 2), (2, 0), (2, 2)], plan.jobs):
        np.testing.assert_array_equal(cells[r, c], generator.predict(job, [7])[0].numpy())
    assert not np.allclose(cells[0, 0], cells[2, 2])


def test_grid_image_holds_every_cell_rendered_with_the_same_seed(grid_run):
    plan, generator, metadata = grid_run
    grid = np.asarray(Image.open(plan.output / "interpolation.png"))
    assert grid.shape == (3 * 64, 3 * 64, 3)
    assert (metadata["rows"], metadata["columns"], metadata["seed"]) == (3, 3, 7)
    assert [c["subjects"][0]["image"] for c in metadata["corners"]] == [j.subjects[0].spec.image for j in plan.jobs]
    corner = generator.predict(plan.jobs[3], [7])
    (alone,) = generator.render(corner, [7], plan.settings)
    # bottom-right cell: the last corner, rendered alone with the seed (batching may move a pixel by a level)
    assert np.abs(grid[128:, 128:].astype(int) - alone.astype(int)).max() <= 1
    assert json.loads((plan.output / "interpolation.json").read_text())["weights"][1][1] == [0.25] * 4


def test_two_corners_give_one_row(tmp_path):
    dog1, dog2 = subject_photos(tmp_path / "photos", 2, size=64)
    plan = prepare(corner_requests(["a dog"], [f"dog={dog1}", f"dog={dog2}"], seed=0), tiny_prior(tmp_path / "p"),
                   str(tmp_path / "out"), steps=1)
    render_grid(Generator(plan.profile, plan.cfg, plan.prior), plan.jobs, 4, 0, plan.settings, plan.output)
    assert Image.open(plan.output / "interpolation.png").size == (4 * 64, 64)
    assert np.load(plan.output / "embeddings.npy").shape == (1, 4, 32)


@pytest.mark.parametrize("extra, message", [
    (["--corners", "dog={p}", "dog={p}", "dog={p}"], "--corners takes 2 or 4 concept sets (the ends of a row, or the "
                                                     "corners of a square), got 3"),
    (["--corners", "dog={p}", "dog={p}", "--steps", "1"], "--steps must be ≥ 2"),
    (["--corners", "dog={p}", "cat={p}"], "corner 2: subject word 'cat' is not in the prompt 'a dog'"),
    (["--corners", "dog={p}", "dog=/nowhere.png"], "corner 2: subject 'dog': image /nowhere.png does not exist"),
    (["--corners", "dog={p}", "dog={p}", "--prompt", "a dog", "--prompt", "a dog", "--prompt", "a dog"],
     "give one --prompt for all corners or one per corner (2), got 4"),
])
def test_bad_interpolation_input(tmp_path, capsys, extra, message):
    (photo,) = subject_photos(tmp_path / "photos", 1, size=64)
    argv = ["interpolate", "--prompt", "a dog", "--prior", tiny_prior(tmp_path / "prior"), "--output",
            str(tmp_path / "out")]
    assert main(argv + [a.format(p=photo) for a in extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-eclipse interpolate: error: ") and message.format(p=photo) in err, err


def test_interpolate_guides_at_4_as_the_released_script_and_generate_at_7_5():
    import argparse
    import inspect

    from flows.commands.generate import add_parsers
    from flows.generate import generate, interpolate

    top = argparse.ArgumentParser(prog="lambda-eclipse")
    add_parsers(top.add_subparsers(dest="command"))
    corners = ["--corners", "dog=a.png", "dog=b.png", "--prompt", "a dog", "--output", "out"]
    assert top.parse_args(["interpolate", *corners]).guidance == 4.0
    assert top.parse_args(["generate", "--prompt", "a dog", "--output", "out"]).guidance == 7.5
    # the flows' own defaults (deployments and Python callers) are the same
    assert inspect.signature(interpolate.fn).parameters["guidance"].default == 4.0
    assert inspect.signature(generate.fn).parameters["guidance"].default == 7.5
