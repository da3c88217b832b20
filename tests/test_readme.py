"""The README's commands run as printed after its install command (issue 16): every command uses
the virtual environment's Python, names a module or script that exists, and passes its
command's argument parser."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
README = (PROJECT_ROOT / "README.md").read_text()
COMMAND = re.compile(r"\.venv/bin/python (-m [\w.]+|[\w/.-]+\.py)(.*)")
# Placeholders the README uses for typed values.
PLACEHOLDERS = {"SEED": "1", "K": "1", "N": "1"}


def _snippets() -> list[str]:
    """The lines of fenced code blocks and the inline code spans that fit on one line (a span
    wrapped over two lines is prose quoting part of a command)."""
    snippets, fenced = [], False
    for line in README.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced:
            snippets.append(line)
        else:
            snippets += re.findall(r"`([^`]+)`", line)
    return snippets


def _commands() -> list[tuple[str, str]]:
    commands = []
    for snippet in _snippets():
        for match in COMMAND.finditer(snippet):
            rest = re.split(r" #|&&|>|\s\|\s", match.group(2))[0]
            commands.append((match.group(1), rest))
    return commands


def _argv(rest: str) -> list[str] | None:
    """The arguments as a shell splits them, or None where the README shows a pattern (`A\\|B`,
    `[--flag X]`, `...`) rather than one literal command."""
    if any(mark in rest for mark in ("\\|", "[", "...")):
        return None
    try:
        return [PLACEHOLDERS.get(word, word) for word in shlex.split(rest)]
    except ValueError:
        return None


def test_no_command_uses_a_bare_python():
    """`python -m ...` is not the venv's Python after the install command."""
    bare = re.findall(r"(?<![/\w])python (?:-m |experiments/|tests/)\S+", README)
    assert bare == []


def test_the_readme_names_only_modules_and_scripts_that_exist():
    commands = _commands()
    assert len(commands) > 30
    for target, _ in commands:
        if target.startswith("-m "):
            module = target[3:]
            if module == "pytest" or module.split(".")[-1].isupper():  # pneumocnn.NAME
                continue
            assert importlib.util.find_spec(module) is not None, module
        else:
            assert (PROJECT_ROOT / target).is_file(), target


@pytest.mark.parametrize("module", ["train", "evaluate", "export", "predict", "explain", "web"])
def test_every_printed_stage_command_parses(module):
    """Each literal `pneumocnn.<module>` command in the README is accepted by that command's own
    parser (a renamed flag or a missing argument fails here, not on a user's machine)."""
    parser = importlib.import_module(f"pneumocnn.{module}").build_parser()
    parsed = 0
    for target, rest in _commands():
        argv = _argv(rest)
        if target != f"-m pneumocnn.{module}" or not argv:  # a pattern, or prose naming it
            continue
        parser.parse_args(argv)  # exits 2 on an unknown flag or a missing argument
        parsed += 1
    assert parsed >= 1, f"no literal pneumocnn.{module} command in the README"


def test_data_paths_in_commands_exist_from_the_project_root():
    """`--data-dir` and `--calibrate-on` point at ../shared/chest_xray (or a placeholder)."""
    for _, rest in _commands():
        for flag, value in re.findall(r"(--data-dir|--calibrate-on)[ =](\S+)", rest):
            assert value.startswith("../shared/chest_xray") or value.isupper(), (flag, value)


def test_the_shift_study_tables_in_the_readme_are_the_saved_results():
    """The README's study tables are generated (`shift_study.py --write-readme README.md`), not
    typed: they match what the saved results give today."""
    import sys

    study = PROJECT_ROOT / "experiments" / "shift"
    sys.path.insert(0, str(study))  # the study's table code is a script beside its results
    from shift_tables import markdown_tables

    block = README.split("<!-- shift-study tables: start -->\n")[1].split(
        "\n<!-- shift-study tables: end -->"
    )[0]
    assert block == markdown_tables(study / "results")


def test_the_shipped_file_sizes_in_the_readme_are_the_files_in_saved_models():
    rows = re.findall(r"^\| `(pneumocnn[\w.]*)`[^|\n]*\| ([\d,]+) \|$", README, re.MULTILINE)
    assert len(rows) >= 4, "the README's table of shipped files was not found"
    for name, size in rows:
        actual = (PROJECT_ROOT / "saved_models" / name).stat().st_size
        assert int(size.replace(",", "")) == actual, f"README says {name} is {size} bytes"
