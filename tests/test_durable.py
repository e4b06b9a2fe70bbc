"""Durable writes: atomic replacement and appends that leave no partial record behind."""

from __future__ import annotations

import errno
import os

import pytest

from fhi_al.durable import append_durable, atomic_write_text


def test_failed_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "data.txt"
    append_durable(path, "first\n")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        append_durable(path, "second record that reached the page cache\n")
    assert path.read_text() == "first\n"


def test_failed_atomic_write_keeps_the_old_content_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic_write_text(path, "old")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
