"""Frozen settings dataclasses, saved as JSON and turned into command-line flags.

`Settings` gives a frozen dataclass `to_dict`, `save`, `from_dict` (unknown keys refused) and
`load`; `setting(default, help)` declares a field with its one-line reason, which becomes its
flag's help. `add_config_arguments` makes one flag per field, `config_from_args` reads them
back: defaults < `--config FILE` < flags. `pneumocnn.core.config.Config` (a training run) and
`pneumocnn.core.adapt_config.AdaptConfig` (an adaptation to a site) are built on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pneumocnn.core.files import write_text_atomic


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its default and the one-line reason its flag's help shows."""
    return dataclasses.field(default=default, metadata={"help": help})


class Settings:
    """What every frozen settings dataclass can do: JSON in and out, strictly."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Writes the config as JSON to `path` (under a temporary name, then renamed)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Settings:
        """Builds the settings from a dict, refusing keys that are not fields; a field left out
        takes its default.

        Raises:
            ValueError: if `values` holds a key that is not a field.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown {cls.__name__} keys {unknown}. Expected some of {sorted(known)}. "
                f"Received: keys={sorted(values)}"
            )
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> Settings:
        """Reads a config written by `Settings.save` (or by hand).

        Raises:
            FileNotFoundError: if `path` does not exist.
            ValueError: if the file is not a JSON object of the fields.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Config file not found. Received: path='{path}'. Pass a JSON file written by "
                f"a previous run (its config.json) or one you wrote with some {cls.__name__} "
                "fields."
            )
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"Config file '{path}' is not valid JSON ({error}). Received: path='{path}'. "
                "Fix the file, or pass --config a run's config.json."
            ) from error
        if not isinstance(values, dict):
            raise ValueError(
                f"Config file '{path}' holds a JSON {type(values).__name__}, not an object of "
                f"{cls.__name__} fields. Received: path='{path}'. Write it as "
                '{"field": value, ...} (e.g. {"image_size": 128}), as a run\'s config.json is.'
            )
        return cls.from_dict(values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser_type(annotation: Any) -> tuple[Any, tuple[str, ...] | None]:
    """Returns (converter, choices) for a field's type annotation."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str, typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _parser_type(inner[0])
    return annotation, None


def add_config_arguments(parser: argparse.ArgumentParser, settings: type[Settings]) -> None:
    """Adds one flag per field of `settings` (`Config` or `AdaptConfig`), plus `--config FILE`.

    A flag left out keeps the value from `--config` (if given), else the field's default.

    Args:
        parser: the command's parser.
        settings: the dataclass whose fields become flags.
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"JSON file of {settings.__name__} fields (e.g. a run's config.json); flags "
        "override it.",
    )
    hints = typing.get_type_hints(settings)
    for field in dataclasses.fields(settings):
        converter, choices = _parser_type(hints[field.name])
        # argparse expands %-formats in help: a literal "25%" must reach it as "25%%".
        help_text = f"{field.metadata['help']} (default: {field.default!r})".replace("%", "%%")
        if converter is bool:
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                type=converter,
                choices=choices,
                default=None,
                metavar=None if choices else field.name.upper(),
                help=help_text,
            )


def config_from_args(args: argparse.Namespace, settings: type[Settings]) -> Any:
    """Builds a `settings`  from parsed flags: field defaults < `--config`
    file < flags."""
    base = settings.load(args.config) if getattr(args, "config", None) else settings()
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(settings)
        if getattr(args, field.name, None) is not None
    }
    return dataclasses.replace(base, **overrides)
