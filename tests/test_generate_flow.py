"""The generate and interpolate commands end to end: CLI → Prefect flow → files and artifacts."""

import json

import numpy as np
import pytest
from PIL import Image
from test_generate import subject_photos, tiny_prior

from flows.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread", "prefect_harness", "ray_local")]


def artifact(key: str):
    """The data of the latest artifact `key`, through the REST API (prefect 3.8.8's `read_artifacts` sends null
    filters that its server rejects with 422)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        body = {"artifacts": {"key": {"any_": [key]}}, "sort": "UPDATED_DESC", "limit": 1}
        (found,) = client.request("POST", "/artifacts/filter", json=body).json()
    return json.loads(found["data"]) if found["type"] == "table" else found["data"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate-flow")
    photos = subject_photos(root / "photos", 3, size=64)
    return {"root": root, "prior": tiny_prior(root / "prior"), "photos": photos}


def test_batch_writes_every_prompt_with_one_model_load(assets, capsys, monkeypatch):
    from lambda_eclipse import actor_pool

    pools, asked = [], []
    real_init, real_placement = actor_pool.ActorPool.__init__, actor_pool.placement

    def counted(self, stage, build, placement, log=None, start=True):
        real_init(self, stage, build, placement, log, start)
        pools.append((stage, len(self.actors), asked[-1], placement.gpus))

    def placed(gpus, cpus, actors, cluster):
        asked.append(gpus)
        return real_placement(gpus, cpus, actors, cluster)

    monkeypatch.setattr(actor_pool.ActorPool, "__init__", counted)
    monkeypatch.setattr(actor_pool, "placement", placed)
    dog, hat, cat = assets["photos"]
    batch = assets["root"] / "prompts.jsonl"
    lines = [
        {"prompt": "a dog wearing a hat", "subjects": {"dog": dog, "hat": hat}},
        {"prompt": "a cat and a dog", "subjects": [{"word": "cat", "image": "photos/photo_00002.jpg"}], "seed": 9,
         "num_images": 1},
    ]
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    output = assets["root"] / "out"
    argv = ["generate", "--batch", str(batch), "--prior", assets["prior"], "--steps", "2", "--num-images", "2",
            "--seed", "3", "--output", str(output)]
    assert main(argv) == 0
    assert "3 image(s) → " in capsys.readouterr().out
    # one model actor, loaded once; it asks for a GPU only where the cluster has one (this one has none)
    assert pools == [("generate", 1, 1.0, 0.0)]
    pngs = sorted(p.name for p in output.glob("*.png"))
    assert pngs == ["0000-a-dog-wearing-a-hat-0.png", "0000-a-dog-wearing-a-hat-1.png", "0001-a-cat-and-a-dog-0.png",
                    "contact_sheet.png"]
    meta = json.loads((output / "0001-a-cat-and-a-dog-0.json").read_text())
    assert meta["seed"] == 9 and meta["subjects"][0]["image"] == str(assets["root"] / "photos/photo_00002.jpg")
    assert [json.loads((output / f"0000-a-dog-wearing-a-hat-{k}.json").read_text())["seed"] for k in (0, 1)] == [3, 4]
    assert Image.open(output / "contact_sheet.png").size == (3 * 192, 192 + 30)
    assert artifact("generate-images").startswith("data:image/png;base64,")
    summary = artifact("generate-summary")
    assert "| a cat and a dog | cat | 9 |" in summary and "0000-a-dog-wearing-a-hat-1.png" in summary


def test_one_prompt_with_a_mask_and_canny(assets, tmp_path):
    dog, hat, _ = assets["photos"]
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    argv = ["generate", "--prompt", "A dog on the beach.", "--subject", f"dog={dog}:{tmp_path / 'mask.png'}",
            "--canny", hat, "--prior", assets["prior"], "--steps", "2", "--output", str(tmp_path / "out")]
    assert main(argv) == 0
    (png,) = (tmp_path / "out").glob("*.png")
    meta = json.loads(png.with_suffix(".json").read_text())
    assert meta["subjects"][0]["embedded"] == "mask" and meta["control"]["canny"] == hat
    assert meta["control"]["edge_map"]["size"] == 0  # a prior without training.json: the released code's way
    assert not (tmp_path / "out" / "contact_sheet.png").exists()


def test_interpolate_command_writes_one_grid(assets, tmp_path, capsys):
    dog1, dog2, hat = assets["photos"]
    argv = ["interpolate", "--prompt", "a dog wearing a hat", "--corners", f"dog={dog1},hat={hat}",
            f"dog={dog2},hat={hat}", "--steps", "3", "--inference-steps", "2", "--seed", "4", "--prior",
            assets["prior"], "--output", str(tmp_path)]
    assert main(argv) == 0
    assert "1×3 grid → " in capsys.readouterr().out
    assert Image.open(tmp_path / "interpolation.png").size == (3 * 64, 64)
    assert artifact("interpolate-grid").startswith("data:image/png;base64,")
    assert "corners (top-left, top-right" in artifact("interpolate-summary")


def wait_for_error_log(message: str, timeout: float = 120) -> list[str]:
    """The latest ERROR log messages of every run, once `message` is among them (logs reach the API in batches)."""
    import time

    from prefect import get_client

    body = {"logs": {"level": {"ge_": 40}}, "sort": "TIMESTAMP_DESC", "limit": 50}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            messages = [log["message"] for log in client.request("POST", "/logs/filter", json=body).json()]
            if message in messages or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)


def test_a_model_actor_failure_is_one_line_in_the_run_log_naming_the_actor(assets, tmp_path, capsys):
    """runtime.device=cuda on a machine without one: checked in the actor (the flow's node may have no GPU anyway),
    reported as one line naming the stage and actor, in the CLI's error and in the Prefect run log."""
    dog = assets["photos"][0]
    argv = ["generate", "--prompt", "a dog", "--subject", f"dog={dog}", "--prior", assets["prior"], "--steps", "2",
            "--set", "runtime.device=cuda", "--output", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = ("generate actor 0, loading its models: runtime.device=cuda, but no CUDA device is visible; use "
            "runtime.device=cpu")
    assert err.splitlines()[-1] == f"lambda-eclipse generate: error: {line}"
    assert line in wait_for_error_log(line)
    assert not list(tmp_path.glob("*.png"))


def test_the_command_logs_in_prefects_format(assets, tmp_path, prefect_api_url, ray_address):
    """In a process of its own, as a user runs it: open_clip's tokenizer logs through the root logger before the flow
    starts, which would install logging's default format (`INFO:prefect.flow_runs:…`) ahead of Prefect's."""
    import os
    import subprocess
    import sys

    env = os.environ | {"PREFECT_API_URL": prefect_api_url, "RAY_ADDRESS": ray_address}
    run = subprocess.run([sys.executable, "-m", "flows.cli", "generate", "--prompt", "a dog", "--prior",
                          str(assets["prior"]), "--steps", "2", "--output", str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert [line for line in lines if line.split(":")[0] in ("DEBUG", "INFO", "WARNING", "ERROR")] == []
    (begins,) = [line for line in lines if "Beginning flow run" in line]
    assert " | INFO    | Flow run " in begins, begins
