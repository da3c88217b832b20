"""The CLI skeleton: quiet, instant `--help`, and documented exit codes for every command."""

import errno
import subprocess
import sys

import pytest

from pneumocnn import cli
from pneumocnn.core.commit import BusyError
from pneumocnn.core.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_CHECK_FAILED,
    EXIT_INTERNAL,
    EXIT_SOME_INPUTS_FAILED,
    EXIT_USAGE,
    CannotWriteError,
    DataError,
    NoInputsError,
    OutputClosedError,
    UsageError,
    exit_code_of,
)
from pneumocnn.core.metadata import MetadataError
from pneumocnn.data.pixels import ImageLoadError
from pneumocnn.edge.parity import ParityError
from pneumocnn.training.loop import TrainingDivergedError

COMMANDS = ("train", "evaluate", "export", "predict", "explain", "web")


@pytest.mark.parametrize("command", COMMANDS)
def test_building_the_parser_imports_no_tensorflow(command):
    # `--help` must come at once and without TensorFlow's start-up log lines: the command
    # modules import TensorFlow only inside the functions that run after parsing.
    script = (
        "import sys\n"
        f"import pneumocnn.{command} as command\n"
        "command.build_parser()\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0_and_prints_the_usage_only(command):
    done = subprocess.run(
        [sys.executable, "-m", f"pneumocnn.{command}", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: python -m pneumocnn.{command}")
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NoInputsError("none"), EXIT_SOME_INPUTS_FAILED),
        (UsageError("bad flag"), EXIT_USAGE),
        (FileNotFoundError("gone"), EXIT_USAGE),
        (DataError("no class folders"), EXIT_USAGE),
        (MetadataError("bad sha"), EXIT_USAGE),
        (ImageLoadError("broken"), EXIT_USAGE),
        (ParityError("strays"), EXIT_CHECK_FAILED),
        (TrainingDivergedError("nan"), EXIT_USAGE),
        (CannotWriteError("disk full"), EXIT_USAGE),
        (BusyError("another export"), EXIT_USAGE),
        (OutputClosedError("| head -1"), EXIT_BROKEN_PIPE),
        (ZeroDivisionError("a bug"), EXIT_INTERNAL),
    ],
)
def test_each_error_class_maps_to_its_documented_exit_code(error, code):
    assert exit_code_of(error) == code


def test_an_unexpected_error_prints_the_traceback_and_exits_3(capsys):
    import argparse

    def broken(args):
        raise ZeroDivisionError("division by zero")

    assert cli.run(argparse.ArgumentParser(prog="demo"), broken, []) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "bug in demo" in err


@pytest.mark.parametrize(
    "number, fix",
    [(errno.ENOSPC, "free space"), (errno.EROFS, "read-only"), (errno.EACCES, "permissions")],
)
def test_a_file_system_fault_of_the_environment_exits_2_naming_the_path_and_the_fix(
    capsys, number, fix
):
    import argparse
    import os

    def faulty(args):
        raise OSError(number, os.strerror(number), "/some/out/file.json")

    assert cli.run(argparse.ArgumentParser(prog="demo"), faulty, []) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and "/some/out/file.json" in err and fix in err


def test_a_bad_flag_exits_2_before_any_work():
    done = subprocess.run(
        [sys.executable, "-m", "pneumocnn.predict", "x.jpeg", "--no-such-flag"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "--no-such-flag" in done.stderr


def test_no_library_module_imports_a_command_module():
    # Imports run one way: the command modules (pneumocnn/<command>.py) use the library in the
    # stage subpackages, never the reverse.
    import ast
    from pathlib import Path

    package = Path(cli.__file__).parent
    commands = {path.stem for path in package.glob("*.py")} - {"__init__"}
    assert {"train", "evaluate", "export", "predict", "explain", "bench", "app", "web"} <= commands
    library = [path for path in package.rglob("*.py") if path.parent != package]
    assert len(library) > 20
    for path in library:
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "pneumocnn":
                imported.update(f"pneumocnn.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert not imported & {f"pneumocnn.{name}" for name in commands}, path


def test_no_library_module_imports_inside_a_function():
    # The layout's rule: library modules import at the top; only the command modules import
    # later (TensorFlow after --help, or not at all for what does not need it).
    import ast
    from pathlib import Path

    package = Path(cli.__file__).parent
    for path in (path for path in package.rglob("*.py") if path.parent != package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                hidden = [
                    sub.lineno
                    for sub in ast.walk(node)
                    if isinstance(sub, ast.Import | ast.ImportFrom)
                ]
                assert not hidden, f"{path}:{hidden} imports inside {node.name}"


def test_a_package_of_a_missing_extra_is_a_usage_error_naming_the_install():
    # The core install has no TensorFlow: a command that needs it says which extra to install,
    # instead of "unexpected ModuleNotFoundError ... This is a bug".
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = sys.modules['keras'] = None  # as if not installed\n"
        "from pneumocnn import explain\n"
        "sys.exit(explain.main(['film.png']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert 'pip install "pneumocnn[train]"' in done.stderr and "Traceback" not in done.stderr
    # A module that no extra installs is a bug of the package: it keeps its traceback.
    assert cli._missing_extra(ModuleNotFoundError("x", name="no_such_module"), "prog") is None
