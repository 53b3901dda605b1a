"""Cheap invariants of the documentation, checked without building the site (``make docs`` builds it).

Every page in ``mkdocs.yml``'s nav exists, every ``::: module.path`` of the API pages imports, the
README stays a landing page, its links resolve, and no private paper number ("paper 001") is left in
the package's docstrings and comments or in the docs: papers are cited by authors and title.
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_LIMIT = 8_500  # bytes
PRIVATE = re.compile(r"\bpapers? 00\d", re.IGNORECASE)
CITE_BY_NAME = "cite papers by authors and title (docs/references.md), not by number:\n"
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)


def nav_pages(nav) -> list[str]:
    """Every page file named in a MkDocs nav (nested lists of strings and one-key dicts)."""
    out: list[str] = []
    for entry in nav:
        if isinstance(entry, str):
            out.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                out.extend(nav_pages(value) if isinstance(value, list) else [value])
    return [p for p in out if not p.startswith(("http://", "https://"))]


def private_mentions(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of private paper numbers in a Python source's docstrings and comments."""
    hits: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                first = node.body[0].lineno
                hits += [(first + i, line) for i, line in enumerate(doc.splitlines()) if PRIVATE.search(line)]
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and PRIVATE.search(tok.string):
            hits.append((tok.start[0], tok.string))
    return hits


def test_mkdocs_nav_pages_exist():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = nav_pages(config["nav"])
    assert len(pages) >= 20
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"pages in mkdocs.yml's nav without a file under docs/: {missing}"
    orphans = sorted(
        str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in pages
    )
    assert not orphans, f"pages under docs/ missing from mkdocs.yml's nav: {orphans}"


def api_targets() -> list[str]:
    return sorted({m for page in DOCS.rglob("*.md") for m in DIRECTIVE.findall(page.read_text("utf-8"))})


def test_api_pages_have_directives():
    assert len(api_targets()) >= 40


@pytest.mark.parametrize("target", api_targets())
def test_api_directive_resolves(target):
    try:
        importlib.import_module(target)
    except ModuleNotFoundError as exc:  # an object: import its module, then get the attribute
        module, _, name = target.rpartition(".")
        if exc.name != target or not module:
            raise
        assert hasattr(importlib.import_module(module), name), f"::: {target} names nothing"


def test_readme_is_a_landing_page():
    readme = ROOT / "README.md"
    size = len(readme.read_bytes())
    assert size <= README_LIMIT, f"README.md: {size} bytes, over {README_LIMIT}; move details to docs/"
    text = readme.read_text(encoding="utf-8")
    for command in ("make demo", "make test", "make docs", 'pip install -e ".[all]"'):
        assert command in text
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    broken = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def test_detector_finds_private_numbers():
    source = (
        '"""Module (paper 001 Eq. 7)."""\n\n\n'
        'def f():\n    """Papers 000 and 002."""\n    x = 1  # paper 004\n'
    )
    assert [line for line, _ in private_mentions(source)] == [1, 5, 6]
    assert private_mentions('"""Park et al., Eq. 7."""\ns = "paper 001 in a string is code"\n') == []


def test_no_private_paper_numbers_in_package_docstrings():
    hits = [
        f"{path.relative_to(ROOT)}:{line}: {text.strip()}"
        for path in sorted((ROOT / "torchqv").rglob("*.py"))
        for line, text in private_mentions(path.read_text(encoding="utf-8"))
    ]
    assert not hits, CITE_BY_NAME + "\n".join(hits)


def test_no_private_paper_numbers_in_docs():
    files = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md", ROOT / "BENCHMARKS.md"]
    hits = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in files
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert not hits, CITE_BY_NAME + "\n".join(hits)
