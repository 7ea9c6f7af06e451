import pytest

from lambda_eclipse.errors import UserError
from lambda_eclipse.profile import Profile
from tasks.config import BuildConfig, load_build_config


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
    cfg = load_build_config(path, ["resolution.min_side=256", "input.extensions=.png,.jpg"])
    assert cfg.resolution.min_side == 256 and isinstance(cfg.resolution.min_side, int)
    assert cfg.boxes.min_logit == 0.25
    assert cfg.input.extensions == (".png", ".jpg")


def test_the_default_config_hash_is_the_one_existing_datasets_were_built_with():
    """Moving the sections (tasks/config.py) and building stages from them must not invalidate existing datasets."""
    assert BuildConfig().content_hash() == "d14b838ae832c325"


def test_each_stage_is_built_from_its_own_sections():
    from tasks.box_filters import BoxFilters
    from tasks.features import ClipFeatures

    cfg = load_build_config(overrides=["boxes.max_boxes=5", "subjects.min_subjects=2", "features.batch_size=7"])
    filters = BoxFilters.from_config(cfg)
    assert filters.boxes is cfg.boxes and filters.boxes.max_boxes == 5
    features = ClipFeatures.from_config(cfg, "paper-shapes")  # nothing loads until setup()
    assert (features.subjects.min_subjects, features.batch_size, features.profile) == (2, 7, "paper-shapes")
    assert not hasattr(features, "clip")
    assert set(vars(features)) == {"profile", "models", "runtime", "features", "subjects"}


def test_content_hash_tracks_content_not_runtime():
    base = load_build_config()
    placed = load_build_config(overrides=["runtime.actors.masks=3", "runtime.gpus.masks=0.5", "masks.batch_size=2"])
    assert placed.runtime.actors == {"masks": 3} and placed.runtime.gpus == {"masks": 0.5}
    assert placed.content_hash() == base.content_hash()  # placement and batch sizes do not change the dataset
    assert load_build_config(overrides=["boxes.min_logit=0.31"]).content_hash() != base.content_hash()


@pytest.mark.parametrize(
    "override, message",
    [
        ("foo.x=1", "unknown config section 'foo'"),
        ("resolution.size=2", "unknown config key 'resolution.size'; valid keys in resolution: min_side"),
        ("resolution.min_side=abc", "resolution.min_side: 'abc' is not a valid int"),
        ("resolution.min_side=2.5", "resolution.min_side: 2.5 is not a valid int"),
        ("nodot=1", "expected section.key=value"),
        ("resolution.min_side", "expected section.key=value"),
        ("runtime.actors=3", "runtime.actors: 3 is not a valid dict"),
        ("runtime.actors.masks=two", "runtime.actors.masks: {'masks': 'two'} is not a valid dict"),
        ("resolution.min_side.x=2", "config key 'resolution.min_side' is not a mapping"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_build_config(overrides=[override])


def test_bad_config_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_build_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolution: [1, 2")
    with pytest.raises(UserError, match="not valid YAML"):
        load_build_config(bad)
    bad.write_text("resolution: 3\n")
    with pytest.raises(UserError, match="section 'resolution' must be a mapping"):
        load_build_config(bad)


def test_unknown_profile():
    assert Profile.parse("tiny") is Profile.TINY
    with pytest.raises(UserError, match="unknown profile 'huge'; choose one of: tiny, paper, paper-shapes"):
        Profile.parse("huge")


def test_a_resolved_config_round_trips_through_a_dict():
    from tasks.config import build_config_from_dict

    cfg = load_build_config(overrides=["input.extensions=.png", "runtime.actors.masks=2", "boxes.min_logit=0.4"])
    again = build_config_from_dict(cfg.to_dict())
    assert again == cfg and again.content_hash() == cfg.content_hash()
