"""The documentation holds together: links resolve, cited paths exist, the README stays short,
and the MkDocs site builds in strict mode. Fast, and without TensorFlow.

* every relative link in README.md and docs/*.md points at an existing file, and at an existing
  heading when it has an anchor (MkDocs' slugs for the site, GitHub's for the repository view);
* every repository path cited in code and docs (`docs/architecture.md`, `serving/k8s/base`,
  `export/contract.py`, `DESIGN.md`) exists;
* README.md is at most 200 lines and opens with `make demo` and `make test`;
* `mkdocs build --strict` passes, and every page in docs/ is in the nav of mkdocs.yml.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from functools import cache, lru_cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
README_MAX_LINES = 200

# Text files whose contents may cite repository paths.
CITING_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".cfg", ".ini", ".sh"}
CITING_NAMES = {"Makefile", "Dockerfile", "run"}
# Never part of the repository (only used when git is not available to list its files).
UNTRACKED_DIRS = {".git", ".venv", ".venv-k8s", "build", "out", "models", "runs", "demo-data"}


# ----------------------------------------------------------------------------- repository files


@lru_cache(maxsize=1)
def repo_files() -> tuple[str, ...]:
    """Paths (relative, with slashes) of the repository's files: tracked, or new and not ignored."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode("utf-8")
        names = [n for n in listed.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [
                d
                for d in dirnames
                if d not in UNTRACKED_DIRS and d != "__pycache__" and not d.endswith("_cache")
            ]
            names += [Path(dirpath, f).relative_to(ROOT).as_posix() for f in filenames]
    return tuple(sorted(n for n in names if (ROOT / n).is_file()))


@lru_cache(maxsize=1)
def top_level_folders() -> frozenset[str]:
    return frozenset(name.split("/")[0] for name in repo_files() if "/" in name)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def citing_files() -> list[Path]:
    """Files whose text may cite repository paths; not this one, whose examples are made up."""
    paths = [ROOT / name for name in repo_files()]
    return [
        path
        for path in paths
        if (path.suffix in CITING_SUFFIXES or path.name in CITING_NAMES)
        and path != Path(__file__).resolve()
    ]


# ----------------------------------------------------------------------------- markdown parsing

FENCE = re.compile(r"^\s*(```|~~~)")
ATX_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*)?\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def links(path: Path):
    """(line number, target) of every inline link, image and reference definition."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)
        for match in INLINE_LINK.finditer(line):
            yield number, match.group(1)
        match = REFERENCE_DEFINITION.match(line)
        if match:
            yield number, match.group(1)


def heading_text(raw: str) -> str:
    """A heading's text as rendered: code spans keep their content, markup goes."""
    parts = CODE_SPAN.split(raw)
    out = []
    # re.split with two groups: text, fence, code, text, fence, code, ...
    for index in range(0, len(parts), 3):
        text = parts[index]
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
        text = re.sub(r"<[^>]+>", "", text)
        text = text.replace("**", "").replace("__", "")
        text = re.sub(r"(?<!\w)[*_](\S(?:.*?\S)?)[*_](?!\w)", r"\1", text)
        out.append(text)
        if index + 2 < len(parts):
            out.append(parts[index + 2])
    return html.unescape("".join(out)).strip()


def mkdocs_slug(text: str) -> str:
    """Python-Markdown's toc.slugify, which MkDocs uses for heading ids."""
    value = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def github_slug(text: str) -> str:
    """GitHub's heading anchors (github-slugger): lower case, punctuation dropped, each space a
    hyphen."""
    kept = "".join(c for c in text.lower() if c.isalnum() or c in "-_ ")
    return kept.replace(" ", "-")


def _unique(slugs: list[str], duplicate) -> set[str]:
    seen: set[str] = set()
    for slug in slugs:
        candidate, n = slug, 0
        while candidate in seen or not candidate:
            n += 1
            candidate = duplicate(slug, n)
        seen.add(candidate)
    return seen


@cache
def anchors(path: Path) -> dict[str, set[str]]:
    """Heading ids of a markdown file, per renderer."""
    texts = [
        heading_text(match.group(2))
        for _, line in prose_lines(path.read_text(encoding="utf-8"))
        if (match := ATX_HEADING.match(line))
    ]
    return {
        "mkdocs": _unique([mkdocs_slug(t) for t in texts], lambda s, n: f"{s}_{n}"),
        "github": _unique([github_slug(t) for t in texts], lambda s, n: f"{s}-{n}"),
    }


def renderers(path: Path) -> tuple[str, ...]:
    """Who shows a markdown file: GitHub always; MkDocs too for the pages in docs/."""
    return ("mkdocs", "github") if DOCS in path.parents else ("github",)


# ----------------------------------------------------------------------------- tests: links


def broken_links(path: Path) -> list[str]:
    problems = []
    where = path.relative_to(ROOT)
    for number, target in links(path):
        if SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part)
        destination = (path.parent / file_part).resolve() if file_part else path
        if file_part.startswith("/"):
            problems.append(f"{where}:{number}: {target}: absolute link, use a relative one")
            continue
        if not destination.exists():
            problems.append(f"{where}:{number}: {target}: no such file")
            continue
        if DOCS in path.parents and DOCS not in destination.parents:
            problems.append(
                f"{where}:{number}: {target}: outside docs/, which is all MkDocs publishes "
                "(cite the path as `code` instead)"
            )
            continue
        if anchor and destination.suffix == ".md":
            found = anchors(destination)
            for renderer in renderers(path):
                if unquote(anchor) not in found[renderer]:
                    problems.append(
                        f"{where}:{number}: {target}: no heading with the {renderer} anchor "
                        f"#{anchor} in {destination.relative_to(ROOT)}"
                    )
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    assert broken_links(path) == []


def test_the_link_checker_sees_a_broken_link(tmp_path, monkeypatch):
    """A missing file, a missing anchor and a link out of docs/ are reported; good links are not."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (tmp_path / "outside.md").write_text("# Outside\n")
    (docs / "a.md").write_text("# Page A\n\n## Fine-tuning (`--from`)\n\n## Plain part\n")
    page = docs / "b.md"
    page.write_text(
        "# B\n\n[ok](a.md#plain-part) [ok](#b) [web](https://example.com/x.md)\n"
        "[gone](missing.md) [bad anchor](a.md#nope) [out](../outside.md)\n"
        "[differs](a.md#fine-tuning-from)\n"
        "`[in code](missing.md)`\n```\n[in a fence](missing.md)\n```\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "DOCS", docs)
    problems = broken_links(page)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md: no such file",
        "a.md#nope: no heading with the mkdocs anchor #nope in docs/a.md",
        "a.md#nope: no heading with the github anchor #nope in docs/a.md",
        "../outside.md: outside docs/, which is all MkDocs publishes (cite the path as `code` "
        "instead)",
        # MkDocs says fine-tuning-from, GitHub fine-tuning---from: only one renderer has it.
        "a.md#fine-tuning-from: no heading with the github anchor #fine-tuning-from in docs/a.md",
    ]


def test_slugs_follow_the_renderers():
    text = heading_text("Predict in process (`xfer-predict`)")
    assert mkdocs_slug(text) == github_slug(text) == "predict-in-process-xfer-predict"
    text = heading_text("The run report (`report.html`, `xfer-report`)")
    assert mkdocs_slug(text) == "the-run-report-reporthtml-xfer-report"
    text = heading_text("Fine-tuning the backbone (`--fine-tune-from`)")
    assert mkdocs_slug(text) == "fine-tuning-the-backbone-fine-tune-from"
    assert github_slug(text) == "fine-tuning-the-backbone---fine-tune-from"
    assert _unique(["its-tests", "its-tests"], lambda s, n: f"{s}_{n}") == {
        "its-tests",
        "its-tests_1",
    }


# ----------------------------------------------------------------------------- tests: citations

PLACEHOLDER = re.compile(r"[<>*{}$\[\]]|\.\.\.")


def citation_pattern() -> re.Pattern:
    """Things that look like repository paths: `<top-level folder>/...`, or a markdown file
    (`docs/x.md`, `../README.md`, `DESIGN.md`). Not preceded by a path, URL or variable
    character, so `gs://b/export/x`, `$(BIN)/python` and `/models/x` are not citations."""
    tops = "|".join(re.escape(t) for t in sorted(top_level_folders(), key=len, reverse=True))
    chars = r"[\w.\-/<>*{}$\[\]]"
    return re.compile(rf"(?<![\w./\-:@$~])((?:(?:{tops})/{chars}*)|(?:{chars}*\.md)(?![\w-]))")


def cited_path(candidate: str) -> str | None:
    """The part of a candidate to check: up to its first placeholder (`models/<name>`,
    `export/*.py`, `serving/k8s/...`); None when it is not a repository citation."""
    kept = []
    for part in candidate.split("/"):
        if PLACEHOLDER.search(part):
            break
        kept.append(part)
    path = "/".join(kept).rstrip(".")
    if not path:
        return None
    if candidate.endswith(".md") and "/" not in candidate:
        # A bare name: repository documents are upper case (README.md, DESIGN.md); lower-case
        # ones are what commands write (comparison.md, fewshot.md).
        return path if Path(path).stem.isupper() else None
    return path


def citations(path: Path, pattern: re.Pattern):
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        for match in pattern.finditer(line):
            cited = cited_path(match.group(1))
            if cited:
                yield number, cited


def exists(cited: str, citing: Path) -> bool:
    if (ROOT / cited).exists():
        return True
    # A relative markdown path (../README.md, architecture.md) from the citing file.
    return cited.endswith(".md") and (citing.parent / cited).exists()


def test_cited_repository_paths_exist():
    pattern = citation_pattern()
    missing = [
        f"{path.relative_to(ROOT)}:{number}: {cited}"
        for path in citing_files()
        for number, cited in citations(path, pattern)
        if not exists(cited, path)
    ]
    assert missing == [], "cited paths that do not exist:\n" + "\n".join(missing)


def test_the_citation_finder_sees_paths_and_nothing_else():
    pattern = citation_pattern()
    text = (
        "see DESIGN.md and `docs/architecture.md`, serving/k8s/... or export/*.py; "
        "writes comparison.md under models/<name>/1; gs://b/export/x.py $(BIN)/python "
        "/models/x export.compare ../README.md"
    )
    found = [cited_path(m.group(1)) for m in pattern.finditer(text)]
    assert [f for f in found if f] == [
        "DESIGN.md",
        "docs/architecture.md",
        "serving/k8s",
        "export",
        "../README.md",
    ]


# ----------------------------------------------------------------------------- tests: README


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, over {README_MAX_LINES}: move details into docs/"
    )
    top = "\n".join(lines[:15])
    assert "make demo" in top and "make test" in top


# ----------------------------------------------------------------------------- tests: MkDocs


def test_every_page_is_in_the_nav():
    config = MKDOCS_YML.read_text(encoding="utf-8")
    nav = config[config.index("\nnav:") :]
    listed = set(re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?(\S+\.md)\s*$", nav, re.M))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - listed == set(), "pages missing from the nav of mkdocs.yml"
    assert listed - pages == set(), "nav entries without a page in docs/"


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install 'mkdocs>=1.6,<2'; the dev extra has it)")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(MKDOCS_YML),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").exists()
