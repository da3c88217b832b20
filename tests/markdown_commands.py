"""The commands a Markdown page prints, for the tests that keep the README and the docs true."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"\.venv/bin/python (-m [\w.]+|[\w/.-]+\.py)(.*)")
# Placeholders the pages use for typed values.
PLACEHOLDERS = {"SEED": "1", "K": "1", "N": "1"}
# The commands whose printed invocations are parsed with their own parser.
STAGES = ("train", "evaluate", "export", "adapt", "predict", "explain", "web")


def snippets(text: str) -> list[str]:
    """The lines of fenced code blocks and the inline code spans that fit on one line (a span
    wrapped over two lines is prose quoting part of a command)."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            found.append(line)
        else:
            found += re.findall(r"`([^`]+)`", line)
    return found


def commands(text: str) -> list[tuple[str, str]]:
    """`(target, rest)` for each `.venv/bin/python` command: the module (`-m name`) or script,
    and what follows it up to a comment, `&&`, a redirection or a pipe."""
    found = []
    for snippet in snippets(text):
        for match in COMMAND.finditer(snippet):
            rest = re.split(r" #|&&|>|\s\|\s", match.group(2))[0]
            found.append((match.group(1), rest))
    return found


def argv(rest: str) -> list[str] | None:
    """The arguments as a shell splits them, or None where the page shows a pattern (`A\\|B`,
    `[--flag X]`, `...`) rather than one literal command."""
    if any(mark in rest for mark in ("\\|", "[", "...")):
        return None
    try:
        return [PLACEHOLDERS.get(word, word) for word in shlex.split(rest)]
    except ValueError:
        return None


def missing_targets(text: str) -> list[str]:
    """The modules and scripts the page's commands name that do not exist."""
    missing = []
    for target, _ in commands(text):
        if target.startswith("-m "):
            module = target[3:]
            if module == "pytest" or module.split(".")[-1].isupper():  # pneumocnn.NAME
                continue
            if importlib.util.find_spec(module) is None:
                missing.append(module)
        elif not (PROJECT_ROOT / target).is_file():
            missing.append(target)
    return missing


def parse_stage_commands(text: str, stage: str) -> int:
    """Parses each literal `pneumocnn.<stage>` command of the page with that command's own
    parser (exits 2 on an unknown flag or a missing argument); returns how many it parsed."""
    parser = importlib.import_module(f"pneumocnn.{stage}").build_parser()
    parsed = 0
    for target, rest in commands(text):
        words = argv(rest)
        if target != f"-m pneumocnn.{stage}" or not words or "--help" in words:
            continue  # a pattern, prose naming the command, or its help
        parser.parse_args(words)
        parsed += 1
    return parsed


def bad_data_paths(text: str) -> list[tuple[str, str]]:
    """`--data-dir`, `--calibrate-on` and `--site-dir` values that are neither under
    ../shared/chest_xray nor an upper-case placeholder."""
    bad = []
    for _, rest in commands(text):
        for flag, value in re.findall(r"(--data-dir|--calibrate-on|--site-dir)[ =](\S+)", rest):
            if not (value.startswith("../shared/chest_xray") or value.isupper()):
                bad.append((flag, value))
    return bad


def bare_python(text: str) -> list[str]:
    """`python -m ...` and `python experiments/...` without the venv's path."""
    return re.findall(r"(?<![/\w])python (?:-m |experiments/|tests/)\S+", text)
