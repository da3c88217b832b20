"""MediaPipe's TFLite metadata writer and displayer, made importable (the `train` extra).

`pneumocnn.edge.embedded` writes and reads the metadata with them; import them from here, never
from MediaPipe directly, so that the stand-in below is in place first.

mediapipe 1.2's wheel leaves out the compiled helper `_pywrap_metadata_version` that its
`metadata` module imports (to stamp the minimum metadata parser version), so the writer cannot be
imported as shipped. When that module is missing, this module installs a stand-in with the same
function before importing the writer: `minimum_parser_version`, the rule of MediaPipe's
`metadata_version.cc`, written out by hand because no installable package exposes it.
"""

from __future__ import annotations

import sys
import types


def minimum_parser_version(metadata_buffer: bytes) -> str:
    """The lowest metadata parser version that reads every field of a metadata flatbuffer.

    The rule of MediaPipe's `metadata_version.cc`: 1.0.0, raised by each member added later
    (vocabulary files 1.0.1, process units 1.1.0, tensor groups 1.2.0, audio 1.3.0, ScaNN index
    files 1.4.0, versioned associated files 1.4.1, custom metadata 1.5.0, tokenizers).
    """
    model = schema.ModelMetadataT.InitFromObj(
        schema.ModelMetadata.GetRootAsModelMetadata(bytearray(metadata_buffer), 0)
    )
    versions = [(1, 0, 0)]
    tokenizers = {
        schema.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
        schema.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
        schema.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1),
    }

    def files(items):
        for item in items or []:
            if item.type == schema.AssociatedFileType.VOCABULARY:
                versions.append((1, 0, 1))
            if item.type == schema.AssociatedFileType.SCANN_INDEX_FILE:
                versions.append((1, 4, 0))
            if item.version is not None:
                versions.append((1, 4, 1))

    def units(items):
        for item in items or []:
            versions.append(tokenizers.get(item.optionsType, (1, 0, 0)))

    for subgraph in model.subgraphMetadata or []:
        for tensor in [
            *(subgraph.inputTensorMetadata or []),
            *(subgraph.outputTensorMetadata or []),
        ]:
            files(tensor.associatedFiles)
            units(tensor.processUnits)
            content = tensor.content
            if content is not None and (
                content.contentPropertiesType == schema.ContentProperties.AudioProperties
            ):
                versions.append((1, 3, 0))
        files(subgraph.associatedFiles)
        for group in (subgraph.inputProcessUnits, subgraph.outputProcessUnits):
            if group is not None:
                versions.append((1, 1, 0))
                units(group)
        for group in (subgraph.inputTensorGroups, subgraph.outputTensorGroups):
            if group is not None:
                versions.append((1, 2, 0))
        if subgraph.customMetadata is not None:
            versions.append((1, 5, 0))
    files(model.associatedFiles)
    return ".".join(str(part) for part in max(versions))


def _install_version_stand_in() -> None:
    """Puts `minimum_parser_version` where MediaPipe's metadata module imports it from: the
    missing module, and the packages above it that the wheel lacks (`from a.b import c` needs
    both)."""
    parent = "mediapipe.tasks"
    for part in ("cc", "metadata", "python", "_pywrap_metadata_version"):
        name = f"{parent}.{part}"
        module = sys.modules.get(name) or types.ModuleType(name)
        module.__path__ = getattr(module, "__path__", [])
        sys.modules[name] = module
        setattr(sys.modules[parent], part, module)
        parent = name
    sys.modules[parent].GetMinimumMetadataParserVersion = minimum_parser_version


try:
    try:
        import mediapipe.tasks.cc.metadata.python._pywrap_metadata_version  # noqa: F401
    except ImportError:
        import mediapipe.tasks  # noqa: F401  (without MediaPipe: the ImportError below)

        _install_version_stand_in()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema
    from mediapipe.tasks.python.metadata.metadata import MetadataDisplayer
    from mediapipe.tasks.python.metadata.metadata_writers import (
        metadata_info,
        metadata_writer,
        writer_utils,
    )
except ImportError as error:
    raise ImportError(
        "Embedding TFLite metadata needs MediaPipe's metadata writer. Install it with: "
        f'pip install "pneumocnn[train]" (or pip install mediapipe). ({error})'
    ) from error

__all__ = [
    "MetadataDisplayer",
    "metadata_info",
    "metadata_writer",
    "minimum_parser_version",
    "schema",
    "writer_utils",
]
