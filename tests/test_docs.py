"""The docs/ pages: every page that code or prose cites exists, and nothing cites a file outside."""

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Built from parts so that this file does not match itself.
OUTSIDE_DESIGN = "DESIGN" + ".md"


def _repo_files():
    """Paths (relative to the root) of the files git tracks or would track."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    return [p for p in listed if os.path.isfile(os.path.join(ROOT, p))]


def _text(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def test_docs_has_the_pages_its_index_lists():
    index = _text("docs/README.md")
    for page in ("loss.md", "soft_rank.md", "evaluation.md", "architecture.md"):
        assert f"]({page})" in index, page
        assert os.path.isfile(os.path.join(ROOT, "docs", page)), page


def test_no_file_cites_a_design_file_outside_the_repository():
    citing = [p for p in _repo_files() if OUTSIDE_DESIGN in _text(p)]
    assert citing == []


def test_every_cited_docs_page_exists():
    cited = set()
    for path in _repo_files():
        if path.endswith((".py", ".md", ".ipynb", ".toml")):
            cited.update((path, page) for page in re.findall(r"docs/[\w./-]*?\.md", _text(path)))
    assert cited, "nothing cites a docs/ page"
    missing = sorted(
        (path, page) for path, page in cited if not os.path.isfile(os.path.join(ROOT, page))
    )
    assert missing == []


def test_relative_links_between_docs_pages_resolve():
    for name in os.listdir(os.path.join(ROOT, "docs")):
        if not name.endswith(".md"):
            continue
        for target in re.findall(r"\]\(([^)#:]+)\)", _text(f"docs/{name}")):
            assert os.path.exists(os.path.join(ROOT, "docs", target)), (name, target)
