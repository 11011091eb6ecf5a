"""MkDocs hook: pages made from files outside docs/, so that each has one home.

- ``index.md`` is the README, its links rewritten to the site's pages;
- ``benchmarks/<table>.md`` is each ``bench/results/<table>.md``, as the benchmark wrote it from its
  JSON (nothing typed by hand);
- a link from any page to ``bench/results/<table>.md`` or into ``docs/`` is rewritten to the page
  the site builds from it, so the same Markdown reads right on GitHub and on the site.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def on_files(files, config):
    files.append(File.generated(config, "index.md", abs_src_path=str(ROOT / "README.md")))
    for table in sorted(RESULTS.glob("*.md")):
        files.append(File.generated(config, f"benchmarks/{table.name}", abs_src_path=str(table)))
    return files


def on_page_markdown(markdown, page, config, files):
    source = Path(page.file.abs_src_path).resolve()
    docs = Path(config["docs_dir"]).resolve()
    here = (docs / page.file.src_uri).parent

    def rewrite(match):
        target, anchor = match.group(1), match.group(2) or ""
        if "://" in target or target.startswith("mailto:"):
            return match.group(0)
        real = (source.parent / target).resolve()
        if real.parent == RESULTS and real.suffix == ".md":
            site = docs / "benchmarks" / real.name
        elif docs in real.parents:
            site = real
        else:
            return match.group(0)
        return f"]({os.path.relpath(site, here)}{anchor})"

    return LINK.sub(rewrite, markdown)
