"""Atomic writes: a reader never sees a half-written file or checkpoint folder."""

import pytest

from pyro_monteclora.storage.atomic import (
    atomic_directory,
    atomic_file,
    atomic_write_json,
    finite_or_none,
    replace_directory,
)


def test_a_failed_directory_write_leaves_the_old_one(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "a.txt").write_text("new, half")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no staging folder left


def test_a_crash_between_the_two_renames_keeps_the_old_copy_until_the_new_one_is_in(tmp_path):
    target, previous = tmp_path / "checkpoint", tmp_path / "checkpoint.old"
    previous.mkdir()
    (previous / "a.txt").write_text("last good")
    stale = tmp_path / ".checkpoint.x1.tmp"  # a staging folder of a killed write
    stale.mkdir()
    with atomic_directory(target) as staging:
        assert previous.exists()  # still there while the new folder is written
        (staging / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert not previous.exists() and not stale.exists()


def test_replace_directory_swaps(tmp_path):
    target, staging = tmp_path / "t", tmp_path / "s"
    target.mkdir()
    staging.mkdir()
    (staging / "x").write_text("1")
    replace_directory(staging, target)
    assert (target / "x").read_text() == "1" and not staging.exists()


def test_json_is_strict(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"auroc": float("nan")})
    assert (tmp_path / "m.json").read_text() == '{\n  "auroc": null\n}\n'
    assert finite_or_none([float("-inf"), 1.5]) == [None, 1.5]


def test_a_failed_file_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [target.name]
    with atomic_file(target) as temporary:
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new" and oct(target.stat().st_mode & 0o777) == "0o644"
