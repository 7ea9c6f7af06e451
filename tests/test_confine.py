"""A deployment's path parameters stay inside its data roots (LAMBDA_ECLIPSE_DATA_ROOTS)."""

import pytest

from lambda_eclipse.errors import UserError
from storage.confine import DATA_ROOTS, confine


@pytest.fixture
def roots(tmp_path, monkeypatch):
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    runs.mkdir()
    monkeypatch.setenv(DATA_ROOTS, ",".join([str(data), str(runs), "s3://bucket/lambda"]))
    return data, runs


def test_paths_inside_the_roots_pass(roots):
    data, runs = roots
    confine(inputs=[str(data / "in"), str(data)], output=str(runs / "prior"), config_file=None)
    confine(data="s3://bucket/lambda/dataset", output=f"{data}/a/../b")


@pytest.mark.parametrize(
    "parameter, value",
    [
        ("output", "{data}/../../etc"),
        ("inputs", ["{data}/in", "/etc/passwd"]),
        ("data", "{data}-other/x"),  # a sibling that shares the root's prefix
        ("data", "s3://bucket/lambda/../secrets"),
        ("data", "s3://bucket/lambdax"),
        ("data", "relative/path"),
    ],
)
def test_paths_outside_are_refused_naming_the_parameter(roots, parameter, value):
    data, _ = roots
    value = [v.format(data=data) for v in value] if isinstance(value, list) else value.format(data=data)
    with pytest.raises(UserError) as caught:
        confine(**{parameter: value})
    message = str(caught.value)
    assert message.startswith(f"{parameter}=") and "outside this deployment's data roots" in message
    assert DATA_ROOTS in message and "\n" not in message


def test_a_symlink_out_of_a_root_is_outside(roots, tmp_path):
    data, _ = roots
    (data / "escape").symlink_to(tmp_path)
    with pytest.raises(UserError, match="outside this deployment's data roots"):
        confine(output=str(data / "escape" / "elsewhere"))


def test_without_roots_nothing_is_confined(monkeypatch):
    monkeypatch.delenv(DATA_ROOTS, raising=False)
    confine(output="/etc", data="../../x")


def test_the_validate_flow_refuses_an_escaping_path(roots, prefect_harness):
    from flows.validate_dataset import validate_dataset

    data, _ = roots
    with pytest.raises(UserError, match=r"^data='.*/\.\./\.\./etc' is outside"):
        validate_dataset(data=f"{data}/../../etc")
