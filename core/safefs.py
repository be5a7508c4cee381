"""Writing, renaming and deleting under the home without ever following a symbolic link.

Every operation here takes the home (trusted as it is) and an absolute path
inside it. The directories between them are opened one at a time with
`O_NOFOLLOW | O_DIRECTORY`, each relative to the descriptor of the one above
(`dir_fd`), and the final step works on a name inside the last descriptor. The
home's own folders (`models/`, `partial/`, `trash/`) may be links the owner made
to put them on another disk; everything below them is never followed. A
symlink at any other level below the home makes the operation fail with
`LinkRefused` (INVALID_STATE) and a log line; the link and whatever it points
to are left untouched. Links found inside a tree being deleted are unlinked as
links, never followed.

All functions block; call them from a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Iterator

from mavail.core.errors import InvalidState

log = logging.getLogger("mavail.storage")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TOP_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
OWNER_LINKABLE = frozenset({"models", "partial", "trash"})
"""The home's own folders, which the owner may make links to a bigger disk: followed at that one level only."""


class LinkRefused(InvalidState):
    """A symbolic link (or a non-directory) sits where mavail would have to pass through or replace a directory."""


def parts_under(home: Path, path: Path) -> list[str]:
    """The components of `path` below `home` (ValueError when it is not strictly inside)."""
    rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(home))
    parts = list(rel.parts)
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{path} is not inside {home}")
    return parts


def _refuse(home: Path, parts: list[str], upto: int, what: str = "a symbolic link") -> LinkRefused:
    where = "/".join(parts[: upto + 1])
    log.warning("refused to pass through %s: %s under %s is %s (left alone)", where, where, home, what)
    return LinkRefused(f"{where} is {what}; mavail never writes or deletes through it, move it away by hand", link=where)


def refuse(home: Path, path: Path) -> LinkRefused:
    """The error (logged) for a symbolic link found at `path` itself."""
    parts = parts_under(home, path)
    return _refuse(home, parts, len(parts) - 1)


def open_dir(home: Path, path: Path, create: bool = False) -> int:
    """A descriptor of the directory `path` (or of `home` itself), reached without following any link below `home`.

    With `create`, missing directories are made (mode 0755). The caller closes the descriptor.
    """
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if os.path.abspath(path) == os.path.abspath(home):
        return fd
    parts = parts_under(home, path)
    try:
        for i, name in enumerate(parts):
            flags = _TOP_FLAGS if i == 0 and name in OWNER_LINKABLE else _DIR_FLAGS
            try:
                nfd = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _refuse(home, parts, i) from None
                    raise
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _refuse(home, parts, i) from None
                if exc.errno == errno.ENOTDIR:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    raise _refuse(home, parts, i, "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory") from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_dir(home: Path, path: Path) -> None:
    """Make the directory `path` (and missing parents) without following any link below `home`."""
    os.close(open_dir(home, path, create=True))


def open_parent(home: Path, path: Path, create: bool = False) -> tuple[int, str]:
    """(descriptor of `path`'s directory, `path`'s last name), the directory reached as in `open_dir`."""
    p = Path(os.path.abspath(path))
    parts_under(home, p)
    return open_dir(home, p.parent, create), p.name


def lstat(home: Path, path: Path) -> os.stat_result:
    """lstat `path` with its directories reached without following links."""
    dfd, name = open_parent(home, path)
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    finally:
        os.close(dfd)


def exists(home: Path, path: Path) -> bool:
    """Whether anything (a link included) is at `path`; False also when a link or a file sits above it."""
    try:
        lstat(home, path)
        return True
    except (FileNotFoundError, NotADirectoryError, LinkRefused):
        return False


def is_real_dir(home: Path, path: Path) -> bool:
    """Whether `path` is a directory reached without any link below `home` (itself included)."""
    try:
        fd = open_dir(home, path)
    except (FileNotFoundError, LinkRefused):
        return False
    os.close(fd)
    return True


def open_file(home: Path, path: Path, flags: int, mode: int = 0o600, create_parents: bool = False) -> int:
    """os.open of `path` with O_NOFOLLOW, its directories reached without following links; the caller closes it."""
    dfd, name = open_parent(home, path, create_parents)
    try:
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse(home, parts_under(home, path), len(parts_under(home, path)) - 1) from None
            raise
    finally:
        os.close(dfd)


def _check_not_link(home: Path, dfd: int, name: str, path: Path) -> None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        parts = parts_under(home, path)
        raise _refuse(home, parts, len(parts) - 1)


def replace(home: Path, src: Path, dst: Path, create_parents: bool = False) -> None:
    """os.replace(src, dst) by directory descriptors, then fsync dst's directory.

    A symlink at `dst` itself is replaced as a link (the rename swaps the directory
    entry): what it pointed to is never opened or changed. A link above either is refused.
    """
    sfd, sname = open_parent(home, src)
    try:
        _check_not_link(home, sfd, sname, src)
        dfd, dname = open_parent(home, dst, create_parents)
        try:
            try:
                if stat.S_ISLNK(os.stat(dname, dir_fd=dfd, follow_symlinks=False).st_mode):
                    log.warning("replacing the symbolic link %s itself with a real file (its target is untouched)", dst)
            except FileNotFoundError:
                pass
            os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def rename(home: Path, src: Path, dst: Path, create_parents: bool = False) -> None:
    """Move a real file or directory `src` to `dst` (which must not exist) by descriptors; a link at `src` is refused."""
    sfd, sname = open_parent(home, src)
    try:
        _check_not_link(home, sfd, sname, src)
        dfd, dname = open_parent(home, dst, create_parents)
        try:
            try:
                os.stat(dname, dir_fd=dfd, follow_symlinks=False)
                raise FileExistsError(errno.EEXIST, "already exists", str(dst))
            except FileNotFoundError:
                pass
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            os.fsync(sfd)
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def unlink(home: Path, path: Path, missing_ok: bool = True) -> None:
    """Delete a file or a symlink (the link itself) at `path`."""
    try:
        dfd, name = open_parent(home, path)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        if not missing_ok:
            raise
    finally:
        os.close(dfd)


def rmdir(home: Path, path: Path) -> bool:
    """Remove `path` if it is an empty real directory; True when it was removed."""
    try:
        dfd, name = open_parent(home, path)
    except (FileNotFoundError, LinkRefused):
        return False
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            return False
        os.rmdir(name, dir_fd=dfd)
        return True
    except OSError:
        return False
    finally:
        os.close(dfd)


def remove_tree(home: Path, path: Path) -> int:
    """Delete the file, symlink or directory tree at `path` without following links; return bytes freed.

    Bytes freed are the blocks of every inode whose last link this removed
    (directories included). Links inside the tree are removed as links and logged.
    """
    try:
        dfd, name = open_parent(home, path)
    except FileNotFoundError:
        return 0
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        if not stat.S_ISDIR(st.st_mode):
            if stat.S_ISLNK(st.st_mode):
                log.info("removed the symbolic link %s itself (its target is untouched)", path)
            os.unlink(name, dir_fd=dfd)
            return st.st_blocks * 512 if st.st_nlink == 1 else 0
        fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        try:
            freed = _empty_dir(fd, path)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dfd)
        return freed + st.st_blocks * 512
    finally:
        os.close(dfd)


def _empty_dir(dirfd: int, where: Path) -> int:
    freed = 0
    with os.scandir(dirfd) as it:
        names = [e.name for e in it]
    for name in names:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
            try:
                freed += _empty_dir(fd, where / name)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=dirfd)
            freed += st.st_blocks * 512
        else:
            if stat.S_ISLNK(st.st_mode):
                log.info("removed the symbolic link %s itself (its target is untouched)", where / name)
            os.unlink(name, dir_fd=dirfd)
            if st.st_nlink == 1:  # read just before the unlink: this one was the last link
                freed += st.st_blocks * 512
    return freed


def atomic_write(home: Path, path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write `data` to `path` through a temp file renamed over it (a link at `path` is refused).

    `durable`: flushed to the disk (the file, then the directory) before this returns; without it a
    crash of the machine may leave the old contents, or an empty or unreadable file, but never a mix.
    """
    dfd, name = open_parent(home, path, create=True)
    try:
        _check_not_link(home, dfd, name, path)
        tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp, dir_fd=dfd)
            raise
        os.close(fd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        if durable:
            os.fsync(dfd)
    finally:
        os.close(dfd)


def walk_files(home: Path, top: Path) -> Iterator[tuple[int, str, str]]:
    """(directory descriptor, relative directory, name) of every non-directory under `top`, links not followed.

    The descriptor is valid only until the next item.
    """
    fd = open_dir(home, top)
    try:
        for root, _dirs, files, rootfd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
            for name in files:
                yield rootfd, root, name
    finally:
        os.close(fd)
