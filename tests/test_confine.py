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


def test_files_a_request_names_are_confined(roots, tmp_path):
    from storage.confine import confine_files

    data, _ = roots
    confine_files([("subject 'dog' image", str(data / "dog.jpg")), ("canny", None)])
    with pytest.raises(UserError) as caught:
        confine_files([("subject 'dog' image", str(data / "dog.jpg")), ("prompts.jsonl:2: canny", "/etc/hosts")])
    assert str(caught.value) == (f"prompts.jsonl:2: canny: '/etc/hosts' is outside this deployment's data roots "
                                 f"({data}, {data.parent / 'runs'}, s3://bucket/lambda, from {DATA_ROOTS}); name a "
                                 "file inside them")


def test_a_batch_entry_outside_the_roots_is_refused_before_anything_is_read(roots):
    from generate.plan import prepare
    from generate.requests import requests_from_args

    data, _ = roots
    batch = data / "prompts.jsonl"
    batch.write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "subjects": {"dog": "../../../../etc/hosts"}}\n')
    requests = requests_from_args(None, None, None, str(batch), 0, 1)
    with pytest.raises(UserError, match=rf"^{batch}:2: subject 'dog' image: '.*/etc/hosts' is outside this "
                                        r"deployment's data roots \(.*\); name a file inside them$"):
        prepare(requests, prior=str(data / "no-prior"), output=str(data / "out"))


def test_the_generate_flow_refuses_a_subject_photo_outside_the_roots(roots, prefect_harness):
    from flows.generate import generate

    data, _ = roots
    with pytest.raises(UserError, match=r"^subject 'dog' image: '/etc/hosts' is outside"):
        generate(prior=str(data / "prior"), output=str(data / "out"), prompt="a dog", subjects=["dog=/etc/hosts"],
                 canny=None)


def test_an_evaluation_photo_linked_out_of_the_roots_is_refused(roots, tmp_path):
    from evaluation.run import prepare_evaluation
    from lambda_eclipse.synthetic import write_photos

    data, runs = roots
    bench = data / "dreambench"
    write_photos(bench / "dog", 2, size=32)
    outside = tmp_path / "private.jpg"
    first = sorted((bench / "dog").iterdir())[0]
    outside.write_bytes(first.read_bytes())
    first.unlink()
    first.symlink_to(outside)
    with pytest.raises(UserError, match=r"^subject dog: '.*' is outside this deployment's data roots"):
        prepare_evaluation("dreambench", str(bench), str(runs / "prior"), str(runs / "eval"), profile="tiny",
                           overrides=["evaluate.max_prompts=1"])
