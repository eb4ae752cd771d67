"""One process at a time in a run folder.

``poster predict -o DIR`` and ``poster train -o DIR`` hold ``DIR/.poster.lock`` for as long as they
run; a second command on the same folder is refused with ``RunFolderBusy`` naming the owner
(command, pid, host) instead of mixing its files with the first one's.

The lock file is created with ``O_NOFOLLOW`` and locked with ``flock``: the kernel releases that
lock when its process ends however it ends (``kill -9`` included), so a lock left behind by a dead
process is *stale* and is simply taken over.  The pid and host written in the file are for the
message.  Where ``flock`` does not exist, a lock file whose pid is not alive on this host is stale.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import sys
from pathlib import Path

from .errors import RunFolderBusy

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".poster.lock"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _describe_owner(text: str) -> str:
    try:
        owner = json.loads(text)
        return f"{owner.get('command', 'poster')} (pid {int(owner['pid'])} on {owner.get('host', '?')})"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "another poster process"


class RunLock:
    """Exclusive use of ``folder`` (which must exist); a context manager, also released at exit."""

    def __init__(self, folder: str | os.PathLike, command: str = "poster") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        for _ in range(10):  # retried only when the file changes under us (a racing release)
            fd = self._open()
            if self._try_lock(fd):
                if self._still_our_file(fd):
                    self._fd = fd
                    self._write_owner(fd)
                    atexit.register(self.release)
                    return self
                os.close(fd)
                continue
            owner = _describe_owner(self._read(fd))
            os.close(fd)
            raise RunFolderBusy(f"{self.folder} is in use by {owner}; wait for it to finish or choose "
                                "another output folder")
        raise RunFolderBusy(f"cannot lock {self.folder}: its lock file keeps changing")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._still_our_file(fd):
                os.unlink(self.path)  # before unlocking: a waiter then re-checks and finds a new file
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)  # releases the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- pieces --------------------------------------------------------------------------------

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunFolderBusy(f"{self.path} is a symbolic link: refusing to use {self.folder}") from None
            raise

    def _try_lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
        text = self._read(fd)  # pragma: no cover - no flock: the pid decides
        try:
            owner = json.loads(text) if text.strip() else None
        except ValueError:
            owner = None
        return owner is None or owner.get("host") != socket.gethostname() or not pid_alive(int(owner["pid"]))

    def _still_our_file(self, fd: int) -> bool:
        """The path still names the file we locked (a releasing owner may have unlinked it)."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
        except FileNotFoundError:
            return False

    def _write_owner(self, fd: int) -> None:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                 "argv": sys.argv[1:6]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode("utf-8"), 0)

    @staticmethod
    def _read(fd: int) -> str:
        try:
            return os.pread(fd, 4096, 0).decode("utf-8", "replace")
        except OSError:
            return ""


def lock_run_folder(folder: str | os.PathLike, command: str = "poster") -> RunLock:
    """Take ``folder``'s lock for the rest of this process (released at exit)."""
    return RunLock(folder, command).acquire()
