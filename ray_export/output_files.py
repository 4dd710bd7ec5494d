"""The files an export makes beside a local output, from its start to its commit or abort.

An export to ``<output>`` makes at most these, and nothing else:

- ``<output>.lock``: an exclusive ``flock`` held by the export's driver for the whole run, holding its
  export id. The lock ends with the process that holds it, however that process ends.
- the partial ZIP: an unnamed file in the output's folder (Linux ``O_TMPFILE``), given its name only at
  the commit, by a hard link of the open file to ``<output>`` (``linkat``). An export that dies before
  its commit leaves nothing: the file goes with the last descriptor. Where the file system cannot make
  unnamed files, it is ``<output>.<export id>.partial``, created exclusively.
- spool files: unnamed temporary files beside the output (``tempfile.TemporaryFile``: ``O_TMPFILE``, or
  created and unlinked at once).

The rules, all in this module:

- nothing is opened through a symbolic link or an existing non-regular file: such a path is refused
  (:class:`UnsafeOutputPath`, a usage error naming it) and never written through;
- nothing is written into a file the export did not create: a lock file left by a dead export is
  removed and made again, not rewritten; a file of that name that is not an export's lock is refused;
- the sweep removes only what is provably a dead export's leftover of *this* output: a regular file
  named exactly ``<output>.<export id>.partial`` (or a spool folder ``.<output>.spool-XXXXXXXX`` of
  earlier versions), and only while holding this output's lock, which no live export of it can then
  hold. Another output's files (``<output>.1.<id>.partial``) never match.

The driver calls :meth:`OutputFiles.start` (lock, sweep) and :meth:`OutputFiles.release`; the ZIP writer
calls :func:`create_partial`, :meth:`PartialFile.commit` and :meth:`PartialFile.discard`, and makes its
spool files with :func:`spool_file`. :func:`remove_export_files` is the driver's clean-up after a failed
or cancelled export.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

LOCK_SUFFIX = ".lock"
PARTIAL_SUFFIX = ".partial"
#: What the export ids that name partial files look like (``run.new_export_id``).
EXPORT_ID_PATTERN = r"[0-9a-f]{12}"
#: The most bytes a lock file holds (an export id); a larger file of that name is not an export's lock.
_MAX_LOCK_BYTES = 64
#: The permissions of the committed output before the umask (those ``open(path, "wb")`` gives).
OUTPUT_MODE = 0o666


class UnsafeOutputPath(Exception):
    """A path beside the output that the export would create is a link, a non-regular file, or a file
    that is not the export's own: it is refused, never written through (a usage error)."""


class OutputLocked(Exception):
    """Another live export writes the same output."""


class OutputFolderError(Exception):
    """The output's folder is missing or not writable."""


def partial_path(output: Path, export_id: str) -> Path:
    """The name of ``export_id``'s partial file where the file system cannot make unnamed files."""
    return output.with_name(f"{output.name}.{export_id}{PARTIAL_SUFFIX}")


def lock_path(output: Path) -> Path:
    """The lock file of ``output``."""
    return output.with_name(output.name + LOCK_SUFFIX)


def spool_prefix(output: Path) -> str:
    """Name prefix of the spool folders that earlier versions made beside ``output``."""
    return f".{output.name}.spool-"


def _leftover_pattern(output: Path) -> re.Pattern[str]:
    # the names partial_path and spool_prefix give, with the export id and mkdtemp's part as patterns
    partial = re.escape(partial_path(output, "@").name).replace("@", EXPORT_ID_PATTERN)
    spool = re.escape(spool_prefix(output)) + "[a-z0-9_]{8}"  # tempfile.mkdtemp's eight characters
    return re.compile(rf"(?:{partial}|{spool})")


def leftover_files(output: Path) -> list[Path]:
    """The files beside ``output`` that only a (dead, when this output's lock is held) export to
    ``output`` can have made: regular partial files and real spool folders with exact names."""
    pattern = _leftover_pattern(output)
    found: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(output.parent) as entries:
        for entry in entries:
            if not pattern.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                mode = os.lstat(entry.path).st_mode
                partial = entry.name.endswith(PARTIAL_SUFFIX)
                if (partial and stat.S_ISREG(mode)) or (not partial and stat.S_ISDIR(mode)):
                    found.append(Path(entry.path))
    return sorted(found)


def _remove_leftover(path: Path) -> None:
    mode = os.lstat(path).st_mode
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)  # never follows a link inside the folder
    elif stat.S_ISREG(mode):
        path.unlink()


def refuse_unsafe(path: Path, what: str) -> None:
    """Raise :class:`UnsafeOutputPath` when ``path`` exists as a link or a non-regular file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeOutputPath(f"{what} {path} cannot be checked: {exc.strerror}") from None
    if stat.S_ISLNK(mode):
        raise UnsafeOutputPath(f"{what} {path} is a symbolic link; the export does not write through it")
    if not stat.S_ISREG(mode):
        raise UnsafeOutputPath(f"{what} {path} exists and is not a regular file; the export does not open it")


def _lock_holder_text(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, _MAX_LOCK_BYTES, 0).decode("utf-8", "replace").strip()
    return ""


class OutputFiles:
    """The driver's side of one local output: its lock for the whole run and the sweep of what dead
    exports to it left. :meth:`start` takes both, :meth:`release` gives the lock up."""

    def __init__(self, output: Path, export_id: str) -> None:
        self.output = output
        self.export_id = export_id
        self.lock_path = lock_path(output)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this export holds the output's lock."""
        return self._fd is not None

    def start(self) -> list[Path]:
        """Take the output's lock and remove the leftovers of dead exports to it (returned).

        Raises :class:`OutputLocked` when a live export holds the lock, :class:`UnsafeOutputPath` when
        the lock's path is a link, a non-regular file or a file that is not an export's lock, and
        ``OSError`` when the folder does not let the lock be made.
        """
        for _ in range(20):
            fd = self._create_lock()
            if fd is None:
                continue
            self._fd = fd
            removed = []
            for path in leftover_files(self.output):
                with contextlib.suppress(OSError):
                    _remove_leftover(path)
                    removed.append(path)
            return removed
        raise OutputLocked(f"output {self.output}: could not take its lock file {self.lock_path}")

    def _create_lock(self) -> int | None:
        """One try: the new lock file, held and holding our id; None to try again."""
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(self.lock_path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._remove_dead_lock(flags)
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                refuse_unsafe(self.lock_path, "lock file")
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # an export that just made it too removed ours: the file is theirs now
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.lstat(self.lock_path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # a dead export's sweep by another export replaced it in between
            os.close(fd)
            return None
        os.write(fd, self.export_id.encode("utf-8"))
        return fd

    def _remove_dead_lock(self, flags: int) -> None:
        """The lock file exists: a live export's (raise :class:`OutputLocked`), a dead export's (removed,
        so that a fresh one is made), or something else (refused)."""
        refuse_unsafe(self.lock_path, "lock file")
        try:
            fd = os.open(self.lock_path, flags)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                refuse_unsafe(self.lock_path, "lock file")
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > _MAX_LOCK_BYTES:
                raise UnsafeOutputPath(
                    f"lock file {self.lock_path} exists and is not an export's lock; the export does not touch it"
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder_text(fd) or "another export"
                raise OutputLocked(f"output {self.output} is being written by export {holder}") from None
            holder = _lock_holder_text(fd)
            if holder and not re.fullmatch(r"[0-9A-Za-z_.-]+", holder):
                raise UnsafeOutputPath(
                    f"lock file {self.lock_path} exists and is not an export's lock; the export does not touch it"
                )
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(self.lock_path).st_ino == info.st_ino:
                    os.unlink(self.lock_path)  # a dead export's lock, removed while held
        finally:
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file and let go of the lock. Idempotent; never raises."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if os.lstat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.lock_path)  # removed while still held: a waiting export makes a fresh file
        with contextlib.suppress(OSError):
            os.close(fd)

    def __enter__(self) -> OutputFiles:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def release_dead_lock(output: Path) -> None:
    """Remove the lock file of ``output`` when no live export holds it (its driver died). Never raises."""
    files = OutputFiles(output, "ended")
    with contextlib.suppress(Exception):
        files.start()
    files.release()


# --------------------------------------------------------------------------------------------------------------------
# The partial ZIP (the writer's side)


def _unnamed_file(folder: Path) -> int | None:
    """A descriptor of a new unnamed file in ``folder`` that can be linked into place later, or None
    where the platform or file system has no such files."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or os.environ.get("RAY_EXPORT_NAMED_PARTIAL") == "1":
        return None
    try:
        fd = os.open(folder, flag | os.O_RDWR | os.O_CLOEXEC, OUTPUT_MODE)  # the umask applies
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS):
            return None
        raise
    if not os.path.exists(f"/proc/self/fd/{fd}"):  # linking it into place needs /proc
        os.close(fd)
        return None
    return fd


#: Bytes written to a partial file between two background flushes to the disk (:class:`WriteBack`).
WRITE_BACK_BYTES = 32 << 20
WRITE_BACK_POLL_S = 0.5


class WriteBack(threading.Thread):
    """Flushes a file being written to the disk in the background (``fdatasync`` each time it grew by
    :data:`WRITE_BACK_BYTES`), so that the fsync of its commit finds little left to write."""

    def __init__(self, fd: int, every_bytes: int = WRITE_BACK_BYTES, poll_s: float = WRITE_BACK_POLL_S) -> None:
        super().__init__(name="ray-export-write-back", daemon=True)
        self.fd = fd
        self.every_bytes = every_bytes
        self.poll_s = poll_s
        self.synced = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.poll_s):
            try:
                size = os.fstat(self.fd).st_size
                if size - self.synced >= self.every_bytes:
                    os.fdatasync(self.fd)
                    self.synced = size
            except OSError:
                return  # the commit's own fsync reports a failing disk

    def stop(self) -> None:
        """End the thread (before its file is closed). Idempotent."""
        self._stop_event.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join()


@dataclass
class PartialFile:
    """The ZIP being written: an open file that becomes the output only at :meth:`commit`.

    ``path`` is None for an unnamed file (nothing to remove if the process dies), else the
    ``<output>.<export id>.partial`` it was created as. ``write_back``: the thread flushing it to the
    disk while it is written (stopped at :meth:`commit` or :meth:`discard`).
    """

    file: BinaryIO
    path: Path | None
    write_back: WriteBack | None = None

    def _stop_write_back(self) -> None:
        if self.write_back is not None:
            self.write_back.stop()
            self.write_back = None

    def commit(self, output: Path, replace: bool) -> None:
        """Give the finished (flushed) file the name ``output``: atomically, and without ``replace``
        never over a file that exists (:class:`FileExistsError`)."""
        self._stop_write_back()
        if self.path is None:
            self._link_unnamed(output, replace)
        else:
            _move_named(self.path, output, replace)
        self.path = None
        with contextlib.suppress(OSError):
            self.file.close()
        _fsync_folder(output.parent)

    def _link_unnamed(self, output: Path, replace: bool) -> None:
        source = f"/proc/self/fd/{self.file.fileno()}"
        # With a directory descriptor, os.link calls linkat(..., AT_SYMLINK_FOLLOW), which links the open
        # file that the /proc entry stands for (plain link() would try to link the entry itself).
        folder_fd = os.open(output.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                os.link(source, output.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd, follow_symlinks=True)
                return  # linkat fails when the output exists: never over a file without ``replace``
            except FileExistsError:
                if not replace:
                    raise
            # --force over an existing file: link under a private name, then rename over the output
            while True:
                temporary = f"{output.name}.{os.urandom(6).hex()}{PARTIAL_SUFFIX}"
                try:
                    os.link(source, temporary, src_dir_fd=folder_fd, dst_dir_fd=folder_fd, follow_symlinks=True)
                    break
                except FileExistsError:
                    continue
            try:
                os.replace(temporary, output.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=folder_fd)
                raise
        finally:
            os.close(folder_fd)

    def discard(self) -> None:
        """Close the file and remove its name, if it has one. Idempotent; never raises."""
        with contextlib.suppress(Exception):
            self._stop_write_back()
        with contextlib.suppress(Exception):
            self.file.close()
        path, self.path = self.path, None
        if path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(path).st_mode):
                    path.unlink()


def create_partial(folder: Path, fallback: Path | None) -> PartialFile:
    """A new partial file in ``folder``: unnamed where possible, else created exclusively as
    ``fallback`` (never through a link or over an existing file). ``fallback`` None: unnamed or a
    private temporary name in ``folder``.

    Raises :class:`OutputFolderError` when the folder is missing or not writable and
    :class:`UnsafeOutputPath` when ``fallback`` exists.
    """
    if not folder.is_dir():
        raise OutputFolderError(f"output folder does not exist: {folder}")
    try:
        fd = _unnamed_file(folder)
        if fd is not None:
            return _written_back(PartialFile(os.fdopen(fd, "w+b"), None))
        if fallback is None:
            fd, name = tempfile.mkstemp(dir=folder, suffix=PARTIAL_SUFFIX)
            return _written_back(PartialFile(os.fdopen(fd, "w+b"), Path(name)))
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(fallback, flags, OUTPUT_MODE)
        except FileExistsError:
            refuse_unsafe(fallback, "partial file")
            raise UnsafeOutputPath(f"partial file {fallback} exists already; the export does not touch it") from None
        return _written_back(PartialFile(os.fdopen(fd, "w+b"), fallback))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputFolderError(f"output folder is not writable: {folder} ({reason})") from error


def _written_back(partial: PartialFile) -> PartialFile:
    partial.write_back = WriteBack(partial.file.fileno())
    partial.write_back.start()
    return partial


def _move_named(partial: Path, output: Path, replace: bool) -> None:
    if replace:
        os.replace(partial, output)
        return
    try:
        os.link(partial, output, follow_symlinks=False)  # atomic: fails when the output exists
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(output):
            raise FileExistsError(errno.EEXIST, "exists", str(output)) from None
        os.rename(partial, output)
        return
    partial.unlink()


def _fsync_folder(folder: Path) -> None:
    """Persist a new name; best effort (not every platform or file system supports it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def spool_file(folder: Path | str | None) -> BinaryIO:
    """A spool file in ``folder`` (the system's temporary folder when None) that has no name: it
    disappears with the process, however the process ends."""
    return tempfile.TemporaryFile(mode="w+b", dir=folder)


def spool_folder(output: Path | str) -> Path:
    """Where an export to ``output`` makes its spool files: beside a local output, else the system's
    temporary folder."""
    if isinstance(output, Path):
        return output.parent
    return Path(tempfile.gettempdir())


# --------------------------------------------------------------------------------------------------------------------
# The driver's clean-up


def remove_export_files(
    output: Path | str | None, written_since: float | None, export_id: str | None = None
) -> list[Path]:
    """Delete what a failed or cancelled export ``export_id`` may have left: its named partial file
    (where unnamed ones are not available) and, with ``written_since``, an output committed since that
    time (by this export, which holds the output's lock). Returns the export's files that are still
    there. Never raises."""
    left: list[Path] = []
    if output is None:
        return left
    if isinstance(output, Path):
        if export_id:
            partial = partial_path(output, export_id)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(partial).st_mode):
                    partial.unlink()
            if os.path.lexists(partial):
                left.append(partial)
        if written_since is not None:
            with contextlib.suppress(OSError):
                info = os.lstat(output)
                if stat.S_ISREG(info.st_mode) and info.st_mtime >= written_since - 1:
                    output.unlink()
        return left
    if written_since is not None:
        import pyarrow.fs as pafs

        with contextlib.suppress(Exception):
            fs, path = pafs.FileSystem.from_uri(output)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File and (info.mtime is None or info.mtime.timestamp() >= written_since - 1):
                fs.delete_file(path)
    return left
