"""Files on disk: atomic writes, the OS's refusals as one-line errors, bounded reads, one run per folder.

- Atomic writes: write to a temporary name in the same folder, fsync, rename. A crash or kill at
  any moment leaves either the old file or the new one, never a half-written file under the final name.
- `writing(path)`: a full disk, a read-only file system, a missing permission or a file in the way
  becomes one TinyGemmaError line (other OS errors are bugs and still raise).
- `read_bounded`: the small files a model or data folder names (config.json, meta.json,
  tokenizer.json) are read only if they are regular files under a size limit, so a FIFO or a
  device file is refused instead of blocking or filling memory.
- `exclusive_dir`: train, prepare and quickstart hold an flock on OUT/.tinygemma.lock, so a second
  process writing the same folder is refused with the holder's PID. The kernel drops the lock when
  its holder dies, so a killed run blocks nobody.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from tinygemma.errors import TinyGemmaError

# The OS's refusals to write that a user can fix, and what to do about each.
_FULL = "free some space or choose another output folder (files written before are kept)"
_NOT_WRITABLE = "choose an output folder you can write to"
_IN_THE_WAY = "a file or folder of that name is in the way; choose another output path"
WRITE_ERRORS = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EFBIG: _FULL, errno.EROFS: _NOT_WRITABLE,
                errno.EACCES: _NOT_WRITABLE, errno.EPERM: _NOT_WRITABLE, errno.EEXIST: _IN_THE_WAY,
                errno.ENOTDIR: _IN_THE_WAY, errno.EISDIR: _IN_THE_WAY}


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`: itself, or the one torch's checkpoint writer wraps in a RuntimeError."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn the OS's refusal to write `path` (WRITE_ERRORS) into one TinyGemmaError line."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        cause = _os_error(e)
        if cause is None or cause.errno not in WRITE_ERRORS:
            raise
        raise TinyGemmaError(f"cannot write {path}: {cause.strerror or os.strerror(cause.errno)}; "
                             f"{WRITE_ERRORS[cause.errno]}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`. A write the OS refuses
    (full disk, read-only) is one TinyGemmaError line, and the temporary file is removed."""
    path = Path(path)
    tmp_path = None
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
            os.replace(tmp_path, path)
            _fsync_dir(path.parent)
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """How the project's JSON files are written: indented, keys in their order."""
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    # Through a Python file, so a full disk surfaces as the OSError behind torch's RuntimeError.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


# ---------------------------------------------------------------- bounded reads
def read_bounded(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes (symlinks followed);
    a FIFO, a device, a folder or a larger file is one TinyGemmaError line naming `what` it should be."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)  # O_NONBLOCK: opening a FIFO does not wait
    except FileNotFoundError:
        raise TinyGemmaError(f"{path} not found; it should be {what}") from None
    except OSError as e:
        raise TinyGemmaError(f"cannot read {path} ({e.strerror}); it should be {what}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TinyGemmaError(f"{path} is not a regular file; it should be {what}")
        if st.st_size > limit:
            raise TinyGemmaError(f"{path} has {st.st_size:,} bytes, more than the {limit:,} allowed for {what}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TinyGemmaError(f"{path} grew past the {limit:,} bytes allowed for {what}")
    return data


JSON_LIMIT = 16 << 20  # bytes: config.json, meta.json, --config files and the like hold a few KB


def read_json(path: str | os.PathLike, what: str, limit: int = JSON_LIMIT) -> Any:
    """A small JSON file read with read_bounded; not JSON (or not UTF-8) is one TinyGemmaError line."""
    try:
        return json.loads(read_bounded(path, limit, what))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyGemmaError(f"{path} is not valid JSON ({' '.join(str(e).split())[:120]}); it should be {what}") from None


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` (symlinks resolved) lies inside `folder`."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


# ---------------------------------------------------------------- one run per folder
LOCK_NAME = ".tinygemma.lock"
_HELD: dict[str, int] = {}  # folders this process holds the lock of -> nesting depth (quickstart -> train)


@contextlib.contextmanager
def exclusive_dir(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Create `folder` if needed and hold its lock file for the block: one `command` per output folder.

    Another process holding it is a one-line refusal naming its PID. The lock file is removed on exit;
    on an error, the folders this call created are removed again if the block left them empty."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:  # this process holds it already (quickstart's train)
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    created = _make_dirs(folder)
    try:
        fd = _lock(folder / LOCK_NAME, command)
    except BaseException:
        _remove_empty(created)
        raise
    _HELD[key] = 1
    done = False
    try:
        yield folder
        done = True
    finally:
        del _HELD[key]
        (folder / LOCK_NAME).unlink(missing_ok=True)  # while still holding it: _lock checks for this
        os.close(fd)
        if not done:
            _remove_empty(created)


def _make_dirs(folder: Path) -> list[Path]:
    """mkdir -p `folder`; -> the folders it created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    if folder.exists() and not folder.is_dir():
        raise TinyGemmaError(f"output folder {folder} is a file; choose another output path")
    created = []
    try:
        with writing(folder):
            for p in missing:
                p.mkdir()
                created.append(p)
    except BaseException:
        _remove_empty(created)
        raise
    return created


def _remove_empty(created: list[Path]) -> None:
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:  # not empty: the block wrote something worth keeping
            return


def _lock(path: Path, command: str) -> int:
    """An fd holding an exclusive flock on `path`, which then names this process."""
    while True:
        with writing(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "a process that just started"
            os.close(fd)
            raise TinyGemmaError(f"{path.parent} is in use by tinygemma {holder} (it holds {path}); wait for it to "
                                 f"finish or stop it, or choose another output folder for this {command}") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
    try:
        with writing(path):
            os.ftruncate(fd, 0)
            os.write(fd, f"{command} (pid {os.getpid()})\n".encode())
    except BaseException:
        os.close(fd)
        raise
    return fd
