"""The profile is a `Profile`: parsed in one place, read through loader tables, never a string compared in place."""

import ast
from pathlib import Path

import pytest

from lambda_eclipse.errors import UserError
from lambda_eclipse.profile import Profile, names, pick

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lambda_eclipse", "storage", "tasks", "prior", "generate", "evaluation", "finetune", "flows")
EXEMPT = {Path("lambda_eclipse/profile.py")}  # where the names are defined
COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)


def test_parse_takes_a_name_or_a_profile_and_names_the_choices_otherwise():
    assert Profile.parse("tiny") is Profile.TINY
    assert Profile.parse("paper-shapes") is Profile.PAPER_SHAPES
    assert Profile.parse(Profile.PAPER) is Profile.PAPER
    assert Profile.parse("paper", allowed=(Profile.TINY, Profile.PAPER)) is Profile.PAPER
    with pytest.raises(UserError) as bad:
        Profile.parse("huge")
    assert str(bad.value) == "unknown profile 'huge'; choose one of: tiny, paper, paper-shapes"
    with pytest.raises(UserError) as narrow:
        Profile.parse("paper-shapes", allowed=(Profile.TINY, Profile.PAPER))
    assert str(narrow.value) == "unknown profile 'paper-shapes'; choose one of: tiny, paper"


def test_only_paper_loads_released_weights():
    assert [p for p in Profile if p.pretrained] == [Profile.PAPER]


def test_names_are_the_cli_choices():
    assert names() == ("tiny", "paper", "paper-shapes")
    assert names((Profile.TINY, Profile.PAPER)) == ("tiny", "paper")


def test_pick_reads_a_table_and_names_the_family_and_its_profiles_when_it_has_none():
    table = {Profile.TINY: "small", Profile.PAPER: "released"}
    assert pick(table, "tiny", "the widget") == "small"
    assert pick(table, Profile.PAPER, "the widget") == "released"
    with pytest.raises(UserError) as missing:
        pick(table, "paper-shapes", "the widget")
    assert str(missing.value) == "the widget has no 'paper-shapes' profile; choose one of: tiny, paper"
    with pytest.raises(UserError) as unknown:
        pick(table, "huge", "the widget")
    assert str(unknown.value) == "unknown profile 'huge' for the widget; choose one of: tiny, paper"


def _is_profile(node: ast.expr) -> bool:
    """A name or attribute that holds a profile (`profile`, `plan.profile`), or a lookup of one (`meta["profile"]`,
    `meta.get("profile")`)."""
    if isinstance(node, ast.Name):
        return "profile" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "profile" in node.attr.lower()
    if isinstance(node, ast.Subscript):
        return _is_str(node.slice) and "profile" in node.slice.value.lower()  # pyright: ignore[reportAttributeAccessIssue]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        return _is_str(node.args[0]) and "profile" in node.args[0].value.lower()  # pyright: ignore[reportAttributeAccessIssue]
    return False


def _is_str(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _is_literal(node: ast.expr) -> bool:
    """A str constant, or a tuple, list or set of them."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return bool(node.elts) and all(_is_str(e) for e in node.elts)
    return _is_str(node)


def profile_literal_comparisons(path: Path) -> list[str]:
    """`file:line: code` of each comparison of a profile with a str literal (or a collection of them) in `path`."""
    source = path.read_text()
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, sides[:-1], sides[1:], strict=True):
            if isinstance(op, COMPARISONS) and (
                (_is_profile(left) and _is_literal(right)) or (_is_literal(left) and _is_profile(right))
            ):
                found.append(f"{where}:{node.lineno}: {ast.get_source_segment(source, node)}")
                break
    return found


def test_the_scan_finds_each_form_of_comparison(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        'if profile == "paper": pass\n'
        'if "tiny" != plan.profile: pass\n'
        'if job.profile in ("tiny", "paper-shapes"): pass\n'
        'if profile not in ["tiny"]: pass\n'
        'if args.profile is "tiny": pass\n'
        'if meta.get("profile") == "paper": pass\n'
        'if meta["profile"] in {"paper"}: pass\n'
        'if 0 < profile_count == "x": pass\n'
        # not comparisons of a profile with a literal:
        'if profile is Profile.TINY: pass\n'
        'if profile == other: pass\n'
        'if name == "tiny": pass\n'
        'if profile in PROFILES: pass\n'
        'x = {"profile": "tiny"}\n'
    )
    found = profile_literal_comparisons(sample)
    assert [int(hit.split(":")[1]) for hit in found] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_no_profile_is_compared_with_a_string():
    """Parse the name (`Profile.parse`) and ask the Profile (`.pretrained`, `is Profile.TINY`) or a model's table
    (`pick`); `profile == "paper"` anywhere else is how a new profile goes missing in one place."""
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 50  # the scan sees the source tree
    hits = [hit for f in files if f.relative_to(ROOT) not in EXEMPT for hit in profile_literal_comparisons(f)]
    assert not hits, "compare a Profile, not a string:\n" + "\n".join(hits)
