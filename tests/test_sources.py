import io
import json
import tarfile

import pytest

from lambda_eclipse.errors import UserError
from lambda_eclipse.synthetic import photo
from storage.sources import list_inputs, plan_inputs, plan_units, sample_key

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
    plan = plan_inputs([str(tmp_path)], unit_size=2, extensions=EXT)
    units = plan.units
    names = [s.source.removeprefix(str(tmp_path) + "/") for u in units for s in u.iter_samples(EXT)]
    assert names == ["a/1.PNG", "a/z/3.jpg", "b/2.jpg", "c.jpg"]
    assert [u.shard for u in units] == [0, 1]
    assert [u.images for u in units] == [2, 2]
    assert [u.description for u in units] == [f"folder {tmp_path} [0:2]", f"folder {tmp_path} [2:4]"]
    assert plan.skipped == 2  # notes.txt and d.gif are not in EXT: counted, not silently lost
    assert all(s.key == sample_key(s.source) and "." not in s.key for u in units for s in u.iter_samples(EXT))


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
    (unit,) = plan_inputs([str(tmp_path / "00000.tar")], 1000, EXT).units
    assert unit.description == f"tar {tmp_path / '00000.tar'}" and unit.images is None  # counted on the worker
    samples = list(unit.iter_samples(EXT))
    assert [s.source_caption for s in samples] == ["a dog on a beach", "a cat"]
    assert samples[0].read() == jpg0 and samples[1].read() == jpg1  # streamed with the members
    assert samples[0].ref.read() == jpg0 and samples[1].ref.read() == jpg1  # and addressable by byte range
    assert samples[0].source.endswith("00000.tar#000000000.jpg")


def test_folder_of_tars_is_one_unit_per_tar(tmp_path):
    for i in range(3):
        _tar(tmp_path / f"{i:05d}.tar", {f"{i}.jpg": _jpeg(i)})
    units = plan_inputs([str(tmp_path)], 1000, EXT).units
    assert [u.description.split("/")[-1] for u in units] == ["00000.tar", "00001.tar", "00002.tar"]
    assert [u.shard for u in units] == [0, 1, 2]


def test_a_folder_of_tars_and_photos_at_any_depth_builds_both(tmp_path):
    """Tars at the top and photos in a sub-folder (and a tar below that): every input is planned or counted."""
    for i in range(2):
        _tar(tmp_path / f"{i:05d}.tar", {f"{i}.jpg": _jpeg(i)})
    (tmp_path / "photos" / "more").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "photos" / f"p{i}.jpg").write_bytes(_jpeg(i))
    _tar(tmp_path / "photos" / "more" / "00009.tar", {"9.jpg": _jpeg(9)})
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    plan = plan_inputs([str(tmp_path)], 2, EXT)
    tars = [u for u in plan.units if u.kind == "tar"]
    folders = [u for u in plan.units if u.kind == "folder"]
    assert [u.root.removeprefix(str(tmp_path) + "/") for u in tars] == ["00000.tar", "00001.tar",
                                                                         "photos/more/00009.tar"]
    assert [f for u in folders for f, _ in u.files] == ["photos/p0.jpg", "photos/p1.jpg", "photos/p2.jpg"]
    assert plan.skipped == 1  # notes.txt, counted and named in the plan's summary


def test_fingerprint_changes_with_inputs(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"1")
    before = plan_inputs([str(tmp_path)], 10, EXT).units[0].fingerprint()
    assert plan_inputs([str(tmp_path)], 10, EXT).units[0].fingerprint() == before
    (tmp_path / "b.jpg").write_bytes(b"2")
    assert plan_inputs([str(tmp_path)], 10, EXT).units[0].fingerprint() != before


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: [str(p / "missing")], "does not exist"),
        (lambda p: [], "no --input given"),
        (lambda p: [str(p)], "no images found"),
        (lambda p: [str(p / "x.csv")], "neither a folder nor a .tar"),
    ],
)
def test_bad_inputs_fail_before_work_with_a_reason(tmp_path, setup, message):
    (tmp_path / "x.csv").write_text("a,b")
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar archive at all" * 40)
    if "no images" in message:
        (tmp_path / "x.csv").unlink()
        (tmp_path / "broken.tar").unlink()
    with pytest.raises(UserError, match=message):
        plan_inputs(setup(tmp_path), 1000, EXT)


def test_a_broken_or_truncated_tar_gives_what_it_could_read_and_one_reject_naming_the_rest(tmp_path):
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar archive at all" * 40)
    (broken,) = plan_inputs([str(tmp_path / "broken.tar")], 1000, EXT).units  # planning never opens a tar
    (bad,) = list(broken.iter_samples(EXT))
    assert bad.reject is not None
    assert bad.reject.stage == "decode" and bad.reject.reason.startswith("tar unreadable after 0 members")
    _tar(tmp_path / "whole.tar", {f"{i:03d}.jpg": _jpeg(i) for i in range(4)})
    data = (tmp_path / "whole.tar").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        third = tar.getmembers()[2]
    (tmp_path / "cut.tar").write_bytes(data[: third.offset_data + 10])  # ends inside the third image
    (cut,) = plan_inputs([str(tmp_path / "cut.tar")], 1000, EXT).units
    samples = list(cut.iter_samples(EXT))
    assert [s.accepted for s in samples] == [True, True, False]
    assert [s.source.rsplit("#", 1)[1] for s in samples] == ["000.jpg", "001.jpg", "unreadable"]
    reject = samples[-1].reject
    assert reject is not None and reject.reason.startswith("tar unreadable after 2 members (unexpected end of data")
    assert reject.reason.endswith("rest skipped")


def test_new_files_become_new_units_and_old_units_keep_their_boundaries(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(b"x" * (i + 1))
    first = plan_inputs([str(tmp_path)], 2, EXT)
    assert [[f for f, _ in u.files] for u in first.units] == [["0.jpg", "1.jpg"], ["2.jpg", "3.jpg"], ["4.jpg"]]
    (tmp_path / "00.jpg").write_bytes(b"new, sorts first")
    (tmp_path / "9.jpg").write_bytes(b"new, sorts last")
    again = plan_units(list_inputs([str(tmp_path)], EXT), 2, first.units)
    assert [[f for f, _ in u.files] for u in again.units] == [
        ["0.jpg", "1.jpg"], ["2.jpg", "3.jpg"], ["4.jpg"], ["00.jpg", "9.jpg"]
    ]
    assert [u.shard for u in again.units] == [0, 1, 2, 3] and again.new == 1 and not again.changed
    assert again.units[3].description == f"folder {tmp_path} [5:7]"


def test_changed_and_missing_inputs_of_a_unit_are_named(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"x")
    first = plan_inputs([str(tmp_path)], 10, EXT)
    (tmp_path / "1.jpg").write_bytes(b"longer")
    (tmp_path / "2.jpg").unlink()
    again = plan_units(list_inputs([str(tmp_path)], EXT), 10, first.units)
    assert again.changed == {0: [f"{tmp_path}/1.jpg: 1 → 6 bytes", f"{tmp_path}/2.jpg: missing"]}
    assert again.new == 0


def test_a_symlink_loop_is_named_and_not_followed_and_odd_names_round_trip(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    names = ["a b #1 ü.jpg", "sub/x#y.jpg", "sub/日本.jpg"]
    for n in names:
        (root / n).write_bytes(n.encode())
    (root / "sub" / "loop").symlink_to("..")  # sub/loop → in: walking it would never end
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "z.jpg").write_bytes(b"z")
    (root / "linked").symlink_to(tmp_path / "elsewhere")  # a symlinked folder that is no loop is followed
    listing = list_inputs([str(root)], EXT)
    assert listing.loops == [f"{root / 'sub' / 'loop'} → {root}"]
    samples = [s for u in plan_units(listing, 10).units for s in u.iter_samples(EXT)]
    assert [s.source for s in samples] == [str(root / n) for n in ["a b #1 ü.jpg", "linked/z.jpg", *names[1:]]]
    assert [s.read() for s in samples] == [n.encode() for n in ["a b #1 ü.jpg"]] + [b"z"] + [
        n.encode() for n in names[1:]
    ]
    assert len({s.key for s in samples}) == 4
