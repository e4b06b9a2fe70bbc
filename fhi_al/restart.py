"""Restart support: atomic state records, RNG capture, completion markers and the run lock.

Restart is idempotent (psiflow-style): a finished step leaves a marker and is skipped on rerun; an
unfinished one is redone from the last record.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from fhi_al.durable import atomic_write_json, atomic_write_text, read_json
from fhi_al.errors import FhiAlError, RunLockedError

log = logging.getLogger(__name__)

SCHEMA = "fhi_al.restart"
SCHEMA_VERSION = 1
RESTART_DIR = "restart"
DONE_DIR = "done"
DONE_SUFFIX = ".done"
LOCK_NAME = ".fhi_al.lock"
ZOMBIE_STATE = "Z"
_STEP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# Tags of values JSON cannot hold as themselves; encoded as {"__tag__": ...} objects.
_ARRAY, _TUPLE, _ITEMS = "__ndarray__", "__tuple__", "__items__"


class RestartRecordError(FhiAlError):
    """A restart record exists but cannot be used (unknown schema version or damaged)."""


# ---------------------------------------------------------------- records


def save_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write `record` (nested dicts/lists/tuples of scalars, str and numpy arrays) atomically as JSON.

    Arrays are stored bit-exactly (base64 of the raw bytes with dtype and shape); dict keys that are not
    strings and tuples come back as they went in.
    """
    atomic_write_json(path, {"schema": SCHEMA, "version": SCHEMA_VERSION, "saved_at": time.time(),
                             "data": _encode(record)})


def load_record(path: str | os.PathLike, default: Any = None) -> Any:
    """The record saved at `path`, or `default` when there is none."""
    try:
        stored = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RestartRecordError(f"{path}: restart record is damaged ({exc}); delete it to start over") from exc
    if stored is None:
        return default
    if stored.get("schema") != SCHEMA or stored.get("version") != SCHEMA_VERSION:
        raise RestartRecordError(f"{path}: restart record has schema {stored.get('schema')!r} version "
                                 f"{stored.get('version')!r}; this fhi_al reads {SCHEMA!r} version {SCHEMA_VERSION}")
    return _decode(stored["data"])


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {_ARRAY: base64.b64encode(array.tobytes()).decode("ascii"), "dtype": array.dtype.str,
                "shape": list(array.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(item) for item in value]}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("__") for key in value):
            return {key: _encode(item) for key, item in value.items()}
        return {_ITEMS: [[_encode(key), _encode(item)] for key, item in value.items()]}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if _ARRAY in value:
        raw = base64.b64decode(value[_ARRAY])
        return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    if _TUPLE in value:
        return tuple(_decode(item) for item in value[_TUPLE])
    if _ITEMS in value:
        return {_hashable(_decode(key)): _decode(item) for key, item in value[_ITEMS]}
    return {key: _decode(item) for key, item in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


# ---------------------------------------------------------------- random number generators


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The full state of a numpy Generator (a plain dict that `save_record` stores exactly)."""
    return rng.bit_generator.state


def restore_rng(state: dict[str, Any]) -> np.random.Generator:
    """A new Generator that continues the stream captured by `rng_state`."""
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def torch_rng_state() -> np.ndarray:
    """torch's CPU RNG state as a uint8 array."""
    import torch

    return torch.get_rng_state().numpy().copy()


def restore_torch_rng(state: np.ndarray) -> None:
    import torch

    torch.set_rng_state(torch.from_numpy(np.asarray(state, dtype=np.uint8).copy()))


# ---------------------------------------------------------------- completion markers


def _marker(run_dir: str | os.PathLike, step: str) -> Path:
    if not _STEP_NAME.match(step):
        raise ValueError(f"step name {step!r} may hold only letters, digits, '_', '-' and '.'")
    return Path(run_dir) / RESTART_DIR / DONE_DIR / f"{step}{DONE_SUFFIX}"


def mark_done(run_dir: str | os.PathLike, step: str, info: dict[str, Any] | None = None) -> None:
    """Record that `step` (e.g. 'initial_dataset') finished; a rerun then skips it."""
    atomic_write_json(_marker(run_dir, step), {"step": step, "finished_at": time.time(), **(info or {})})


def is_done(run_dir: str | os.PathLike, step: str) -> bool:
    return _marker(run_dir, step).exists()


def done_info(run_dir: str | os.PathLike, step: str) -> dict[str, Any] | None:
    return read_json(_marker(run_dir, step))


def clear_done(run_dir: str | os.PathLike, step: str) -> None:
    _marker(run_dir, step).unlink(missing_ok=True)


# ---------------------------------------------------------------- run lock


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return stat[stat.rindex(")") + 2:].split()


def process_start_ticks(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks since boot, to tell a reused PID apart."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None  # field 22 of proc_pid_stat(5)


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        if exc.errno != errno.EPERM:  # EPERM: exists, owned by someone else
            return False
    fields = _proc_stat(pid)
    return not (fields and fields[0] == ZOMBIE_STATE)


class RunLock:
    """Context manager that owns a run folder: a lock file with PID, host and start time.

    Refuses with `RunLockedError` while a live process holds the folder; a lock left by a dead process
    on this host is taken over (logged). A lock from another host cannot be checked and is refused; the
    message says which file to delete. Take it on one rank only. Re-entrant within one process.
    """

    _held: dict[Path, int] = {}

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir).resolve() / LOCK_NAME

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def acquire(self) -> None:
        if self._held.get(self.path):
            self._held[self.path] += 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(LOCK_NAME + ".guard"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # serialises check-and-take-over between processes
            try:
                self._check_holder()
                atomic_write_text(self.path, json.dumps(_identity()) + "\n")
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)
        self._held[self.path] = 1

    def release(self) -> None:
        depth = self._held.get(self.path, 0)
        if depth > 1:
            self._held[self.path] = depth - 1
            return
        self._held.pop(self.path, None)
        holder = self._read_holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def _read_holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s: unreadable lock file (torn write?); treating it as stale", self.path)
            return None

    def _check_holder(self) -> None:
        holder = self._read_holder()
        if holder is None:
            return
        pid, host = int(holder.get("pid", -1)), holder.get("host")
        if host != socket.gethostname():
            raise RunLockedError(f"{self.path.parent} is locked by process {pid} on host {host}, which this "
                                 f"host cannot check; if that run is over, delete {self.path}")
        if _holder_alive(pid, holder.get("start_ticks")):
            raise RunLockedError(f"{self.path.parent} is in use by a running fhi_al process (PID {pid}, "
                                 f"started {time.ctime(holder.get('started_at', 0))}, lock file {self.path}); "
                                 f"wait for it to finish or stop it, then run again")
        log.warning("%s: taking over a stale lock left by process %d, which is no longer running",
                    self.path.parent, pid)


def _holder_alive(pid: int, start_ticks: int | None) -> bool:
    if pid <= 0 or not pid_alive(pid):
        return False
    current = process_start_ticks(pid)
    return start_ticks is None or current is None or current == start_ticks


def _identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start_ticks": process_start_ticks(pid),
            "started_at": time.time()}
