"""The development half can be rebuilt from a Kaggle download: `experiments/tools/
development_half.txt` names its 313 films and `development_half.py` copies exactly those."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import REAL_DATA, requires_real_data

TOOLS = Path(__file__).resolve().parents[1] / "experiments" / "tools"
sys.path.insert(0, str(TOOLS))  # the tool is a script beside its file list

import development_half  # noqa: E402


def _fake_download(root: Path, names: list[str]) -> Path:
    """A Kaggle-like tree (the archive's nested chest_xray/chest_xray/) with tiny files."""
    test = root / "chest_xray" / "chest_xray" / "test"
    for name in names:
        (test / name).parent.mkdir(parents=True, exist_ok=True)
        (test / name).write_bytes(name.encode())
    (test / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"not in the half")
    return root / "chest_xray"


def test_the_list_names_313_films_117_normal_122_bacterial_74_viral():
    names = development_half.listed_files()
    assert len(names) == len(set(names)) == 313
    assert sum(name.startswith("NORMAL/") for name in names) == 117
    assert sum("_bacteria_" in name for name in names) == 122
    assert sum("_virus_" in name for name in names) == 74


@requires_real_data
def test_the_list_is_the_shared_development_half():
    shared = sorted(
        str(path.relative_to(REAL_DATA / "test"))
        for path in (REAL_DATA / "test").glob("*/*")
        if path.is_file()
    )
    assert sorted(development_half.listed_files()) == shared


def test_rebuild_copies_exactly_the_listed_files_in_the_same_layout(tmp_path):
    names = development_half.listed_files()
    download = _fake_download(tmp_path / "download", names)
    out = tmp_path / "half"
    assert development_half.main([str(download), str(out)]) == 0
    copied = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert copied == sorted(names)
    assert (out / names[0]).read_bytes() == names[0].encode()


def test_rebuild_refuses_naming_the_missing_file_and_copies_nothing(tmp_path):
    names = development_half.listed_files()
    download = _fake_download(tmp_path / "download", names[1:])
    out = tmp_path / "half"
    with pytest.raises(SystemExit, match=names[0].replace("/", ".")):
        development_half.rebuild(download, out)
    assert not out.exists()


def test_rebuild_refuses_to_overwrite_a_previous_copy(tmp_path):
    names = development_half.listed_files()
    download = _fake_download(tmp_path / "download", names)
    out = tmp_path / "half"
    development_half.rebuild(download, out)
    with pytest.raises(SystemExit, match="exists already"):
        development_half.rebuild(download, out)
