"""Every dtype decision goes through lambda_eclipse/device.py: elsewhere, code takes the dtypes decided there and
compares with them, never picks one itself. An AST scan of the packages for the ways of picking one: a reduced or
single precision named (`torch.float16`, `torch.bfloat16`, `torch.float32`, their aliases `torch.half`,
`torch.float`), as an argument, a default or a value, anywhere but one side of a comparison (`amp != torch.float32`:
is autocast on?); a cast method (`.half()`, `.bfloat16()`); and a dtype looked up by name (`getattr(torch, name)`)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lambda_eclipse", "storage", "tasks", "prior", "generate", "evaluation", "finetune", "flows")
POLICY = ROOT / "lambda_eclipse" / "device.py"  # where they are decided
DTYPES = {"float16", "bfloat16", "float32", "half", "float"}  # torch.<name>: a precision named
CASTS = {"half", "bfloat16"}  # tensor.<name>(): a cast to a reduced precision
CHECKS = (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)


def _checked(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether `node` is one side of an ==, !=, `is` or `is not` comparison."""
    parent = parents.get(node)
    return isinstance(parent, ast.Compare) and all(isinstance(op, CHECKS) for op in parent.ops)


def _is_torch(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "torch"


def dtype_choices(path: Path) -> list[str]:
    """`file:line: what` for each dtype chosen in the file at `path`."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    hits: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_torch(node.value) and node.attr in DTYPES:
            if not _checked(node, parents):
                hits.append((node.lineno, f"torch.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            hits += [(node.lineno, f"from torch import {a.name}") for a in node.names if a.name in DTYPES]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "getattr" and node.args and _is_torch(node.args[0]):
                hits.append((node.lineno, "getattr(torch, …)"))
            elif isinstance(func, ast.Attribute) and func.attr in CASTS and not node.args and not node.keywords:
                hits.append((node.lineno, f".{func.attr}()"))
    return [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in sorted(hits)]


def test_dtypes_are_decided_in_device_py_only():
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if p != POLICY)
    assert len(files) > 50  # the packages were found
    hits = [hit for path in files for hit in dtype_choices(path)]
    assert not hits, ("dtypes chosen outside lambda_eclipse/device.py (take them from a named decision there; "
                      "comparisons may stay):\n" + "\n".join(hits))


def test_the_scan_finds_each_way_of_choosing_a_dtype(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    source = tmp_path / "m.py"
    source.write_text(
        "import torch\n"
        "from torch import float16\n"
        "a = torch.zeros(2, dtype=torch.bfloat16)\n"
        "b = a.half()\n"
        "c = getattr(torch, 'float32')\n"
        "d = a.to(torch.float16)\n"
        "e = torch.autocast('cuda', dtype=amp, enabled=amp != torch.float32)\n"
        "f = amp is torch.float16 or torch.half == amp\n"
        "g = a.float()\n"
    )
    assert dtype_choices(source) == ["m.py:2: from torch import float16", "m.py:3: torch.bfloat16", "m.py:4: .half()",
                                     "m.py:5: getattr(torch, …)", "m.py:6: torch.float16"]
