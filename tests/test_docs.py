"""The docs site builds strictly and says what the code and the saved results say.

`mkdocs build --strict` fails on a broken link or anchor, a page missing from the nav, a missing
included file, or a docstring the API reference cannot read. The other tests keep the pages'
commands, generated tables, file sizes and headline figures true."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from markdown_commands import (
    PROJECT_ROOT,
    STAGES,
    bad_data_paths,
    bare_python,
    missing_targets,
    parse_stage_commands,
)

DOCS = PROJECT_ROOT / "docs"
# The study READMEs (the site includes three of them), whose commands count as the pages'.
STUDIES = sorted((PROJECT_ROOT / "experiments").glob("*/README.md"))
PAGES = sorted(DOCS.rglob("*.md")) + STUDIES + [PROJECT_ROOT / "CHANGELOG.md"]


def _text(path) -> str:
    return path.read_text()


def _between(text: str, start: str, end: str) -> str:
    return text.split(start + "\n", 1)[1].split("\n" + end, 1)[0]


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (the dev extra)"
)
def test_the_docs_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for page in ("index.html", "results/index.html", "reference/edge/index.html"):
        assert (tmp_path / page).is_file(), page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_command_on_a_page_names_a_module_or_script_that_exists(page):
    text = _text(page)
    assert bare_python(text) == []
    assert missing_targets(text) == []
    assert bad_data_paths(text) == []


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_command_on_the_pages_parses(stage):
    parsed = sum(parse_stage_commands(_text(page), stage) for page in PAGES)
    assert parsed >= 1, f"no literal pneumocnn.{stage} command on the docs pages"


def test_the_shift_study_tables_are_the_saved_results():
    """`shift_study.py --write-tables` wrote them; nobody typed them."""
    study = PROJECT_ROOT / "experiments" / "shift"
    sys.path.insert(0, str(study))  # the study's table code is a script beside its results
    from shift_tables import markdown_tables

    block = _between(
        _text(study / "README.md"),
        "<!-- shift-study tables: start -->",
        "<!-- shift-study tables: end -->",
    )
    assert block == markdown_tables(study / "results")


def test_the_ablation_tables_are_the_saved_results():
    """`ablation.py --write-tables` wrote them from ablation_results.csv."""
    import pandas as pd

    study = PROJECT_ROOT / "experiments" / "ablation"
    sys.path.insert(0, str(study))
    import ablation

    block = _between(
        _text(study / "README.md"),
        "<!-- ablation tables: start -->",
        "<!-- ablation tables: end -->",
    )
    assert block == ablation.tables(pd.read_csv(study / "ablation_results.csv"))


def test_the_adaptation_readme_keeps_the_markers_its_table_script_writes_between():
    text = _text(PROJECT_ROOT / "experiments" / "adaptation" / "README.md")
    assert text.count("<!-- tables:begin -->") == text.count("<!-- tables:end -->") == 1


def test_the_shipped_file_sizes_on_the_models_page_are_the_files_in_saved_models():
    row = re.compile(r"^\| `(pneumocnn[\w.]*)`[^|\n]*\| ([\d,]+) \|$", re.MULTILINE)
    rows = row.findall(_text(DOCS / "models.md"))
    assert len(rows) >= 8, "the shipped models' file tables were not found"
    for name, size in rows:
        actual = (PROJECT_ROOT / "saved_models" / name).stat().st_size
        assert int(size.replace(",", "")) == actual, f"docs/models.md says {name} is {size} bytes"


def test_the_readmes_figures_on_new_films_are_the_docs_figures():
    """Every figure of the README's "What to expect" table is on the docs' What to expect page
    and in the CHANGELOG's entry for the shipped model, so the three cannot disagree."""
    readme = _text(PROJECT_ROOT / "README.md")
    table = readme.split("## What to expect", 1)[1].split("\n## ", 1)[0]
    figures = set(re.findall(r"\b0\.\d{3}\b(?: \[0\.\d{3}-[01]\.\d{3}\])?", table))
    assert len(figures) >= 12
    results = _text(DOCS / "results.md")
    missing = sorted(figure for figure in figures if figure not in results)
    assert missing == [], f"docs/results.md lacks {missing}"
    withheld = re.findall(r"\*\*(0\.\d{3} \[[^\]]+\])\*\*", table)
    changelog = _text(PROJECT_ROOT / "CHANGELOG.md")
    assert len(withheld) == 4 and all(figure in changelog for figure in withheld)


def test_the_adapted_figures_are_the_adaptation_studys_default_row():
    """The README's adapted row, the adaptation page and the shipped model card quote the study
    table's default row (which `experiments/adaptation/tables.py` writes from saved results)."""
    readme = _text(PROJECT_ROOT / "README.md")
    row = next(line for line in readme.splitlines() if line.startswith("| adapted to the"))
    figures = re.findall(r"0\.\d{3} ± 0\.\d{3} \[0\.\d{3}-[01]\.\d{3}\]", row)
    assert len(figures) == 3, row
    study = _text(PROJECT_ROOT / "experiments" / "adaptation" / "README.md")
    # The row that ran the command's defaults, shown as "default (<row>)" (see tables.py).
    default = next(line for line in study.splitlines() if line.startswith("| default ("))
    assert all(figure in default for figure in figures), (figures, default)
    assert all(figure in _text(DOCS / "adaptation.md") for figure in figures)
    card = _text(PROJECT_ROOT / "saved_models" / "MODEL_CARD.md")
    for figure in figures:  # the card gives the mean and the interval, not the spread
        mean, interval = figure.split(" ± ")[0], figure.split("[")[1].rstrip("]")
        assert f"{mean} ({interval})" in card, figure


def _resolves(name: str) -> bool:
    """Whether `pneumocnn.a.b.c` is a module, or an attribute of the longest module prefix."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def test_every_pneumocnn_name_on_a_page_exists():
    """A module, function or constant the pages name (`pneumocnn.data.images.load_image`) is in
    the package: a rename or a move fails here."""
    text = "\n".join(_text(page) for page in [*PAGES, PROJECT_ROOT / "README.md"])
    names = set(re.findall(r"`(pneumocnn(?:\.\w+)+)", text))
    names = {name for name in names if name.rsplit(".", 1)[-1] not in ("json", "keras", "NAME")}
    assert len(names) >= 20
    assert sorted(name for name in names if not _resolves(name)) == []
