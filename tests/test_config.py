import pytest

from lambda_eclipse.config import BuildConfig, check_profile, load_config
from lambda_eclipse.errors import UserError


def test_defaults_are_the_papers_values():
    cfg = BuildConfig()
    assert cfg.resolution.min_side == 1024
    assert (cfg.white_background.threshold, cfg.white_background.max_fraction) == (0.9, 0.10)
    assert (cfg.boxes.box_threshold, cfg.boxes.text_threshold) == (0.2, 0.2)
    assert (cfg.boxes.min_boxes, cfg.boxes.max_boxes, cfg.boxes.max_identical) == (1, 8, 6)
    assert (cfg.boxes.min_area_ratio, cfg.boxes.max_area_ratio) == (0.08, 0.7)
    assert (cfg.boxes.min_aspect, cfg.boxes.max_aspect, cfg.boxes.min_logit) == (0.3, 3.0, 0.3)
    assert (cfg.masks.min_mask_ratio, cfg.masks.max_containment) == (0.4, 0.8)
    assert (cfg.subjects.min_subjects, cfg.subjects.max_subjects, cfg.subjects.crop_size) == (1, 4, 224)
    assert (cfg.edge.low_threshold, cfg.edge.high_threshold) == (100, 200)
    assert cfg.split.train_fraction == 0.8


def test_yaml_then_set_overrides_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("resolution:\n  min_side: 512\nboxes:\n  min_logit: 0.25\n")
    cfg = load_config(path, ["resolution.min_side=256", "input.extensions=.png,.jpg"])
    assert cfg.resolution.min_side == 256 and isinstance(cfg.resolution.min_side, int)
    assert cfg.boxes.min_logit == 0.25
    assert cfg.input.extensions == (".png", ".jpg")


def test_content_hash_tracks_content_not_runtime():
    base = load_config()
    assert load_config(overrides=["runtime.actors=3"]).content_hash() == base.content_hash()
    assert load_config(overrides=["boxes.min_logit=0.31"]).content_hash() != base.content_hash()


@pytest.mark.parametrize(
    "override, message",
    [
        ("foo.x=1", "unknown config section 'foo'"),
        ("resolution.size=2", "unknown config key 'resolution.size'; valid keys in resolution: min_side"),
        ("resolution.min_side=abc", "resolution.min_side: 'abc' is not a valid int"),
        ("resolution.min_side=2.5", "resolution.min_side: 2.5 is not a valid int"),
        ("nodot=1", "expected section.key=value"),
        ("resolution.min_side", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(overrides=[override])


def test_bad_config_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolution: [1, 2")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("resolution: 3\n")
    with pytest.raises(UserError, match="section 'resolution' must be a mapping"):
        load_config(bad)


def test_unknown_profile():
    assert check_profile("tiny") == "tiny"
    with pytest.raises(UserError, match="unknown profile 'huge'; choose one of: tiny, paper, paper-shapes"):
        check_profile("huge")
