"""Safe extraction of a base backup's tar: reading it from the decrypted stream, claiming only a
new or empty directory, refusing unsafe members, and removing what was extracted on failure."""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dbops_pipelines.errors import IntegrityError, RestoreFailed


class Pull:
    """A read(n) file interface over an iterator of chunks (a whole chunk is handed on uncopied)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._it = chunks
        self._chunk = b""
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._chunk):
            self._chunk, self._pos = next(self._it, b""), 0
        if self._pos == 0 and (n < 0 or n >= len(self._chunk)):
            out, self._chunk = self._chunk, b""
            return out
        end = len(self._chunk) if n < 0 else self._pos + n
        out = self._chunk[self._pos:end]
        self._pos += len(out)
        return out

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class Counted:
    """Reads from ``source`` and reports how many bytes passed."""

    def __init__(self, source, on_bytes: Callable[[int], None]):
        self._source = source
        self._on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._on_bytes(len(data))
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def claim(into: Path) -> bool:
    """Make ``into`` ours: created (0700) if missing, else only if it is an empty directory.
    Returns whether we created it. Never touches anything that holds files."""
    if into.is_symlink():
        raise RestoreFailed(f"{into} is a symbolic link; nothing was restored", "give the real path of a new or empty directory")
    if into.exists():
        if not into.is_dir():
            raise RestoreFailed(f"{into} exists and is not a directory; nothing was restored", "give a new or empty directory")
        if any(into.iterdir()):
            raise RestoreFailed(f"{into} is not empty; a base backup is only restored into a new or empty directory, "
                                "so nothing there was changed",
                                "give a new directory (it is created), or empty this one yourself if its contents may go")
        try:
            os.chmod(into, 0o700)   # PostgreSQL refuses a data directory that others can read
        except OSError as exc:
            raise RestoreFailed(f"cannot make {into} private (mode 0700): {exc}; nothing was restored",
                                "give a directory this user owns, or a new one") from None
        return False
    if not into.parent.is_dir():
        raise RestoreFailed(f"the parent directory of {into} does not exist; nothing was restored", f"create {into.parent} first")
    try:
        into.mkdir(mode=0o700)
    except FileExistsError:
        raise RestoreFailed(f"{into} appeared while the restore started; nothing was restored", "give another directory") from None
    except OSError as exc:
        raise RestoreFailed(f"cannot create {into}: {exc}", "check the path and its permissions") from None
    os.chmod(into, 0o700)   # whatever the umask
    return True


def remove_extracted(into: Path, created: bool) -> None:
    """Everything under the directory the restore claimed, and the directory if it created it.
    rmtree never follows symbolic links, so nothing outside ``into`` can be reached."""
    def step() -> None:
        if created:
            shutil.rmtree(into, ignore_errors=True)
        elif into.is_dir() and not into.is_symlink():
            for child in into.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
    while True:   # an interrupt during the clean-up must not leave half of it (pgtools._unstoppable)
        try:
            step()
            return
        except Exception:
            raise
        except BaseException:  # noqa: BLE001
            continue


def safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """Our rules first, for clear messages, then tarfile's 'data' filter (absolute paths, '..',
    links leading outside, special files; owner bits kept, setuid/setgid and group/other write
    dropped, ownership left to us)."""
    name = member.name
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise IntegrityError(f"the archive holds a device file or fifo ({name!r}), which no data directory has; "
                             "extraction stopped and what was extracted was removed", "do not use this base backup")
    if name.startswith("/") or ".." in Path(name).parts:
        raise IntegrityError(f"the archive holds a path outside the directory ({name!r}); extraction stopped and "
                             "what was extracted was removed", "do not use this base backup")
    try:
        safe = tarfile.data_filter(member, dest)
    except tarfile.FilterError as exc:
        raise IntegrityError(f"the archive holds an unsafe member: {exc}; extraction stopped and what was extracted "
                             "was removed", "do not use this base backup") from None
    if safe is not None and member.isdir():
        safe = safe.replace(mode=member.mode & 0o755, deep=False)  # the 'data' filter would drop directory modes
    return safe
