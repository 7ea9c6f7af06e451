"""The CLI fails fast, in one line, naming the problem and the fix, before any work starts."""

import os
import subprocess
import sys

import pytest

from flows.cli import main, parser
from lambda_eclipse.synthetic import write_photos


@pytest.fixture
def photos(tmp_path):
    write_photos(tmp_path / "in", 1, size=64)
    return str(tmp_path / "in")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "/nonexistent/photos"], "input /nonexistent/photos does not exist"),
        (["--set", "resolution.size=3"], "unknown config key 'resolution.size'"),
        (["--set", "boxes.min_logit=high"], "boxes.min_logit: 'high' is not a valid float"),
        (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
        (["--gpus-per-stage", "decode=1"],
         "unknown stage 'decode'; model stages are caption, nouns, boxes, masks, features"),
        (["--gpus-per-stage", "masks"], "expected STAGE=FRACTION"),
        (["--ray-cpus", "-1"], "--ray-cpus must be 0"),
        (["--set", "runtime.actors.sam=2"], "runtime.actors must name model stages (caption, nouns, boxes, masks, "
                                            "features)"),
        (["--set", "runtime.units_in_flight=-1"], "runtime.units_in_flight must be ≥ 0 (0: automatic) (got -1)"),
        (["--profile", "paper", "--set", "models.sam_checkpoint=/nowhere/sam.pth"],
         "weights missing for --profile paper: BLIP-2 models.blip2=Salesforce/blip2-flan-t5-xl; "),
        (["--profile", "paper", "--set", "models.sam_checkpoint=/nowhere/sam.pth"],
         "SAM models.sam_checkpoint=/nowhere/sam.pth (the official sam_vit_h_4b8939.pth)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(photos, tmp_path, capsys, args, message):
    argv = ["build-dataset", "--output", str(tmp_path / "out"), "--input", photos] + args
    if args[0] == "--input":
        argv = ["build-dataset", "--output", str(tmp_path / "out")] + args
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-eclipse build-dataset: error: ") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_unwritable_output(photos, tmp_path, capsys):
    if os.geteuid() == 0:
        target = "/proc/lambda-eclipse-out"  # root may write anywhere else
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "out")
    assert main(["build-dataset", "--input", photos, "--output", target]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_unknown_profile_is_rejected_by_the_parser(photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["build-dataset", "--input", photos, "--output", str(tmp_path), "--profile", "huge"])
    assert exc.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_help_lists_every_config_key_with_its_default():
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "build-dataset", "--help"],
        capture_output=True, text=True, check=True,
    )
    for key in ("resolution.min_side=1024", "boxes.box_threshold=0.2", "masks.min_mask_ratio=0.4",
                "subjects.max_subjects=4"):
        assert key in result.stdout


HEAVY = ("torch", "ray", "prefect", "transformers", "webdataset")


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["build-dataset", "--help"], ["build-dataset", "--input", "/nonexistent", "--output", "/tmp/x"],
     ["build-dataset", "--input", "{photos}", "--output", "{out}", "--dry-run"]],
)
def test_help_errors_and_dry_run_import_nothing_heavy(argv, photos, tmp_path):
    """They answer at once: torch, Ray and Prefect are imported only by the commands that run work."""
    argv = [a.format(photos=photos, out=tmp_path / "out") for a in argv]
    code = (
        "import sys\nfrom flows.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout + run.stderr
