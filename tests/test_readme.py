"""The README is the front door and its commands run as printed: the two set-up commands come
first (CI runs the second), every command uses the virtual environment's Python, names a module
or script that exists, and passes its command's argument parser."""

from __future__ import annotations

import re

import pytest
from markdown_commands import (
    PROJECT_ROOT,
    STAGES,
    bad_data_paths,
    bare_python,
    commands,
    missing_targets,
    parse_stage_commands,
)

README = (PROJECT_ROOT / "README.md").read_text()
SET_UP = [
    'python3 -m venv .venv && .venv/bin/pip install -e ".[train]" && .venv/bin/python -m '
    "pneumocnn.train --data-dir ../shared/chest_xray",
    'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest',
]


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_the_first_two_code_blocks_are_the_set_up_commands():
    """`.ci/run` runs the second code block's command as the test command."""
    assert [block.strip() for block in _code_blocks(README)[:2]] == SET_UP


def test_the_readme_stays_a_front_door():
    """Under 300 lines, one heading per part, the shipped model on a folder and the figures on
    new films early, the withheld half among them."""
    lines = README.splitlines()
    assert len(lines) < 300
    assert lines[0] == "# pneumocnn"
    first_screen = "\n".join(lines[:60])
    assert ".venv/bin/python -m pneumocnn.predict xrays/ --format csv" in first_screen
    assert "## What to expect" in first_screen
    assert "withheld half" in README


def test_the_shipped_int8_size_in_the_opening_is_the_file():
    size = (PROJECT_ROOT / "saved_models" / "pneumocnn_int8.tflite").stat().st_size
    assert f"{size:,}-byte int8" in README


def test_no_command_uses_a_bare_python():
    """`python -m ...` is not the venv's Python after the install command."""
    assert bare_python(README) == []


def test_the_readme_names_only_modules_and_scripts_that_exist():
    assert len(commands(README)) >= 8
    assert missing_targets(README) == []


@pytest.mark.parametrize("module", STAGES)
def test_every_printed_stage_command_parses(module):
    """Each literal `pneumocnn.<module>` command in the README is accepted by that command's own
    parser (a renamed flag or a missing argument fails here, not on a user's machine)."""
    assert parse_stage_commands(README, module) >= 1, f"no literal pneumocnn.{module} command"


def test_data_paths_in_commands_exist_from_the_project_root():
    """`--data-dir`, `--calibrate-on` and `--site-dir` point at ../shared/chest_xray or a
    placeholder."""
    assert bad_data_paths(README) == []


def test_every_relative_link_points_at_a_file_of_the_checkout():
    """The README links into docs/ (the site CI builds); a moved page fails here."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    links += re.findall(r"^\[[^\]]+\]: (\S+?)(?:#\S*)?$", README, re.MULTILINE)
    relative = [link for link in links if "://" not in link]
    assert relative, "the README links to no page"
    for link in relative:
        assert (PROJECT_ROOT / link).exists(), link
