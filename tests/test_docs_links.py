"""Every relative link in README.md and docs/*.md resolves: the file exists (relative to the
document) and an anchor names a heading of its target (GitHub's slugs). External links
(http, https, mailto) are skipped; so are links inside code blocks and inline code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), target without spaces, an optional "title" after it
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = ("http://", "https://", "mailto:")


def documents(root: Path = ROOT) -> list[Path]:
  return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _prose_lines(text: str) -> list[tuple[int, str, str]]:
  """(line number, line, line with inline code blanked) outside fenced code blocks."""
  lines, fenced = [], False
  for number, line in enumerate(text.splitlines(), 1):
    if _FENCE.match(line):
      fenced = not fenced
      continue
    if not fenced:
      lines.append((number, line, _INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)))
  return lines


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: markup dropped, lowercase, punctuation dropped except
  hyphens and underscores, spaces to hyphens."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
  text = text.replace("`", "").strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
  """Every heading's slug in a markdown file, repeats numbered as GitHub numbers them."""
  seen: dict[str, int] = {}
  found = set()
  for _, line, _ in _prose_lines(path.read_text()):
    match = _HEADING.match(line)
    if not match:
      continue
    base = slug(match.group(2))
    n = seen.get(base, 0)
    seen[base] = n + 1
    found.add(base if n == 0 else f"{base}-{n}")
  return found


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
  """'FILE:LINE: [target] why' for every relative link of doc that does not resolve."""
  problems = []
  for number, line, prose in _prose_lines(doc.read_text()):
    for match in _LINK.finditer(prose):
      target = line[match.start(1) : match.end(1)]
      if target.startswith(_EXTERNAL):
        continue
      path_part, _, anchor = target.partition("#")
      where = f"{doc.relative_to(root)}:{number}: ({target})"
      file = (doc.parent / path_part).resolve() if path_part else doc
      if not file.exists():
        problems.append(f"{where} no such file {path_part}")
        continue
      if anchor:
        if file.suffix != ".md":
          problems.append(f"{where} an anchor into a file that is not markdown")
        elif anchor not in anchors(file):
          problems.append(f"{where} no heading with the anchor #{anchor} in {file.name}")
  return problems


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
  assert doc.exists()
  problems = broken_links(doc)
  assert not problems, "broken links:\n" + "\n".join(problems)


def test_docs_index_lists_every_doc():
  """The README's docs index links every file of docs/."""
  readme = (ROOT / "README.md").read_text()
  missing = [p.name for p in documents()[1:] if f"(docs/{p.name})" not in readme]
  assert not missing, f"docs/ files the README does not link: {missing}"


def test_the_checker_reports_broken_links(tmp_path):
  """It can fail: a missing file, a missing anchor, each with its file and line; code blocks,
  inline code and external links are not read as links."""
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "a.md").write_text("# A title\n\n## Two words, and `code`!\n\n## A title\n")
  (tmp_path / "README.md").write_text(
    "# Readme\n"
    "[ok](docs/a.md) [ok](docs/a.md#two-words-and-code) [ok](docs/a.md#a-title-1) [ok](#readme)\n"
    "[gone](docs/missing.md)\n"
    "[bad anchor](docs/a.md#three-words)\n"
    "![image](docs/nope.png) [web](https://example.com/x.md) [mail](mailto:a@b.c)\n"
    "`[not a link](docs/missing.md)`\n"
    "```\n[not a link](docs/missing.md)\n```\n"
  )
  problems = broken_links(tmp_path / "README.md", root=tmp_path)
  assert len(problems) == 3, problems
  assert problems[0].startswith("README.md:3: (docs/missing.md) no such file")
  assert problems[1].startswith("README.md:4: (docs/a.md#three-words) no heading")
  assert problems[2].startswith("README.md:5: (docs/nope.png) no such file")
  assert slug("On real chips: compiled from this CPU") == "on-real-chips-compiled-from-this-cpu"
