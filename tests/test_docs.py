"""The shipped documentation: every model has a page, and every citation in the code resolves.

Docstrings, comments and YAML descriptions cite ``docs/<page>.md`` (optionally ``#anchor``) instead
of internal specification documents that are not part of the repository. These tests read
files only (no training), so they take well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modalrec.models import MODEL_REGISTRY

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CODE_DIRS = ("src", "tests", "benchmarks")
CODE_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".html", ".js", ".txt"}

# Built from parts so that this file does not cite them itself.
UNSHIPPED_SPECS = ("baselines" + ".md", "seed-models" + ".md")
# The lead is rewriting mario.py on another branch and owns its module docstring; this exact
# line is the one citation left until that change lands. Any other citation fails the test.
PENDING: set[tuple[str, str]] = set()

CITATION = re.compile(r"docs/[\w./-]+?\.md(?:#[\w-]+)?")
LINK = re.compile(r"\]\(([^)\s]+?\.md)(?:#([^)\s]+))?\)")


def code_files() -> list[Path]:
    files = []
    for d in CODE_DIRS:
        files += [p for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in CODE_SUFFIXES]
    return sorted(files)


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped (letters, digits, '-', '_' kept), spaces → '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    out, in_code = set(), False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6}\s+(.*)", line)):
            out.add(github_anchor(m.group(1)))
    return out


def test_github_anchor_rule():
    assert github_anchor("Degree-sensitive edge pruning") == "degree-sensitive-edge-pruning"
    assert github_anchor("Where modalrec differs from MMRec") == "where-modalrec-differs-from-mmrec"
    assert github_anchor("DA-MRS (+ LightGCN)") == "da-mrs--lightgcn"
    assert github_anchor("`A_sym` and friends, §2") == "a_sym-and-friends-2"


def test_no_file_cites_the_unshipped_specs():
    hits = []
    for path in code_files():
        rel = path.relative_to(ROOT).as_posix()
        for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if any(s in line for s in UNSHIPPED_SPECS) and not any(rel == f and text in line for f, text in PENDING):
                hits.append(f"{rel}:{no}: {line.strip()}")
    assert not hits, "cite docs/... or the paper instead:\n" + "\n".join(hits)


def test_readme_does_not_cite_the_unshipped_specs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not any(s in text for s in UNSHIPPED_SPECS)


@pytest.mark.parametrize("name", sorted(cls.config_name for cls in MODEL_REGISTRY.values()))
def test_every_registered_model_has_a_page(name):
    page = DOCS / "models" / f"{name}.md"
    assert page.is_file(), f"model {name} has no {page.relative_to(ROOT)}"
    assert f"({name}.md)" in (DOCS / "models" / "README.md").read_text(encoding="utf-8"), (
        f"docs/models/README.md does not list {name}.md"
    )


def test_citations_in_code_resolve():
    cited = 0
    problems = []
    cache: dict[Path, set[str]] = {}
    for path in code_files():
        rel = path.relative_to(ROOT).as_posix()
        for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for ref in CITATION.findall(line):
                cited += 1
                file_part, _, anchor = ref.partition("#")
                target = ROOT / file_part
                if not target.is_file():
                    problems.append(f"{rel}:{no}: {file_part} does not exist")
                elif anchor and anchor not in cache.setdefault(target, anchors(target)):
                    problems.append(f"{rel}:{no}: no heading with anchor #{anchor} in {file_part}")
    assert cited > 0, "no docs/ citation found at all: the scan is broken"
    assert not problems, "\n".join(problems)


def test_links_between_doc_pages_resolve():
    problems = []
    pages = sorted(DOCS.rglob("*.md"))
    assert pages
    for page in pages:
        for target_rel, anchor in LINK.findall(page.read_text(encoding="utf-8")):
            target = (page.parent / target_rel).resolve()
            if not target.is_file():
                problems.append(f"{page.relative_to(ROOT)}: link to missing {target_rel}")
            elif anchor and anchor not in anchors(target):
                problems.append(f"{page.relative_to(ROOT)}: no heading #{anchor} in {target_rel}")
    assert not problems, "\n".join(problems)


def test_mario_page_documents_the_content_scale_control():
    text = (DOCS / "models" / "mario.md").read_text(encoding="utf-8")
    assert "## Content scale control" in text and "content_norm" in text and "filled in by the lead" not in text
