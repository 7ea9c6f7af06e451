import io
import json
import tarfile

import pytest

from lambda_eclipse.errors import UserError
from lambda_eclipse.storage.sources import plan_units, sample_key
from lambda_eclipse.synthetic import photo

EXT = (".jpg", ".png")


def _jpeg(seed=0) -> bytes:
    buf = io.BytesIO()
    photo(seed, 32, 24).save(buf, format="JPEG")
    return buf.getvalue()


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_folder_is_searched_recursively_sorted_and_chunked(tmp_path):
    for rel in ["b/2.jpg", "a/1.PNG", "c.jpg", "a/z/3.jpg", "notes.txt", "d.gif"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    units, skipped = plan_units([str(tmp_path)], unit_size=2, extensions=EXT)
    names = [s.source.removeprefix(str(tmp_path) + "/") for u in units for s in u.samples]
    assert names == ["a/1.PNG", "a/z/3.jpg", "b/2.jpg", "c.jpg"]
    assert [u.shard for u in units] == [0, 1]
    assert [len(u.samples) for u in units] == [2, 2]
    assert skipped == 2  # notes.txt and d.gif are not in EXT: counted, not silently lost
    assert all(s.key == sample_key(s.source) and "." not in s.key for u in units for s in u.samples)


def test_tar_members_are_indexed_by_key_with_captions_and_byte_ranges(tmp_path):
    jpg0, jpg1 = _jpeg(0), _jpeg(1)
    _tar(
        tmp_path / "00000.tar",
        {
            "000000000.jpg": jpg0,
            "000000000.txt": b"a dog on a beach",
            "000000001.jpg": jpg1,
            "000000001.json": json.dumps({"caption": "a cat"}).encode(),
            "000000002.txt": b"caption without an image",
        },
    )
    units, _ = plan_units([str(tmp_path / "00000.tar")], 1000, EXT)
    (unit,) = units
    assert unit.description == f"tar {tmp_path / '00000.tar'}"
    assert [s.source_caption for s in unit.samples] == ["a dog on a beach", "a cat"]
    assert unit.samples[0].ref.read() == jpg0 and unit.samples[1].ref.read() == jpg1
    assert unit.samples[0].source.endswith("00000.tar#000000000.jpg")


def test_folder_of_tars_is_one_unit_per_tar(tmp_path):
    for i in range(3):
        _tar(tmp_path / f"{i:05d}.tar", {f"{i}.jpg": _jpeg(i)})
    units, _ = plan_units([str(tmp_path)], 1000, EXT)
    assert [u.description.split("/")[-1] for u in units] == ["00000.tar", "00001.tar", "00002.tar"]
    assert [u.shard for u in units] == [0, 1, 2]


def test_fingerprint_changes_with_inputs(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"1")
    before = plan_units([str(tmp_path)], 10, EXT)[0][0].fingerprint()
    assert plan_units([str(tmp_path)], 10, EXT)[0][0].fingerprint() == before
    (tmp_path / "b.jpg").write_bytes(b"2")
    assert plan_units([str(tmp_path)], 10, EXT)[0][0].fingerprint() != before


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: [str(p / "missing")], "does not exist"),
        (lambda p: [], "no --input given"),
        (lambda p: [str(p)], "no images found"),
        (lambda p: [str(p / "x.csv")], "neither a folder nor a .tar"),
        (lambda p: [str(p / "broken.tar")], "cannot be read"),
    ],
)
def test_bad_inputs_fail_before_work_with_a_reason(tmp_path, setup, message):
    (tmp_path / "x.csv").write_text("a,b")
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar archive at all" * 40)
    if "no images" in message:
        (tmp_path / "x.csv").unlink()
        (tmp_path / "broken.tar").unlink()
    with pytest.raises(UserError, match=message):
        plan_units(setup(tmp_path), 1000, EXT)
