"""Crash-safe writing: every file vpt_peft or its CLI writes is replaced atomically, and an adapter's
weights and ``adapter_config.json`` change together.

Single files (``labels.json``, result tables, figures) go to a temporary file in the target's folder, are
flushed and fsynced, then ``os.replace``-d over the target, so a reader sees the whole old file or the
whole new one, never a truncated one.

An adapter is a *pair*: the weights file and the config that says how to read it. Two renames cannot be
one atomic step, so a save is a small redo log whose commit point is the rename of the weights file:

1. peft writes the adapter (weights, config, model card) into a private staging folder inside the target
   folder, with its own unchanged writer; everything there is fsynced.
2. The staged files move next to their targets under *pending* names (``.adapter_model.safetensors
   .vpt-pending`` first, ``.adapter_config.json.vpt-pending`` last), and the folder is fsynced.
3. **Commit**: the pending weights replace ``adapter_model.safetensors``.
4. The other pending files (model card, labels, ...) replace their targets, ``adapter_config.json`` last.

A folder is *mid-commit* exactly when a pending config exists and no pending weights file does (only the
commit in step 3 removes the pending weights while a pending config remains). In that state the pending
copies are the current contents, and every reader in vpt_peft reads them: peft reads adapter configs
through ``PeftConfig.from_json_file``, which :func:`install` routes through :func:`resolve`. Before step
3 the old files are untouched and the pending ones are ignored. The next save in the folder first
finishes an interrupted commit (or deletes the pending files of one that never committed).

The ordering rules that keep "pending config without pending weights" meaning *committed*: the pending
weights are created before the pending config; a rollback or cleanup deletes the pending config first
and the pending weights last; finishing a commit replaces the config last.

Scope: the wrapper around ``PeftModel.save_pretrained`` applies only when every adapter being saved is a
vpt_peft method, so other peft methods keep peft's own behaviour. Concurrent *writers* to one folder are
not supported (the pending names are fixed per folder); a reader racing a live save may read the config
of one save and the weights of the next, which is a concurrency question, not a crash one.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Union

from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

PathLike = Union[str, os.PathLike]

PENDING_SUFFIX = ".vpt-pending"
STAGING_PREFIX = ".vpt_peft-staging-"
WEIGHT_NAMES = (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)

# The staging folders this thread is filling: a save_pretrained call that targets one of them writes
# straight into it (the enclosing staged_save commits everything at once).
_active_staging: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("vpt_peft_staging", default=())


def _at_step(step: str) -> None:
    """Called at each step of a commit with the step's name. A no-op; the crash tests replace it to stop
    (or SIGKILL) a save at an exact point, which is what makes those tests deterministic."""


# --------------------------------------------------------------------------------------------- primitives


def fsync_dir(folder: PathLike) -> None:
    """Make the folder's entries (created, renamed, deleted files) durable. Directories cannot be opened
    for fsync on Windows, where renames are durable through the file system's own journal."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pending(folder: Path, name: str) -> Path:
    return folder / f".{name}{PENDING_SUFFIX}"


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open ``path`` for writing so that it only ever holds the old content or the complete new one.

    Writes go to a temporary file in the same folder (a rename across file systems is not atomic); on a
    clean exit it is flushed, fsynced and ``os.replace``-d over ``path``; on an exception it is deleted and
    ``path`` is untouched. The temporary file is created with mode 0o666 minus the umask, like ``open``.
    """
    if not any(flag in mode for flag in "wx") or "+" in mode:
        raise ValueError(f"atomic_open writes whole files: mode must be 'w', 'wb', 'x' or 'xb', got {mode!r}.")
    path = Path(path)
    if "x" in mode and path.exists():
        raise FileExistsError(path)
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, mode.replace("x", "w"), **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: PathLike, data: Union[str, bytes], encoding: str = "utf-8") -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    if isinstance(data, str):
        with atomic_open(path, "w", encoding=encoding) as handle:
            handle.write(data)
    else:
        with atomic_open(path, "wb") as handle:
            handle.write(data)


@contextlib.contextmanager
def new_folder(folder: PathLike) -> Iterator[Path]:
    """Build a folder that must appear complete or not at all (a cache entry): fill the yielded temporary
    sibling, which is renamed to ``folder`` on a clean exit. If ``folder`` appeared meanwhile (another
    process built it first), the new copy is discarded and the existing one kept."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield temp
        for path in sorted(temp.rglob("*")):
            if path.is_file():
                _fsync_file(path)
        try:
            os.rename(temp, folder)
        except OSError:
            if not folder.is_dir():
                raise
        fsync_dir(folder.parent)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------------------------ adapter transactions


def _weights_pending(folder: Path) -> list[Path]:
    return [p for p in (_pending(folder, n) for n in WEIGHT_NAMES) if os.path.lexists(p)]


def is_mid_commit(folder: PathLike) -> bool:
    """True when a save in ``folder`` committed its weights but had not yet renamed its other files."""
    folder = Path(folder)
    return os.path.lexists(_pending(folder, CONFIG_NAME)) and not _weights_pending(folder)


def resolve(path: PathLike) -> Path:
    """The file that holds ``path``'s current content: its pending copy while the folder is mid-commit,
    else ``path`` itself. Costs one ``stat`` in the usual case (no pending copy)."""
    path = Path(path)
    pending = _pending(path.parent, path.name)
    if os.path.lexists(pending) and is_mid_commit(path.parent):
        return pending
    return path


def _pending_followers(folder: Path) -> list[Path]:
    """Pending files other than the weights, the config last."""
    names = {n for n in (f".{w}{PENDING_SUFFIX}" for w in (*WEIGHT_NAMES, CONFIG_NAME))}
    others = sorted(p for p in folder.glob(f".*{PENDING_SUFFIX}") if p.name not in names)
    config = _pending(folder, CONFIG_NAME)
    return others + ([config] if os.path.lexists(config) else [])


def _target_of(pending: Path) -> Path:
    return pending.with_name(pending.name[1 : -len(PENDING_SUFFIX)])


def recover(folder: PathLike) -> bool:
    """Bring ``folder`` back to one consistent adapter after an interrupted save; True if a commit was
    finished. A committed save is rolled forward (its pending files replace their targets, the config
    last); the pending files of a save that never committed are deleted (the config's first). Saves call
    this before they start; readers never need to (they read through :func:`resolve`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if is_mid_commit(folder):
        for pending in _pending_followers(folder):
            os.replace(pending, _target_of(pending))
        fsync_dir(folder)
        return True
    stale = [_pending(folder, CONFIG_NAME), *_pending_followers(folder), *_weights_pending(folder)]
    removed = False
    for pending in dict.fromkeys(stale):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pending)
            removed = True
    if removed:
        fsync_dir(folder)
    return False


def _commit_adapter(staged: Path, files: list[str], target: Path) -> None:
    """Move one staged adapter (weights + config + companions) into ``target`` with the redo-log protocol."""
    weights = next(n for n in WEIGHT_NAMES if n in files)
    followers = sorted(n for n in files if n not in (weights, CONFIG_NAME)) + [CONFIG_NAME]
    recover(target)
    moved: list[Path] = []
    try:
        for name in (weights, *followers):  # the pending weights first: see the module docstring
            os.replace(staged / name, _pending(target, name))
            moved.append(_pending(target, name))
            _at_step(f"pending:{name}")
        fsync_dir(target)
        _at_step("staged")
    except BaseException:
        for pending in reversed(moved):  # the pending config first, the pending weights last
            with contextlib.suppress(OSError):
                os.unlink(pending)
        raise
    os.replace(_pending(target, weights), target / weights)
    fsync_dir(target)
    _at_step("committed")
    for name in followers:
        os.replace(_pending(target, name), target / name)
        _at_step(f"replaced:{name}")
    fsync_dir(target)
    _at_step("done")


def commit(staging: PathLike, folder: PathLike) -> None:
    """Move everything under ``staging`` into ``folder`` (same file system): each sub-folder holding an
    ``adapter_config.json`` and a weights file as one transaction, any other file by an atomic rename."""
    staging, folder = Path(staging), Path(folder)
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            _fsync_file(path)
    _at_step("written")
    for source in sorted((p for p in staging.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        _commit_folder(source, folder / source.relative_to(staging))
    _commit_folder(staging, folder)


def _commit_folder(source: Path, target: Path) -> None:
    files = sorted(p.name for p in source.iterdir() if p.is_file())
    if not files:
        return
    if not target.is_dir():
        target.mkdir(parents=True)
        fsync_dir(target.parent)
    if CONFIG_NAME in files and any(n in files for n in WEIGHT_NAMES):
        _commit_adapter(source, files, target)
        return
    for name in files:
        os.replace(source / name, target / name)
    fsync_dir(target)


@contextlib.contextmanager
def staged_save(folder: PathLike, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a private staging folder inside ``folder``; whatever is written there is committed into
    ``folder`` on a clean exit (adapters as weight+config transactions, other files atomically) and
    discarded on an exception. ``keep`` names existing files of ``folder`` to copy into the staging
    folder first, for writers that update a file in place (peft's model card reads ``README.md``).

    ``PeftModel.save_pretrained`` calls made inside the block with the staging folder as the target write
    straight into it, so a caller can make an adapter and its companion files one transaction."""
    folder = Path(folder)
    if folder.is_file():
        raise NotADirectoryError(f"{folder} is a file; an adapter is saved into a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    token = _active_staging.set((*_active_staging.get(), str(staging.resolve())))
    try:
        for name in keep:
            current = resolve(folder / name)
            if current.is_file():
                shutil.copyfile(current, staging / name)
        yield staging
        commit(staging, folder)
    finally:
        _active_staging.reset(token)
        shutil.rmtree(staging, ignore_errors=True)


def _inside_active_staging(path: PathLike) -> bool:
    resolved = Path(path).resolve()
    return any(resolved == Path(s) or Path(s) in resolved.parents for s in _active_staging.get())


# ----------------------------------------------------------------------------------- hooks into peft


def _is_vpt_peft_config(config: Any) -> bool:
    return type(config).__module__.split(".")[0] == __name__.split(".")[0]


def _atomic_save_pretrained(original: Callable[..., None]) -> Callable[..., None]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """peft's ``PeftModel.save_pretrained``, made crash-safe for vpt_peft adapters (see vpt_peft.atomic).

        Why a wrapper around peft's method, not an override in the tuner: ``PeftModel.save_pretrained`` does
        the writing itself (weights via ``safetensors``, config, model card) and consults no tuner hook, and
        ``get_peft_model``/``PeftModel.from_pretrained`` build peft's own classes, so a subclass would never
        be used. The wrapper leaves peft's writer unchanged and only points it at a staging folder, then
        commits that folder; calls for other peft methods, from non-main processes, or into a staging
        folder already being committed go straight to peft.
        """
        bound = signature.bind(self, save_directory, *args, **kwargs)
        selected = bound.arguments.get("selected_adapters") or list(self.peft_config)
        ours = all(_is_vpt_peft_config(self.peft_config.get(name)) for name in selected)
        main = bound.arguments.get("is_main_process", True)
        if not ours or not main or os.path.isfile(save_directory) or _inside_active_staging(save_directory):
            return original(self, save_directory, *args, **kwargs)
        with staged_save(save_directory, keep=("README.md",)) as staging:
            original(self, str(staging), *args, **kwargs)

    save_pretrained._vpt_peft_atomic = True  # type: ignore[attr-defined]
    return save_pretrained


def _resolving_from_json_file(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def from_json_file(cls, path_json_file: str, **kwargs: Any) -> Any:
        # Every peft reader of adapter_config.json (PeftConfig.from_pretrained, _get_peft_type) comes here:
        # in a folder whose save was interrupted after its commit point, read the committed config.
        return original(cls, str(resolve(path_json_file)), **kwargs)

    from_json_file._vpt_peft_atomic = True  # type: ignore[attr-defined]
    return from_json_file


def install() -> None:
    """Route peft's adapter writer and config reader through this module (idempotent; ``import vpt_peft``
    calls it)."""
    from peft import PeftModel
    from peft.config import PeftConfigMixin

    if not getattr(PeftModel.save_pretrained, "_vpt_peft_atomic", False):
        PeftModel.save_pretrained = _atomic_save_pretrained(PeftModel.save_pretrained)
    reader = PeftConfigMixin.__dict__["from_json_file"]
    if not getattr(reader.__func__, "_vpt_peft_atomic", False):
        PeftConfigMixin.from_json_file = classmethod(_resolving_from_json_file(reader.__func__))
