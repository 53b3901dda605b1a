"""Packaging: a lean core, optional parts behind extras, lazy imports, and clear missing-extra errors.

Fresh interpreters (subprocesses) see what ``import torchqv`` really loads.  A missing package is
simulated the documented way: ``sys.modules[name] = None`` makes ``import name`` raise ImportError.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import torchqv
from torchqv.extras import PACKAGES, MissingExtraError, require

ROOT = Path(__file__).resolve().parents[1]
CORE_DEPENDENCIES = {"torch", "numpy", "mpmath", "tqdm"}
# every optional package by its import name (and what it pulls in that torch does not)
OPTIONAL = sorted({*PACKAGES, "lightning", "distributed"})


def run_fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter on this checkout; return its stdout (fail on an error)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_import_loads_only_the_core() -> None:
    out = run_fresh(
        f"""
        import sys
        import torchqv
        assert torchqv.__file__.startswith({str(ROOT)!r}), torchqv.__file__
        optional = {OPTIONAL!r}
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set(optional)))
        print(sorted(m for m in sys.modules if m.split(".")[:2] in (
            ["torchqv", "verify"], ["torchqv", "export"], ["torchqv", "rounding"], ["torchqv", "lightning"],
            ["torchqv", "recipes"], ["torchqv", "data"], ["torchqv", "theory"])))
        """
    )
    assert out.split("\n")[:2] == ["[]", "[]"], out


def test_optional_names_resolve_lazily() -> None:
    out = run_fresh(
        """
        import sys
        import torchqv
        assert "torchqv.verify" not in sys.modules and "z3" not in sys.modules
        f = torchqv.verify_equivalence
        from torchqv.verify.engine import verify_equivalence
        assert f is verify_equivalence and "z3" in sys.modules
        assert "onnx" not in sys.modules  # from_onnx is lazy inside torchqv.verify too
        from torchqv import export_onnx, round_weights
        import torchqv.export, torchqv.rounding
        assert export_onnx is torchqv.export.export_onnx and round_weights is torchqv.rounding.round_weights
        assert "neal" not in sys.modules and "dimod" not in sys.modules
        assert torchqv.from_onnx is sys.modules["torchqv.verify.onnx_import"].from_onnx
        assert "torchqv.theory" not in sys.modules
        assert torchqv.theory.representability is sys.modules["torchqv.theory.universality"].representability
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_every_public_name_resolves() -> None:
    assert len(set(torchqv.__all__)) == len(torchqv.__all__)
    for name in torchqv.__all__:
        assert getattr(torchqv, name) is not None, name
    assert set(torchqv.__all__) <= set(dir(torchqv))
    assert {"verify_equivalence", "search_bits", "export_onnx", "round_weights"} <= set(torchqv.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        torchqv.nonexistent  # noqa: B018


def test_missing_extras_name_the_fix() -> None:
    """With every optional package blocked (a core-only install), the core runs and each optional
    part raises MissingExtraError naming its extra."""
    out = run_fresh(
        f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None
        import torch
        from torch import nn
        import torchqv as tq

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        qm = tq.quantize(model, tq.QConfig(weight=tq.FixedPoint(bits=4), activation=tq.FixedPoint(bits=8)))
        x = torch.rand(16, 4)
        tq.calibrate(qm, [x], progress=False)
        qm.eval()
        assert torch.equal(qm(x).double(), tq.reference_forward(qm, x).double())
        tq.fold_batchnorm, tq.float_twin(qm)
        tq.round_weights(qm, [x], solver="nearest", progress=False)

        def message(code):
            try:
                exec(code, {{}})
            except tq.MissingExtraError as exc:
                assert isinstance(exc, ImportError)
                return str(exc)
            raise AssertionError(code + ": no MissingExtraError")

        star: dict = {{}}
        exec("from torchqv import *", star)  # the names whose extras are missing are left out
        assert "quantize" in star and "VerifyConfig" in star and "verify_equivalence" not in star
        cfg = tq.VerifyConfig(delta=0.1)  # configs and verdicts need no extra
        assert cfg.relation == "top1" and tq.Verdict.EQUIVALENT == "EQUIVALENT"
        assert tq.RoundingConfig(solver="neal").solver == "neal"
        for code in (
            "import torchqv.verify.engine",
            "import torchqv; torchqv.verify_equivalence",
            "from torchqv import search_bits",
            "import torchqv; torchqv.export_onnx",
            "import torchqv; torchqv.from_onnx",
            "import torch, torchqv; torchqv.round_weights(torch.nn.Linear(1, 1), [], solver='neal')",
            "import torchqv.lightning",
            "import torchqv.recipes",
            "from torchqv.data import MNISTDataModule",
            "import torchqv.data.torchvision_sets",
            "from torchqv.theory import train_exact",
        ):
            print(code, "->", message(code))
        """
    )
    msgs = dict(line.split(" -> ") for line in out.strip().split("\n"))
    verify = 'torchqv.verify needs z3-solver: pip install "torchqv[verify]"'
    assert msgs["import torchqv.verify.engine"] == verify
    assert msgs["import torchqv; torchqv.verify_equivalence"] == verify
    assert msgs["from torchqv import search_bits"] == verify
    onnx = 'torchqv.export needs onnx: pip install "torchqv[onnx]"'
    assert msgs["import torchqv; torchqv.export_onnx"] == onnx
    assert "[onnx]" in msgs["import torchqv; torchqv.from_onnx"]
    assert msgs[next(k for k in msgs if "neal" in k)] == (
        'round_weights(solver="neal") needs dwave-neal: pip install "torchqv[qubo]"'
    )
    assert msgs["import torchqv.lightning"] == (
        'torchqv.lightning needs pytorch-lightning: pip install "torchqv[lightning]"'
    )
    recipes = r'torchqv\.recipes needs [\w-]+: pip install "torchqv\[recipes\]"'
    assert re.fullmatch(recipes, msgs["import torchqv.recipes"])
    assert "[lightning]" in msgs["from torchqv.data import MNISTDataModule"]
    assert "needs torchvision" in msgs["import torchqv.data.torchvision_sets"]
    assert "[verify]" in msgs["from torchqv.theory import train_exact"]


def test_require(monkeypatch: pytest.MonkeyPatch) -> None:
    import math

    assert require("math", "x", "verify") is math
    monkeypatch.setitem(sys.modules, "z3", None)  # `import z3` now raises ImportError
    with pytest.raises(MissingExtraError, match=r'^f needs z3-solver: pip install "torchqv\[verify\]"$'):
        require("z3", "f")
    with pytest.raises(ValueError, match="no extra is known"):
        require("some_unknown_module", "f")


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level names of the non-stdlib packages that each torchqv module imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "torchqv").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "require"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [node.args[0].value]
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top != "torchqv":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _extras() -> tuple[list[str], dict[str, set[str]]]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def dist(req: str) -> str:
        return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()

    raw = project["optional-dependencies"]

    def expand(extra: str) -> set[str]:
        out: set[str] = set()
        for req in raw[extra]:
            if dist(req) == "torchqv":
                for sub in re.search(r"\[(.*)\]", req).group(1).split(","):
                    out |= expand(sub.strip())
            else:
                out.add(dist(req))
        return out

    return [dist(r) for r in project["dependencies"]], {extra: expand(extra) for extra in raw}


def test_pyproject_core_is_lean_and_extras_are_complete() -> None:
    core, extras = _extras()
    assert set(core) == CORE_DEPENDENCIES
    optional_dists = {PACKAGES[m][0].split("[")[0] for m in PACKAGES}
    assert not optional_dists & set(core)
    for module, (distribution, extra) in PACKAGES.items():
        assert distribution.split("[")[0] in extras[extra], (module, extra)
        assert distribution.split("[")[0] in extras["all"], module
    assert {"pytest", "hypothesis", "ruff", "pytest-xdist"} <= extras["dev"]
    # every third-party import of the package is the core's or has an extra
    imports = _third_party_imports()
    unmapped = {m: files for m, files in imports.items() if m not in CORE_DEPENDENCIES and m not in PACKAGES}
    assert not unmapped, unmapped
    assert "install -e \".[all,dev]\"" in (ROOT / "Makefile").read_text()


def test_fold_batchnorm_and_float_twin_are_core() -> None:
    assert torchqv.fold_batchnorm.__module__ == "torchqv.batchnorm"
    assert torchqv.float_twin.__module__ == "torchqv.graph"
