"""events.files.write_file_atomic: whole versions only, final mode from the start, nothing left behind."""

from __future__ import annotations

import os
import stat

import pytest

from events.files import write_file_atomic


def test_replaces_the_content_with_the_mode_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    write_file_atomic(path, b"new", 0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["key.pem"]


def test_a_failed_write_leaves_the_old_content_and_no_temp_file(tmp_path):
    path = tmp_path / "status.json"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_file_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["status.json"]


def test_a_stamp_changes_when_a_file_is_rewritten_or_replaced_and_marks_a_missing_one(tmp_path):
    from events.files import stamp

    a, b = tmp_path / "a", tmp_path / "b"
    write_file_atomic(a, b"one")
    before = stamp(a, b)
    assert before[0] is not None and before[1] is None
    assert stamp(a, b) == before  # nothing changed: the same stamp
    write_file_atomic(a, b"two")  # replaced by rename: a new inode
    assert stamp(a, b) != before
