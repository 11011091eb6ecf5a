"""The documentation's promises: every Python example of the README and the guides runs (on a tiny
random backbone and a CEBaB subsample, so that it takes seconds), and every reference to the
methods document names a section it has."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import lucidlm
from lucidlm.backbone import DEFAULT_BACKBONE

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "docs/getting-started.md",
    "docs/corrections.md",
    "docs/llm.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "guides").glob("*.md")),
]
# runs an example reads, made beforehand from the tiny runs (a user makes them with lucidlm train)
RUNS = {"docs/corrections.md": {"cebab-intcem": "joint"}, "docs/guides/evaluation.md": {"cebab-joint": "joint"}}


def examples(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)


def test_the_pages_hold_examples():
    assert sum(len(examples(page)) for page in PAGES) >= 8 and examples("README.md")


@pytest.mark.parametrize("page", [p for p in PAGES if examples(p)])
def test_every_python_example_runs(page, tmp_path, monkeypatch, tiny_bert_dir, cebab_dir, tiny_runs):
    load_task = lucidlm.load_task

    def small(source, **options):  # the example's data, subsampled: mechanics, not figures
        task = load_task(source, **options)
        task.train, task.dev, task.test = task.train.sample(64), task.dev.sample(32), task.test.sample(32)
        return task

    monkeypatch.setattr(lucidlm, "load_task", small)
    monkeypatch.chdir(tmp_path)
    for name, kind in RUNS.get(page, {}).items():
        shutil.copytree(tiny_runs[kind], tmp_path / "runs" / name)
    for code in examples(page):
        code = (
            code.replace(f'"{DEFAULT_BACKBONE}"', repr(str(tiny_bert_dir)))
            .replace("from_backbone(task=", f"from_backbone({str(tiny_bert_dir)!r}, task=")
            .replace('"../shared/data/cebab"', repr(str(cebab_dir)))
            .replace("samples=200", "samples=4")
        )
        exec(compile(code, f"{page} example", "exec"), {"__name__": "example"})


def test_references_to_the_methods_name_sections_it_has():
    methods = (ROOT / "docs" / "methods.md").read_text()
    sections = set(re.findall(r"^## §(\d+)\.", methods, re.M)) | set(re.findall(r"^\*\*§(\d+\.\d+)", methods, re.M))
    cited = {}
    for path in [
        *ROOT.glob("src/**/*.py"),
        *ROOT.glob("configs/*.yaml"),
        *ROOT.glob("docs/**/*.md"),
        ROOT / "README.md",
    ]:
        for section in re.findall(r"methods(?:\.md)?[ ,)]*§ ?(\d+(?:\.\d+)?)", path.read_text()):
            cited.setdefault(section, path.relative_to(ROOT))
    assert cited and not {s: p for s, p in cited.items() if s not in sections}
    assert not [p for p in ROOT.glob("src/**/*.py") if "METHODS §" in p.read_text()]
