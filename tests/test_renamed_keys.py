"""One name per idea: the keys renamed from `workers` (runtime.ray_cpus: the local Ray's CPUs; runtime.trainers;
runtime.cpus_per_trainer; runtime.cpus_per_actor; data.loader_workers) still work by their old names for a release,
each with a one-line warning naming the new key; --help shows only the new names."""

import subprocess
import sys

import pytest

from lambda_eclipse.config import Deprecated

DEFAULT_HASH = "d14b838ae832c325"  # the default dataset config hash before the rename


def _deprecated(old: str, new: str):
    return pytest.warns(Deprecated, match=rf"^config key '{old}' is deprecated and goes in the next release; "
                                          rf"set '{new}' instead$")


def test_build_dataset_s_old_key_sets_the_new_one_and_leaves_the_dataset_hash(tmp_path):
    from tasks.config import load_build_config
    from tasks.plan import prepare_build

    with _deprecated("runtime.workers", "runtime.ray_cpus"):
        old = load_build_config(overrides=["runtime.workers=3"])
    assert old.runtime.ray_cpus == 3
    assert old.content_hash() == load_build_config(overrides=["runtime.ray_cpus=3"]).content_hash() == DEFAULT_HASH
    config = tmp_path / "build.yaml"
    config.write_text("runtime:\n  workers: 2\n")
    with _deprecated("runtime.workers", "runtime.ray_cpus"):
        assert load_build_config(config).runtime.ray_cpus == 2
    (tmp_path / "in").mkdir()  # a flow's `overrides` parameter goes through the same loader
    from lambda_eclipse.synthetic import write_photos

    write_photos(tmp_path / "in", 1, size=96)
    with _deprecated("runtime.workers", "runtime.ray_cpus"):
        plan = prepare_build([str(tmp_path / "in")], str(tmp_path / "out"), overrides=["runtime.workers=1"])
    assert plan.cfg.runtime.ray_cpus == 1 and "workers" not in plan.cfg.to_dict()["runtime"]


def test_generate_s_old_keys():
    from generate.config import load_generate_config

    with _deprecated("runtime.cpus", "runtime.cpus_per_actor"), _deprecated("runtime.workers", "runtime.ray_cpus"):
        cfg = load_generate_config(None, ["runtime.cpus=2", "runtime.workers=3"])
    assert (cfg.runtime.cpus_per_actor, cfg.runtime.ray_cpus) == (2, 3)


def test_train_prior_s_and_finetune_decoder_s_old_keys():
    from finetune.config import load_finetune_config
    from prior.config import load_train_config

    with (_deprecated("runtime.workers", "runtime.trainers"), _deprecated("data.workers", "data.loader_workers"),
          _deprecated("runtime.cpus_per_worker", "runtime.cpus_per_trainer")):
        cfg = load_train_config(None, ["runtime.workers=2", "data.workers=0", "runtime.cpus_per_worker=3"])
    assert (cfg.runtime.trainers, cfg.data.loader_workers, cfg.runtime.cpus_per_trainer) == (2, 0, 3)
    with _deprecated("runtime.cpus", "runtime.cpus_per_trainer"), _deprecated("runtime.workers", "runtime.ray_cpus"):
        tuned = load_finetune_config(None, ["runtime.cpus=2", "runtime.workers=3"])
    assert (tuned.runtime.cpus_per_trainer, tuned.runtime.ray_cpus) == (2, 3)


def test_an_unknown_key_still_names_the_valid_ones():
    from lambda_eclipse.errors import UserError
    from tasks.config import load_build_config

    with pytest.raises(UserError, match=r"unknown config key 'runtime.cpus'; valid keys in runtime: device, dtype, "
                                        r"ray_cpus, gpus"):
        load_build_config(overrides=["runtime.cpus=2"])


def test_the_old_flag_warns_in_one_line_and_works(tmp_path):
    from lambda_eclipse.synthetic import write_photos

    write_photos(tmp_path / "in", 1, size=96)
    run = subprocess.run([sys.executable, "-m", "flows.cli", "build-dataset", "--input", str(tmp_path / "in"),
                          "--output", str(tmp_path / "out"), "--workers", "2", "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().splitlines() == [
        "lambda-eclipse: warning: --workers is deprecated and goes in the next release; use --ray-cpus instead"]
    assert "1 units to build" in run.stdout or "shard 00000" in run.stdout


def test_no_command_s_help_shows_an_old_name():
    from flows.cli import parser

    top = parser()
    commands = next(a for a in top._actions if a.dest == "command").choices  # argparse keeps subparsers there
    assert isinstance(commands, dict) and len(commands) >= 9
    for name, command in commands.items():
        text = command.format_help()
        for old in ("runtime.workers", "data.workers", "cpus_per_worker", "--workers", "runtime.cpus="):
            assert old not in text, f"{name} --help mentions {old}"
