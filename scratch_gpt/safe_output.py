"""All-or-nothing outputs: validate, stage beside the target, fsync, swap in with one rename.

Every command that writes a folder or a file uses :func:`staged_output`::

    with staged_output(out_dir, overwrite=args.overwrite, inputs=[args.model, args.dataset]) as stage:
        model.save_pretrained(stage)        # write everything into the staging folder
    # here out_dir is the new complete result; before, it was the old complete result (or absent)

Before anything is written it checks that the target may be replaced (``--overwrite``), that it overlaps no
input (an output inside an input, or an input inside the output, would destroy the input), and that its
parent folder is writable. The staging folder ``.NAME.staging-PID`` lives beside the target (same file
system, so the swap is a rename). On success its files are fsynced and it is exchanged with the target in one
atomic ``renameat2(RENAME_EXCHANGE)`` where Linux offers it (two renames elsewhere); the old result is deleted
only after that. On failure the staging folder is removed and the target is untouched. Staging folders left
by a killed process are removed by the next run.

Files follow the user's umask. Writers disagree about modes (transformers 5.25's ``save_pretrained`` writes
``model.safetensors`` as 0600 while its JSON files get 0644), so just before the fsync every file of the staged
result is set to ``0o666 & ~umask`` (``0o777 & ~umask`` where the owner may execute it) and every folder to
``0o777 & ~umask`` (:func:`apply_umask`): a run folder, a finetuned folder or an export is readable by exactly
whom the user's other files are (a group, another container user, a web server). Links are left alone (a
chmod would change what they point to). A carried file is a hard link to the old result's, so its mode changes
with it (the old result is deleted once the swap is done).

``SCRATCH_GPT_CRASH_AT=<point>`` kills the process with SIGKILL at a named point (:func:`crash_point`), which
is how the crash tests inject a kill in the middle of a write.

Standard library only (shared by ``training`` and ``hub_export``; never shipped as remote code).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import shutil
import signal
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CRASH_ENV = "SCRATCH_GPT_CRASH_AT"
_STAGING_TAG = ".staging-"
_OLD_TAG = ".old-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_UMASK_LOCK = threading.Lock()


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL when ``SCRATCH_GPT_CRASH_AT`` names ``name`` (crash tests only)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# -- validation -----------------------------------------------------------------------------------------


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_no_overlap(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Raise ``ValueError`` when ``output`` is, contains, or lies inside any existing local input path."""
    out = _resolved(output)
    for item in inputs:
        if item is None or not os.path.exists(item):
            continue  # Hub ids and built-in names are not local paths
        src = _resolved(item)
        if _is_within(out, src) or _is_within(src, out):
            relation = "is" if out == src else ("is inside" if _is_within(out, src) else "contains")
            raise ValueError(
                f"output {output} {relation} the input {item}; writing it would destroy the input: "
                "choose an output folder outside every input"
            )


def check_target(target: str | os.PathLike, overwrite: bool) -> None:
    """Raise when ``target`` exists without ``overwrite``, or its parent cannot be created or written."""
    path = Path(target)
    if path.exists() and not overwrite:
        kind = "folder" if path.is_dir() else "file"
        raise FileExistsError(f"{target} already exists ({kind}); pass --overwrite to replace it or choose another output")
    parent = _resolved(path).parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot create {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {target}: no write permission on {existing}; choose another output")


def check_output(
    target: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
) -> None:
    """Every check :func:`staged_output` makes before it writes anything (call it early to fail fast)."""
    check_no_overlap(target, inputs)
    check_target(target, overwrite)


# -- modes that follow the umask ------------------------------------------------------------------------


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it, else by a locked set-and-restore.

    ``os.umask`` can only be read by setting it, and the umask is process-wide: a file another thread creates
    between the two calls would get the temporary mask. So the ``Umask:`` line of ``/proc/self/status`` (Linux
    4.7+) comes first; elsewhere the mask is swapped under a lock for the restrictive 0o077, so a file created
    in that instant is too private rather than world-writable. It is read once per published result (not
    cached for the process: a program or a test may change its umask between outputs).
    """
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


def apply_umask(path: str | os.PathLike, umask: int | None = None) -> None:
    """Set every file under ``path`` (or the file itself) to ``0o666 & ~umask`` and every folder to
    ``0o777 & ~umask``; a file its owner may execute keeps that as ``0o777 & ~umask``. Links are skipped.

    ``umask`` defaults to :func:`current_umask`. A mode that cannot be changed (a carried file owned by
    someone else) is a warning: the result is still published, as the user's own tools would leave it.
    """
    mask = current_umask() if umask is None else umask
    root = os.fspath(path)
    entries = [root]
    if os.path.isdir(root) and not os.path.islink(root):
        for folder, dirs, files in os.walk(root):  # never descends into linked folders
            entries += [os.path.join(folder, name) for name in dirs + files]
    for entry in entries:
        st = os.lstat(entry)
        if stat.S_ISDIR(st.st_mode):
            want = 0o777 & ~mask
        elif stat.S_ISREG(st.st_mode):
            want = (0o777 if st.st_mode & stat.S_IXUSR else 0o666) & ~mask
        else:
            continue  # links, sockets, fifos
        if stat.S_IMODE(st.st_mode) != want:
            try:
                os.chmod(entry, want)
            except OSError as err:
                logger.warning("could not set the mode of %s to %o (%s)", entry, want, err)


# -- fsync and swap -------------------------------------------------------------------------------------


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file under ``path`` (or the file itself), then the folders, so renames publish durable data."""
    path = Path(path)
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]  # one walk of the tree
    for item in entries:
        if item.is_file() and not item.is_symlink():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
    for folder in [p for p in entries if p.is_dir() and not p.is_symlink()] + [path.parent]:
        fsync_dir(folder)


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder's entry list (makes a rename inside it durable); a no-op where unsupported."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    """libc's renameat2, looked up once (``find_library`` runs ``ldconfig``), or None where libc lacks it."""
    libc_name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux's renameat2; False where the call is unavailable."""
    func = _renameat2()
    if func is None:
        return False
    res = func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: file system without exchange support
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(stage: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put ``stage`` at ``target`` atomically; an old ``target`` is removed only once the new one is in place."""
    stage, target = Path(stage), Path(target)
    if not target.exists():
        os.replace(stage, target)
    elif stage.is_dir() != target.is_dir():
        raise IsADirectoryError(f"cannot replace {target} with a {'folder' if stage.is_dir() else 'file'}")
    elif stage.is_file():
        os.replace(stage, target)  # atomic for files
    elif _renameat2_exchange(stage, target):
        crash_point("after-swap")
        _remove(stage)  # the old result, now at the staging name
    else:
        old = target.with_name(f".{target.name}{_OLD_TAG}{os.getpid()}")
        os.replace(target, old)
        os.replace(stage, target)
        _remove(old)
    fsync_dir(target.parent)


def _remove(path: Path) -> None:
    """Delete a replaced result: a link only as a link (never what it points to), a folder with its files."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: str | os.PathLike) -> None:
    """Remove staging/old leftovers of ``target`` whose owning process is gone (a crash or SIGKILL)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for item in target.parent.glob(f".{target.name}.*-*"):
        tag, _, pid = item.name[len(target.name) + 1 :].rpartition("-")
        if f"{tag}-" in (_STAGING_TAG, _OLD_TAG) and pid.isdigit() and not _pid_alive(int(pid)):
            logger.info("removing %s left by an interrupted run", item)
            _remove(item)


def carry_over(old: Path, stage: Path, names: Iterable[str]) -> None:
    """Hard-link (copy where links fail) ``names`` from an existing result into the staging folder."""
    for name in names:
        src = old / name
        if not src.exists() or (stage / name).exists():
            continue
        if src.is_dir():
            shutil.copytree(src, stage / name, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, stage / name)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def staged_output(
    target: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    is_dir: bool = True,
    carry: Iterable[str] = (),
) -> Iterator[Path]:
    """Validate, then yield a staging path beside ``target``; on success swap it in, on failure remove it.

    Before the swap every file and folder of the result gets the mode the umask gives (:func:`apply_umask`).
    ``carry`` names entries of an existing ``target`` (for example ``checkpoints``) that the new result keeps:
    they are hard-linked into the staging folder before the swap, so nothing is lost if the swap never happens.
    """
    target = Path(target)
    check_output(target, overwrite=overwrite, inputs=inputs)
    clean_stale(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.with_name(f".{target.name}{_STAGING_TAG}{os.getpid()}")
    if stage.exists() or stage.is_symlink():
        _remove(stage)
    if is_dir:
        stage.mkdir()
    try:
        yield stage
        if target.is_dir() and is_dir:
            carry_over(target, stage, carry)
        apply_umask(stage)  # before the fsync, so the modes are as durable as the data
        crash_point("before-fsync")
        fsync_tree(stage)
        crash_point("before-swap")
        swap_in(stage, target)
    except BaseException:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True) if stage.is_dir() else stage.unlink()
        raise
