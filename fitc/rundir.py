"""The run directory: atomic artifact writes, ``run.json``, one writer, stage resume.

Contract:
- every file is written to a temporary name in the same directory and renamed into place, so a
  reader (or a crash) never sees a half-written artifact; its permissions follow the umask (as
  ``open()`` would give), and torch files are byte-reproducible (no temporary name inside);
- reading a run directory needs nothing. Writing it (:meth:`RunDir.run_stage`, or a block under
  :meth:`RunDir.writing`) first *claims* it: an exclusive lock (``.fitc.lock``, with the holder's
  PID and command in ``.fitc.holder.json``) held until the block ends, refused at once with a
  :class:`RunDirError` naming the holder while another process has it; a directory nested inside
  another run directory is refused; a directory whose ``run.json`` records another run (another
  model, model file, data or seed) is refused unless ``force``, which removes every file of the
  old run first (all or, if interrupted, finished by the next claim: never some);
- ``run.json`` holds the resolved config, package versions, each finished stage (wall time,
  fingerprint of its inputs, outputs and their sha256) and the metrics so far. It is written only
  when a stage finishes: a command that fails before any stage of it finished leaves ``run.json``
  (config, stages) exactly as it was;
- a stage whose fingerprint matches the recorded one and whose outputs all exist with their
  recorded sha256 is not redone; an output missing or changed is logged as a warning naming the
  file, and the stage is redone. Outputs are files: a stage's working directories (``hls4ml/``,
  ``loop/``) are not hashed, the stage's key JSON (``hls4ml.json``, ``loop.json``) is; they are
  removed with the stage's other outputs when a later run makes the stage stale.
- no crash window: a directory an external tool writes (the hls4ml project) is built in a
  temporary sibling and renamed into place (:func:`building_dir`), like every file
  (:func:`atomic_path`). Temporaries are named ``.<name>.<pid>-<random>.tmp``; a claim deletes
  those of dead processes (a killed writer's) from the top of the directory
  (:func:`clean_temporaries`), so a command killed anywhere (kill -9) is resumed by running it
  again.
- test hook: with ``FITC_TEST_KILL_AT=NAME`` (or ``NAME#N``) in the environment the process
  SIGKILLs itself the first (N-th) time an atomic write of a file called ``NAME`` has the file
  complete under its temporary name, just before the rename (:func:`kill_point`); the kill -9
  tests (``tests/fitc/test_kill_resume.py``) use it to die at a known point inside each stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from fitc.errors import ArtifactError, RunDirError

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
LOCK_FILE = ".fitc.lock"
HOLDER_FILE = ".fitc.holder.json"
WIPE_MARKER = ".fitc.wipe.json"  # a --force removal in progress: finished by the next claim
_OWN_FILES = (LOCK_FILE, HOLDER_FILE, WIPE_MARKER)
_PACKAGES = (
    "fitc",
    "torch",
    "brevitas",
    "qonnx",
    "hls4ml",
    "onnx",
    "onnxruntime",
    "numpy",
    "da4ml",
)


# ---------------------------------------------------------------------------------------------
# Atomic, reproducible writes


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, racy with threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Temporaries: ".<name>.<pid>-<random>.tmp" next to what they become (see clean_temporaries).
_TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\..+\.(\d+)-[a-z0-9_]+\.tmp$")
# Temporaries without a PID that only a stage creates (so only the lock holder): a closed loop's
# iterations and the export's scratch folder.
_LOCKED_TEMP_RE = re.compile(r"^\.(loop\.|export-)[a-z0-9_]+$")
KILL_ENV = "FITC_TEST_KILL_AT"
_kill_counts: dict[str, int] = {}


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process at point ``name`` if ``$FITC_TEST_KILL_AT`` names it.

    ``FITC_TEST_KILL_AT=NAME`` kills at the first pass, ``NAME#N`` at the N-th. The points are the
    atomic writes (``NAME`` is the file's name; the kill comes when the file is complete under its
    temporary name, before the rename). Without the variable this does nothing."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    target, _, nth = spec.partition("#")
    if target != name:
        return
    _kill_counts[name] = _kill_counts.get(name, 0) + 1
    if _kill_counts[name] >= int(nth or 1):
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the permissions a plain ``open(path, "w")`` would (0o666 less the umask), not
    the 0o600 of the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        kill_point(path.name)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def temp_dir(path: str | os.PathLike) -> Path:
    """A new empty temporary directory next to ``path`` (``.<name>.<pid>-<random>.tmp``), to be
    renamed onto ``path`` or deleted by its maker; a claim deletes it if its maker died. Its
    permissions are a plain ``mkdir``'s (umask), so they are right once renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename the directory ``src`` onto ``dst``; a directory already at ``dst`` is moved to a
    temporary first and deleted after (a crash in between leaves ``dst`` absent, never mixed)."""
    src, dst = Path(src), Path(dst)
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise ArtifactError(f"{dst} exists and is not a directory")
    if not dst.exists():
        os.replace(src, dst)
        return
    old = temp_dir(dst)
    os.replace(dst, old / dst.name)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def building_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty directory next to ``path``; when the block succeeds it is renamed onto
    ``path`` (replacing a directory there, see :func:`replace_dir`), otherwise deleted. A reader,
    or a crash, never sees half of it."""
    path = Path(path)
    tmp = temp_dir(path)
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clean_temporaries(directory: str | os.PathLike) -> list[str]:
    """Delete the temporaries a dead process left at the top of ``directory``: files and
    directories named by :func:`temp_dir`/:func:`atomic_path` whose PID no longer runs here, and
    a stage's scratch folders (only the directory's lock holder makes those: call this holding
    the lock). Returns the names deleted."""
    directory = Path(directory)
    gone = []
    for p in sorted(directory.iterdir()) if directory.is_dir() else []:
        m = _TEMP_RE.match(p.name)
        if m:
            pid = int(m.group(1))
            if pid == os.getpid() or _alive(pid):
                continue  # in use (a reader writing report.md, this process)
        elif not (_LOCKED_TEMP_RE.match(p.name) and p.is_dir()):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(p.name)
    if gone:
        log.info("%s: deleted temporaries of an interrupted command: %s", directory, gone)
    return gone


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` onto ``dst`` atomically (content only: ``dst`` gets umask permissions)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically. Only tensors and plain containers: reloadable with weights_only.

    Saved through a buffer: ``torch.save`` to a path records the file's (temporary, random) name
    inside the archive, so the same object would give different bytes each time.
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def load_torch(path: str | os.PathLike) -> Any:
    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a weights-only file
        raise ArtifactError(
            f"{path}: cannot load as a weights-only torch file ({e.__class__.__name__}: {e})"
        ) from e


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from e


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able values and files (``Path`` parts are hashed by content)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(p.name.encode())
            h.update(p.read_bytes() if p.is_file() else b"<missing>")
        else:
            h.update(json.dumps(p, sort_keys=True, default=_json_default).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------
# Who may write a directory


def check_not_nested(path: str | os.PathLike) -> None:
    """Refuse a run directory inside another one (a parent holding ``run.json``)."""
    path = Path(path)
    for parent in path.resolve().parents:
        if (parent / RUN_JSON).is_file():
            raise RunDirError(
                f"{path} is inside the run directory {parent}: give the run a directory of its "
                f"own (--out outside {parent})"
            )


def _command() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# The directories this process holds: resolved path → [lock, number of RunDir objects claiming it].
# Objects of one process share a claim (a second one is not "another writer"); the lock goes when
# the last of them releases.
_HELD: dict[str, list[Any]] = {}
_HELD_GUARD = threading.Lock()


def _acquire(path: Path) -> None:
    from filelock import FileLock, Timeout

    key = str(path.resolve())
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            return
        # thread_local=False: the claim is the process's, whichever thread releases it.
        lock = FileLock(str(path / LOCK_FILE), timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise RunDirError(_busy_message(path)) from None
        try:
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": _command(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            write_json(path / HOLDER_FILE, holder)
        except BaseException:
            lock.release()
            raise
        _HELD[key] = [lock, 1]


def _release(path: Path) -> None:
    key = str(path.resolve())
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[key]
        with contextlib.suppress(OSError):
            (path / HOLDER_FILE).unlink()  # before the lock goes: the next holder writes its own
        held[0].release()


def check_not_busy(path: str | os.PathLike) -> None:
    """Refuse at once if another process is writing ``path`` (a probe that claims nothing: a
    writer calls it before loading anything, then claims the directory for real)."""
    from filelock import FileLock, Timeout

    path = Path(path)
    if not (path / LOCK_FILE).is_file():
        return
    with _HELD_GUARD:
        if str(path.resolve()) in _HELD:
            return
        probe = FileLock(str(path / LOCK_FILE), timeout=0, thread_local=False)
        try:
            probe.acquire()
        except Timeout:
            raise RunDirError(_busy_message(path)) from None
        probe.release()


def _busy_message(path: Path) -> str:
    holder: dict[str, Any] = {}
    for _ in range(20):  # the holder writes its record just after it locks
        with contextlib.suppress(OSError, ValueError):
            holder = json.loads((path / HOLDER_FILE).read_text())
        if holder and (holder.get("host") != socket.gethostname() or _alive(holder.get("pid"))):
            break
        time.sleep(0.05)
    if holder:
        where = holder.get("host")
        elsewhere = f", on {where}" if where and where != socket.gethostname() else ""
        who = (
            f"PID {holder.get('pid')} ({holder.get('command', '?')}, since "
            f"{holder.get('since', '?')}{elsewhere})"
        )
    else:
        who = "another process (PID unknown)"
    return (
        f"{path} is being written by {who}; wait for it to finish, or give this run another --out"
    )


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"  # a sha256
    return json.dumps(value) if not isinstance(value, str) else value


_CHAIN = object()  # a stage recorded without "after": it depends on every stage before it


class RunDir:
    """A run directory and its ``run.json``.

    ``config``, ``model_source`` and ``identity`` are what this command would record; they are
    written with the first stage that finishes, never before. ``identity`` (model, model file
    sha256, data, seed …) says which run the directory belongs to: claiming a directory whose
    recorded identity differs is refused unless ``force``. ``keep``: files of this command that
    may lie inside the directory (its data, weights): never removed by ``force``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: dict[str, Any] | None = None,
        model_source: dict[str, Any] | None = None,
        *,
        identity: dict[str, Any] | None = None,
        force: bool = False,
        keep: Iterable[str | os.PathLike] = (),
    ) -> None:
        self.path = Path(path)
        self._new = {
            k: v
            for k, v in (("config", config), ("model_source", model_source), ("identity", identity))
            if v is not None
        }
        self._force = force
        self._keep = [Path(p) for p in keep]
        self._claimed = False
        self._load()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def _load(self) -> None:
        existing = read_json(self.path / RUN_JSON) if (self.path / RUN_JSON).is_file() else {}
        self.record: dict[str, Any] = {
            "config": existing.get("config", {}),
            "model_source": existing.get("model_source"),
            "identity": existing.get("identity"),
            "versions": existing.get("versions", {}),
            "stages": existing.get("stages", {}),
            "metrics": {},
        }
        self._merge_metrics()

    @property
    def stages(self) -> dict[str, Any]:
        return self.record["stages"]

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics of the stages still valid, merged in stage order (read-only view)."""
        return self.record["metrics"]

    def _merge_metrics(self) -> None:
        merged: dict[str, Any] = {}
        for rec in self.stages.values():
            merged.update(rec.get("metrics", {}))
        self.record["metrics"] = merged

    # ---- one writer ---------------------------------------------------------------------------
    @property
    def claimed(self) -> bool:
        return self._claimed

    def claim(self) -> None:
        """Take the directory for writing (idempotent); see the module contract.

        Raises :class:`RunDirError` if another process holds it, if it lies inside another run
        directory, or if it holds another run and ``force`` was not given.
        """
        if self._claimed:
            return
        check_not_nested(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        _acquire(self.path)
        try:
            if (self.path / WIPE_MARKER).is_file():
                log.warning("%s: finishing the removal of an earlier run's files", self.path)
                self._wipe()
            clean_temporaries(self.path)  # a killed writer's half-made files and folders
            self._load()  # another writer may have finished since this object read run.json
            self._check_identity()
        except BaseException:
            _release(self.path)
            raise
        self._claimed = True

    def release(self) -> None:
        """Give the directory back (no-op if not claimed)."""
        if self._claimed:
            self._claimed = False
            _release(self.path)

    def __del__(self) -> None:  # a claim nobody released (a stage called outside writing())
        try:
            self.release()
        except Exception:
            pass

    @contextlib.contextmanager
    def writing(self) -> Iterator[RunDir]:
        """Hold the directory for the whole block (claimed on entry, released on exit unless it
        was claimed already)."""
        held = self._claimed
        self.claim()
        try:
            yield self
        finally:
            if not held:
                self.release()

    def _check_identity(self) -> None:
        new = self._new.get("identity")
        old = self.record.get("identity") or self._legacy_identity()
        if not new or not old:
            return
        differ = [k for k in new if k in old and old[k] != new[k]]
        if not differ:
            return
        was = ", ".join(f"{k} {_short(old[k])}" for k in differ)
        now = ", ".join(f"{k} {_short(new[k])}" for k in differ)
        if not self._force:
            raise RunDirError(
                f"{self.path} holds another run ({was}; this command: {now}): give this run "
                f"another --out, or add --force to delete that run's files and start over"
            )
        log.warning("--force: deleting the run in %s (%s) to start over (%s)", self.path, was, now)
        self._wipe()

    def _legacy_identity(self) -> dict[str, Any] | None:
        """The identity of a run recorded before run.json had one (model, its file, seed)."""
        cfg = self.record.get("config") or {}
        if "model" not in cfg:
            return None
        source = self.record.get("model_source") or {}
        out = {k: cfg[k] for k in ("model", "model_args", "seed") if k in cfg}
        if source.get("sha256"):
            out["model_sha256"] = source["sha256"]
        return out

    def _wipe(self) -> None:
        """Delete every file of the directory but the lock's and this command's inputs.

        A marker written first (and removed last) makes an interrupted removal finish at the next
        claim, so the directory never keeps some of an old run's files."""
        marker = self.path / WIPE_MARKER
        keep = {p.resolve() for p in self._keep}
        if marker.is_file():
            with contextlib.suppress(ArtifactError):
                keep |= {Path(p) for p in read_json(marker).get("keep", [])}
        write_json(marker, {"keep": sorted(str(p) for p in keep)})
        (self.path / RUN_JSON).unlink(missing_ok=True)
        for p in sorted(self.path.iterdir()):
            if p.name in _OWN_FILES:
                continue
            resolved = p.resolve()
            if any(k == resolved or resolved in k.parents for k in keep):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        marker.unlink()
        self._load()

    # ---- stages -------------------------------------------------------------------------------
    def save(self) -> None:
        """Write ``run.json``: this command's config and identity, versions, stages, metrics."""
        self.claim()
        self.record.update(self._new)
        self.record["versions"] = package_versions()
        self._merge_metrics()
        write_json(self.path / RUN_JSON, self.record)

    def output_problem(self, rec: dict[str, Any]) -> str | None:
        """Why a recorded stage's outputs cannot be reused (None: they can)."""
        hashes = rec.get("sha256") or {}
        for name in rec.get("outputs", []):
            path = self.path / name
            if not path.is_file():
                return f"{path} is missing"
            if name not in hashes:
                return f"{path} has no recorded sha256 (written by an older fitc)"
            if sha256_file(path) != hashes[name]:
                return f"{path} was changed since the stage wrote it (sha256 differs)"
        return None

    def is_done(self, stage: str, fp: str) -> bool:
        rec = self.stages.get(stage)
        if not rec or rec.get("fingerprint") != fp:
            return False
        problem = self.output_problem(rec)
        if problem:
            log.warning("stage %s: %s; redoing the stage", stage, problem)
            return False
        return True

    def checked(self, name: str) -> Path:
        """The path of artifact ``name``, checked against the sha256 its stage recorded.

        Raises :class:`ArtifactError` if the file is missing or changed. A file no finished stage
        records (being written now, or not an output) is returned unchecked.
        """
        path = self.path / name
        for stage, rec in reversed(self.stages.items()):
            if name not in rec.get("outputs", []):
                continue
            expected = (rec.get("sha256") or {}).get(name)
            if expected is not None and (not path.is_file() or sha256_file(path) != expected):
                what = "is missing" if not path.is_file() else "was changed"
                raise ArtifactError(
                    f"{path} {what} since stage {stage} wrote it; run the command that made this "
                    f"run again to redo the stage"
                )
            break
        return path

    def _forget(self, stage: str, outputs: list[str]) -> tuple[list[str], list[str]]:
        """Forget ``stage``, every stage that wrote one of ``outputs``, and every stage that
        depends on one of those, in memory. Returns the forgotten files and dirs.

        A stage recorded with ``after`` depends on that stage (and so on up the chain); one
        recorded without (older runs) depends on every stage before it."""
        names = list(self.stages)
        gone: set[str] = set()
        for i, name in enumerate(names):
            rec = self.stages[name]
            parent = rec.get("after", _CHAIN)
            if (
                name == stage
                or set(rec.get("outputs", [])) & set(outputs)
                or (parent is _CHAIN and any(n in gone for n in names[:i]))
                or (parent is not _CHAIN and parent in gone)
            ):
                gone.add(name)
        files: list[str] = []
        dirs: list[str] = []
        for name in [n for n in names if n in gone]:
            rec = self.stages.pop(name)
            files += rec.get("outputs", [])
            dirs += rec.get("dirs", [])
        return files, dirs

    def run_stage(
        self,
        stage: str,
        fp: str,
        outputs: list[str],
        fn: Callable[[], dict[str, Any] | None],
        *,
        optional: Iterable[str] = (),
        dirs: Iterable[str] = (),
        after: Any = _CHAIN,
    ) -> bool:
        """Run ``fn`` unless ``stage`` is already done with fingerprint ``fp``.

        ``fn`` writes ``outputs`` (file names relative to the run directory), maybe ``optional``
        files, and its working directories ``dirs``; it returns metrics to merge into ``run.json``.
        ``after``: the stage this one depends on (None: none; default: every stage recorded
        before it); redoing that stage forgets this one. Branches (an hls4ml and an RTL lowering of the same graph) so live side
        by side. Returns True if the stage ran, False if it was reused. Claims the directory first (see
        :meth:`claim`). Nothing is recorded until ``fn`` succeeded: then the stages it makes stale
        (the ones writing the same files, and all after them) are forgotten and their other
        outputs and directories removed, and ``run.json`` is written. A failed stage leaves
        ``run.json`` and every earlier file as they were (a file it overwrote no longer matches
        its recorded sha256: the stage that wrote it is redone next time).
        """
        self.claim()
        optional, dirs = list(optional), list(dirs)
        if self.is_done(stage, fp):
            log.info("stage %s: reusing %s", stage, ", ".join(outputs) or "results")
            return False
        before = dict(self.stages)
        stale_files, stale_dirs = self._forget(stage, [*outputs, *optional])
        try:
            t0 = time.perf_counter()
            metrics = fn() or {}
            wall = time.perf_counter() - t0
            missing = [o for o in outputs if not (self.path / o).is_file()]
            if missing:
                raise ArtifactError(f"stage {stage} finished without writing {missing}")
        except BaseException:
            self.record["stages"] = before  # as on disk: loaders check files against it
            raise
        written = [*outputs, *(o for o in optional if (self.path / o).is_file())]
        for name in set(stale_files) - set(written):
            (self.path / name).unlink(missing_ok=True)
        for name in set(stale_dirs) - set(dirs):
            shutil.rmtree(self.path / name, ignore_errors=True)
        self.stages[stage] = {
            "fingerprint": fp,
            "wall_time_s": round(wall, 3),
            "outputs": written,
            "sha256": {name: sha256_file(self.path / name) for name in written},
            **({"dirs": dirs} if dirs else {}),
            **({"after": after} if after is not _CHAIN else {}),
            "metrics": metrics,
        }
        self.save()
        log.info("stage %s: done in %.2f s", stage, wall)
        return True
