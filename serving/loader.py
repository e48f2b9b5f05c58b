"""Load one model version as TF Serving does: a TF1 session on the `serve` MetaGraph.

`tf.compat.v1.saved_model.loader.load(sess, ["serve"], dir)` is what tensorflow_model_server's
SavedModelBundle does; the signatures come from the MetaGraph's SignatureDef map (never from TF2
concrete functions), so a model that works here works in TF Serving and vice versa.

Nothing here is imported from export/: the tag is TensorFlow's own constant (TF Serving's
kSavedModelTagServe), and the warmup file name is TF Serving's, repeated below.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving import deadlines

log = logging.getLogger(__name__)
MAX_WARMUP_RECORDS = 1000  # saved_model_warmup_util.cc: kMaxNumRecords
MAX_ENDPOINTS = 256  # feed and fetch lists whose graph endpoints are kept per version
# saved_model_warmup_util.cc: kSavedModelWarmupRequestsFileName, under assets.extra/. The exporter
# writes the same name (export/contract.py WARMUP_FILE); tests/serving keeps the two equal.
WARMUP_FILE = "tf_serving_warmup_requests"


@dataclass
class Servable:
    """A loaded version: its session, signatures and an in-flight request count."""

    name: str
    version: int
    path: Path
    session: object
    signatures: dict  # name -> tensorflow.core.protobuf.meta_graph_pb2.SignatureDef
    _inflight: int = 0
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _closed: bool = False
    _endpoints: dict = field(default_factory=dict)  # (feeds, fetches) -> their TF_Outputs

    def run(
        self, feeds: dict[str, np.ndarray], fetches: list[str], deadline: float | None = None
    ) -> list[np.ndarray]:
        """Session::Run by tensor names with the deadline's RunOptions.timeout_in_ms (thread-safe;
        TF releases the GIL while it runs).

        TensorFlow cancels a run that outlives its timeout: DEADLINE_EXCEEDED, "Timed out waiting
        for notification", as TF Serving's session does; a deadline already passed raises
        DEADLINE_EXCEEDED without running (serving/deadlines.py). Through the C API's
        TF_SessionRun, as TF Serving calls Session::Run: the Python `session.run` would refuse a
        feed whose shape differs from the tensor's static shape (half_plus_two's x is [-1,1], its
        quickstart feeds [3]); TF Serving's C++ session leaves that to the graph, and so does
        this. The graph endpoints of each feed and fetch list are looked up once."""
        from tensorflow.core.protobuf import config_pb2
        from tensorflow.python.client import pywrap_tf_session as tf_session

        now = time.monotonic()
        deadlines.check(deadline, now)
        names = list(feeds)
        key = (tuple(names), tuple(fetches))
        endpoints = self._endpoints.get(key)
        if endpoints is None:
            graph = self.session.graph
            endpoints = tuple(
                [graph.as_graph_element(n)._as_tf_output() for n in group]  # noqa: SLF001
                for group in (names, fetches)
            )
            with self._lock:
                if len(self._endpoints) >= MAX_ENDPOINTS:
                    self._endpoints.clear()
                self._endpoints[key] = endpoints
        inputs, outputs = endpoints
        timeout = deadlines.timeout_ms(deadline, now)
        options = None
        if timeout:
            serialized = config_pb2.RunOptions(timeout_in_ms=timeout).SerializeToString()
            options = tf_session.TF_NewBufferFromString(serialized)
        try:
            return list(
                tf_session.TF_SessionRun_wrapper(
                    self.session._session,  # noqa: SLF001
                    options,
                    dict(zip(inputs, (feeds[name] for name in names))),
                    outputs,
                    [],
                    None,
                )
            )
        finally:
            if options is not None:
                tf_session.TF_DeleteBuffer(options)

    def acquire(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            self._lock.notify_all()

    def close(self, timeout: float = 60.0) -> None:
        """Unload after the requests holding this version finished (no request fails a swap)."""
        with self._lock:
            self._closed = True
            self._lock.wait_for(lambda: self._inflight == 0, timeout=timeout)
        self.session.close()


def load_servable(name: str, version: int, path: str | Path) -> Servable:
    """Load `path` TF1-style; raises whatever TensorFlow raises for a broken SavedModel."""
    import tensorflow as tf

    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
        meta_graph = tf.compat.v1.saved_model.loader.load(
            session, [tf.saved_model.SERVING], str(path)
        )
    except BaseException:
        session.close()
        raise
    graph.finalize()  # as a SavedModelBundle: nothing may add ops once serving
    signatures = dict(meta_graph.signature_def)  # all of them, as SavedModelBundle keeps
    return Servable(name, version, Path(path), session, signatures)


def _can(path: str, mode: int) -> bool:
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def unreadable_path(path: str | Path) -> Path | None:
    """The first directory or file of a version this process may not read, or None.

    TensorFlow words an unreadable version as a missing one ("SavedModel file does not exist" for a
    0700 directory of another user, "not a valid checkpoint" for an unreadable variables/), so a
    failed load is checked with this to say what is wrong.
    """
    pending = [str(path)]
    while pending:
        directory = pending.pop()
        if not _can(directory, os.R_OK | os.X_OK):
            return Path(directory)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except PermissionError:
            return Path(directory)
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    if not entry.is_symlink():
                        pending.append(entry.path)
                    elif not _can(entry.path, os.R_OK | os.X_OK):  # not followed: no loops
                        return Path(entry.path)
                    continue
                # Non-blocking, so that a FIFO among the files cannot hang the server.
                os.close(os.open(entry.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
            except PermissionError:
                return Path(entry.path)
            except OSError:
                continue  # gone, a dangling link...: not a permission problem
    return None


def permission_message(path: Path, error: str) -> str:
    """What a load failure reports when a file of the version cannot be read."""
    return (
        f"permission denied: {path} is not readable by the server's user "
        f"(uid {os.geteuid()}, gid {os.getegid()}); make the version readable by it "
        f"(e.g. directories 0755, files 0644). TensorFlow said: {error}"
    )


def warmup_file(path: str | Path) -> Path | None:
    candidate = Path(path) / "assets.extra" / WARMUP_FILE
    return candidate if candidate.is_file() else None


def read_warmup_records(path: str | Path) -> list:
    """PredictionLog protos from assets.extra/tf_serving_warmup_requests (at most 1000)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    source = warmup_file(path)
    if source is None:
        return []
    records = []
    for record in tf.compat.v1.io.tf_record_iterator(str(source)):
        records.append(prediction_log_pb2.PredictionLog.FromString(record))
        if len(records) > MAX_WARMUP_RECORDS:
            raise ValueError(
                f"{source}: more than {MAX_WARMUP_RECORDS} warmup records (TF Serving's limit)"
            )
    return records


def version_fingerprint(path: str | Path) -> tuple:
    """What a failed load is retried on: every entry under the version directory, by relative
    name, kind, mode, size and mtime (stat only, nothing is read).

    A version copied in place (`cp -r`, `rsync`) may be loaded half-written and fail; any file
    added, grown, touched or chmod-ed afterwards (say variables/ after a PERMISSION_DENIED) changes
    this. Symlinks are followed as TensorFlow follows them, each directory once (no loops); an
    entry that cannot be listed or stat-ed is recorded as such, so that fixing it is a change too.
    """
    root = os.fspath(path)
    entries: list[tuple] = []
    seen: set[tuple[int, int]] = set()

    def record(relative: str, full: str) -> os.stat_result | None:
        try:
            st = os.stat(full)
        except OSError as exc:
            entries.append((relative, "error", exc.errno))
            return None
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        entries.append((relative, kind, st.st_mode, st.st_size, st.st_mtime_ns))
        return st

    pending = [("", root)]
    st = record("", root)
    if st is None:
        return tuple(entries)
    seen.add((st.st_dev, st.st_ino))
    while pending:
        relative, directory = pending.pop()
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            entries.append((relative, "unlisted", exc.errno))
            continue
        for name in names:
            child_relative = f"{relative}/{name}" if relative else name
            child = os.path.join(directory, name)
            st = record(child_relative, child)
            if st is not None and stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                pending.append((child_relative, child))
    return tuple(sorted(entries))
