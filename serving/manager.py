"""Which versions of which models are served: polling, version policy, hot swap, labels, status.

A new version is loaded and warmed up before it is routed to; the one it replaces is closed only
when its in-flight requests are done (TF Serving's AvailabilityPreservingPolicy): no request fails
a swap. At start-up a failed load is retried --max_num_load_retries times; later, a failed version
is reported (END with its error, as ServableStateMonitor) and retried when its directory changed
(names, sizes, mtimes, modes), then stayed unchanged for a poll. What serves keeps serving."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from serving import deadlines, inference
from serving.batching import Batcher
from serving.config import BatchingOptions, ModelConfig
from serving.errors import (
    ServingError,
    failed_precondition,
    invalid,
    load_error_status,
    not_found,
)
from serving.labels import assign_labels
from serving.loader import (
    Servable,
    load_servable,
    permission_message,
    unreadable_path,
    version_fingerprint,
)
from serving.metrics import Metrics
from serving.versions import aspired_versions, version_dirs

log = logging.getLogger(__name__)


@dataclass
class VersionStatus:
    state: str = "START"  # START | LOADING | AVAILABLE | UNLOADING | END
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""


@dataclass
class Loaded:
    servable: Servable
    run: Callable
    batcher: Batcher | None = None


@dataclass
class ModelState:
    config: ModelConfig
    status: dict[int, VersionStatus] = field(default_factory=dict)
    loaded: dict[int, Loaded] = field(default_factory=dict)
    failed: dict[int, tuple] = field(default_factory=dict)  # version -> fingerprint that failed
    changed: dict[int, tuple] = field(default_factory=dict)  # version -> fingerprint seen changed
    attempts: dict[int, int] = field(default_factory=dict)  # version -> loads tried so far
    labels: dict[str, int] = field(default_factory=dict)


@dataclass
class Handle:
    servable: Servable
    run: Callable


class ModelManager:
    def __init__(
        self,
        models: list[ModelConfig],
        *,
        batching: BatchingOptions | None = None,
        metrics: Metrics | None = None,
        warmup: bool = True,
        allow_labels_for_unavailable: bool = False,
    ):
        self.batching = batching
        self.metrics = metrics or Metrics()
        self.warmup = warmup
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self._lock = threading.RLock()  # routing tables
        self._poll_lock = threading.Lock()  # one poll / reload at a time
        self._models: dict[str, ModelState] = {m.name: ModelState(m) for m in models}
        # versions of models a reload removed, as ServableStateMonitor keeps them (END)
        self._ended: dict[str, dict[int, VersionStatus]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ requests

    @contextlib.contextmanager
    def handle(
        self, name: str, version: int | None = None, label: str = "", deadline: float | None = None
    ) -> Iterator[Handle]:
        """The servable a ModelSpec resolves to, held so it is not unloaded mid-request; its
        `run` carries the request's deadline (serving/deadlines.py) to every model run."""
        for _ in range(3):
            with self._lock:
                loaded = self._resolve(name, version, label)
            if loaded.servable.acquire():
                break
        else:  # raced with an unload three times in a row
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"Model {name} is being unloaded")
        try:
            yield Handle(loaded.servable, functools.partial(loaded.run, deadline=deadline))
        finally:
            loaded.servable.release()

    def _resolve(self, name: str, version: int | None, label: str) -> Loaded:
        model = self._models.get(name)
        if label:
            if model is None or label not in model.labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        if model is None or not model.loaded:
            request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise not_found(f"Servable not found for request: {request}")
        if version is None:
            return model.loaded[max(model.loaded)]
        if version not in model.loaded:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return model.loaded[version]

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionStatus]]:
        """GetModelStatus (get_model_status_impl.cc texts)."""
        with self._lock:
            model = self._models.get(name)
            states = dict(model.status) if model else dict(self._ended.get(name, {}))
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [(version, states[version])]
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        return sorted(states.items())

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def is_serving(self) -> bool:
        """Every configured model has at least one version available."""
        with self._lock:
            return bool(self._models) and all(m.loaded for m in self._models.values())

    # ------------------------------------------------------------ loading

    def _set(self, model: ModelState, version: int, state: str, code=None, message="") -> None:
        with self._lock:
            model.status[version] = VersionStatus(state, code or grpc.StatusCode.OK, message)
        self.metrics.set_state(model.config.name, version, state)

    def _runner(self, servable: Servable) -> tuple[Callable, Batcher | None]:
        name = servable.name

        def direct(feeds, fetches, deadline=None):
            deadlines.check(deadline, time.monotonic())  # a refused run is no runtime sample
            start = time.perf_counter()
            try:
                return servable.run(feeds, fetches, deadline)
            finally:
                self.metrics.runtime_latency.labels(name, "Predict", "TF1").observe(
                    (time.perf_counter() - start) * 1e6
                )

        if self.batching is None:
            return direct, None

        batcher = Batcher(self.batching, direct, functools.partial(self.metrics.record_batch, name))
        return batcher.run, batcher

    def _load(self, model: ModelState, version: int, path, fingerprint: tuple | None = None):
        name = model.config.name
        if fingerprint is None:
            fingerprint = version_fingerprint(path)  # before loading: a change during it counts
        attempt = model.attempts.get(version, 0) + 1
        model.attempts[version] = attempt
        self._set(model, version, "START")
        self._set(model, version, "LOADING")
        again = f" (attempt {attempt}: its directory changed since the last failure)"
        log.info("loading %s version %d from %s%s", name, version, path, again * (attempt > 1))
        start = time.monotonic()
        servable = batcher = None
        try:
            servable = load_servable(name, version, path)
            run, batcher = self._runner(servable)
            warmed = inference.replay_warmup(servable, run) if self.warmup else 0
        except Exception as exc:  # noqa: BLE001 - any load failure is reported, never raised
            if batcher is not None:
                batcher.stop()
            if servable is not None:
                servable.session.close()
            code, message = load_error_status(exc)
            if isinstance(exc, ServingError):
                code, message = exc.code, f"warmup failed: {exc.message}"
            denied = unreadable_path(path)
            if denied is not None:
                code, message = (
                    grpc.StatusCode.PERMISSION_DENIED,
                    permission_message(denied, message),
                )
            message = (
                f"{message} (load attempt {attempt} failed; it is retried when a file or "
                f"directory under {path} changes)"
            )
            log.error("%s version %d failed to load: %s", name, version, message)
            model.failed[version] = fingerprint
            model.changed.pop(version, None)
            self._set(model, version, "END", code, message)
            self.metrics.load_count.labels(str(path), "fail").inc()
            return
        with self._lock:
            model.loaded[version] = Loaded(servable, run, batcher)
            model.failed.pop(version, None)
            model.changed.pop(version, None)
            model.attempts.pop(version, None)
        self._set(model, version, "AVAILABLE")
        self.metrics.load_count.labels(str(path), "success").inc()
        log.info(
            "%s version %d available (%.1fs, %d warmup records)",
            name,
            version,
            time.monotonic() - start,
            warmed,
        )

    def _unload(self, model: ModelState, version: int) -> None:
        with self._lock:
            loaded = model.loaded.pop(version, None)
        if loaded is None:
            return
        self._set(model, version, "UNLOADING")
        loaded.servable.close()  # waits for in-flight requests of this version
        if loaded.batcher is not None:
            loaded.batcher.stop()
        self._set(model, version, "END")
        log.info("%s version %d unloaded", model.config.name, version)

    def _poll_model(self, model: ModelState) -> None:
        on_disk = version_dirs(model.config.base_path)
        aspired = aspired_versions(list(on_disk), model.config.policy)
        if not on_disk:
            log.warning(
                "No versions of servable %s found under base path %s",
                model.config.name,
                model.config.base_path,
            )
        for version in list(model.failed):
            if version not in on_disk:  # removed: a new directory of that number starts afresh
                for table in (model.failed, model.changed, model.attempts):
                    table.pop(version, None)
        for version in aspired:
            if version in model.loaded:
                continue
            fingerprint = None
            if version in model.failed:
                fingerprint = version_fingerprint(on_disk[version])
                if fingerprint == model.failed[version]:
                    model.changed.pop(version, None)
                    continue  # failed before and unchanged on disk: not retried
                if model.changed.get(version) != fingerprint:
                    model.changed[version] = fingerprint  # still being written? wait a poll
                    continue
            self._load(model, version, on_disk[version], fingerprint)
        available = [v for v in aspired if v in model.loaded]
        for version in sorted(model.loaded):
            if version not in aspired and (available or not aspired):
                self._unload(model, version)

    def poll(self) -> None:
        """One pass of TF Serving's file-system source + manager: load, then unload."""
        with self._poll_lock:
            for model in list(self._models.values()):
                self._poll_model(model)
            self._apply_labels()

    def load_initial(self, retries: int, interval: float) -> str:
        """ServerCore::Create: load every aspired version, a failed load retried `retries` times
        `interval` s apart (--max_num_load_retries, --load_retry_interval_micros). Returns ""
        when all became available, else TF Serving's `N servable(s) did not become available`."""
        self.poll()
        for _ in range(max(retries, 0)):
            if not self._not_available() or (interval > 0 and self._stop.wait(interval)):
                break
            with self._poll_lock:
                for model, version, path in self._not_available():
                    self._load(model, version, path)
                self._apply_labels()
        failed = self._not_available()
        if not failed:
            return ""
        items = ", ".join(
            f"{{name: {m.config.name} version: {v}}} due to error: {m.status[v].message}"
            for m, v, _ in failed
        )
        return f"{len(failed)} servable(s) did not become available: {{{items}}}"

    def _not_available(self) -> list[tuple[ModelState, int, object]]:
        missing = []
        for model in list(self._models.values()):
            on_disk = version_dirs(model.config.base_path)
            for version in aspired_versions(list(on_disk), model.config.policy):
                if version not in model.loaded:
                    missing.append((model, version, on_disk[version]))
        return missing

    def _apply_labels(self) -> None:
        problems = []
        with self._lock:
            for model in self._models.values():
                model.labels, refused = assign_labels(
                    model.config.name,
                    model.config.labels,
                    model.labels,
                    set(model.loaded),
                    self.allow_labels_for_unavailable,
                )
                problems += refused
        if problems:
            raise failed_precondition("; ".join(problems))

    def reload_config(self, models: list[ModelConfig]) -> None:
        """HandleReloadConfigRequest: add, update and remove models, then poll."""
        with self._poll_lock:
            with self._lock:
                new = {m.name: m for m in models}
                removed = [s for n, s in self._models.items() if n not in new]
                for name, config in new.items():
                    if name in self._models:
                        self._models[name].config = config
                    else:
                        self._models[name] = ModelState(config)
                        self._ended.pop(name, None)
                for state in removed:
                    del self._models[state.config.name]
            for state in removed:
                for version in list(state.loaded):
                    self._unload(state, version)
                with self._lock:
                    self._ended[state.config.name] = dict(state.status)
            for model in list(self._models.values()):
                self._poll_model(model)
            self._apply_labels()

    # ------------------------------------------------------------ background polling

    def start_polling(self, every_seconds: int, config_reader=None, config_every: int = 0) -> None:
        if every_seconds > 0:
            self._spawn("fs-poll", every_seconds, self._safe_poll)
        if config_reader is not None and config_every > 0:
            self._spawn("config-poll", config_every, lambda: self._reload_from(config_reader))

    def _spawn(self, name: str, every: float, fn) -> None:
        def loop():
            while not self._stop.wait(every):
                fn()

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _safe_poll(self) -> None:
        try:
            self.poll()
        except ServingError as exc:
            log.error("%s", exc.message)
        except Exception:  # noqa: BLE001 - the poller must survive anything
            log.exception("polling the model base paths failed")

    def _reload_from(self, reader) -> None:
        try:
            self.reload_config(reader())
        except Exception as exc:  # noqa: BLE001 - keep serving the previous config
            log.error("reloading the model config failed, keeping the previous one: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._poll_lock:
            for model in self._models.values():
                for version in list(model.loaded):
                    self._unload(model, version)
