"""Bounded reads of originals: regular files only, size and time limits, no hang on a FIFO."""

from __future__ import annotations

import os
import socket
import threading

import pyarrow.fs as pafs
import pytest

from ray_export.file_read import FileTooLarge, NotRegularFile, ReadTimedOut, read_file, read_local_file


def test_regular_file_is_read_whole(tmp_path):
    data = os.urandom(20_000_000 + 7)  # more than two read chunks
    (tmp_path / "a.png").write_bytes(data)
    assert read_local_file(str(tmp_path / "a.png")) == data
    assert read_file(pafs.LocalFileSystem(), str(tmp_path / "a.png"), is_local=False) == data


def test_fifo_is_refused_at_once_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def attempt():
        try:
            read_local_file(str(fifo))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)  # liveness: a blocking open would never return
    assert not thread.is_alive()
    assert isinstance(result[0], NotRegularFile) and "named pipe" in str(result[0])


def test_socket_folder_and_device_are_refused(tmp_path):
    sock_path = tmp_path / "s.png"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        with pytest.raises(OSError):  # a socket cannot even be opened as a file
            read_local_file(str(sock_path))
    finally:
        server.close()
    with pytest.raises(NotRegularFile, match="a device"):
        read_local_file("/dev/zero")
    (tmp_path / "d").mkdir()
    with pytest.raises(NotRegularFile, match="a folder"):
        read_local_file(str(tmp_path / "d"))
    with pytest.raises(NotRegularFile):
        read_file(pafs.LocalFileSystem(), str(tmp_path / "d"), is_local=False)


def test_size_limit_and_time_limit(tmp_path):
    (tmp_path / "big.png").write_bytes(b"x" * 1000)
    with pytest.raises(FileTooLarge, match="limit of 999"):
        read_local_file(str(tmp_path / "big.png"), max_bytes=999)
    with pytest.raises(FileTooLarge):
        read_file(pafs.LocalFileSystem(), str(tmp_path / "big.png"), is_local=False, max_bytes=999)
    with pytest.raises(ReadTimedOut):
        read_local_file(str(tmp_path / "big.png"), timeout_s=-1.0)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_local_file(str(tmp_path / "nope.png"))
    with pytest.raises(FileNotFoundError):
        read_file(pafs.LocalFileSystem(), str(tmp_path / "nope.png"), is_local=False)
