"""The generation a server process serves now, and its hot reload: a new generation swapped in atomically.

A `Served` is one generation as a process serves it: its matcher, boards and the warm-up of both.
`Live` holds the current one. A request reads `Live.current` once, at its start, and uses that
`Served` to the end, so a swap never changes the catalog under a request: in-flight requests
finish on the old matcher, and it is dropped when the last of them is done. `Live.reload`
loads and validates the files, builds and warms the new matcher on the calling thread while the
old one keeps serving, and only then swaps the reference; a file that does not load raises the
loader's own error and changes nothing. With a `GenerationStore` (several workers), the reload
also publishes the generation there, and every worker's watcher thread swaps to what the store
points at, so all workers serve the generation of the last reload, whichever of them ran it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .engine import Matcher
from .errors import MatcherError
from .generation import Generation, GenerationStore

__all__ = ["Live", "ReloadOutcome", "Served", "WarmUp"]

WATCH_INTERVAL_SECONDS = 0.25
_log = logging.getLogger(__name__)


class WarmUp:
    """One matcher's warm-up (index and model), run once; health and the match route read its state.

    The server's first generation warms on a background thread (`start`), so the port answers at
    once; a reloaded generation warms on the reloading thread (`run`) before it is swapped in. A
    model load cannot be interrupted, so a shutdown during warm-up waits for it (`wait`), while the
    interpreter is whole, and never leaves a daemon thread inside torch.
    """

    def __init__(self, matcher: Matcher, *, keys_required: bool = False) -> None:
        self._matcher = matcher
        self.keys_required = keys_required
        self._done = threading.Event()
        self._after: list[Callable[[], None]] = []
        self._started = False
        self._start_lock = threading.Lock()
        self.error: BaseException | None = None

    @property
    def status(self) -> Literal["ok", "starting", "failed"]:
        """``starting`` until warm-up returns, then ``ok``, or ``failed`` if it raised."""
        if not self._done.is_set():
            return "starting"
        return "failed" if self.error is not None else "ok"

    def start(self) -> None:
        """Warm up on a new thread unless it already ran or runs (an app served twice warms once)."""
        if not self._claim():
            return
        _log.info("task-matcher warming up %d tasks (semantic=%s) in the background; "
                  "health answers 503 until it is ready", len(self._matcher.catalog), self._matcher.semantic_enabled)
        threading.Thread(target=self._run, name="task-matcher-warm-up", daemon=False).start()

    def run(self) -> None:
        """Warm up on this thread (unless it already ran); the error, if any, is kept and re-raised."""
        if self._claim():
            self._run()
        self._done.wait()
        if self.error is not None:
            raise self.error

    def after(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the warm-up succeeded (at once if it already has)."""
        self._after.append(callback)
        if self.status == "ok":
            callback()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until warm-up finished (successfully or not) or `timeout` seconds passed."""
        return self._done.wait(timeout)

    def _claim(self) -> bool:
        with self._start_lock:
            if self._started:
                return False
            self._started = True
            return True

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self._matcher.warm_up()
        except Exception as exc:  # reported by health and the log; the server keeps answering
            self.error = exc
            _log.exception("task-matcher warm-up failed; health and match answer 503")
        else:
            _log.info("task-matcher ready in %.1f s: %d tasks, semantic=%s, api keys %s",
                      time.perf_counter() - started, len(self._matcher.catalog),
                      self._matcher.semantic_enabled, "required" if self.keys_required else "off")
        finally:
            self._done.set()
        if self.error is None:
            for callback in self._after:
                callback()


@dataclass(frozen=True)
class Served:
    """One generation as this process serves it."""

    generation: Generation
    matcher: Matcher
    warm: WarmUp
    task_list: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, generation: Generation, matcher: Matcher, *, keys_required: bool = False) -> Served:
        """`matcher` over `generation`, not yet warm."""
        return cls(generation, matcher, WarmUp(matcher, keys_required=keys_required),
                   {"tasks": [task.to_dict(examples_n=0) for task in generation.catalog.list()]})

    @property
    def fingerprint(self) -> str:
        """The generation's fingerprint."""
        return self.generation.fingerprint


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: ``reloaded`` to a new generation, or ``unchanged`` (the files hold the served one)."""

    status: Literal["reloaded", "unchanged"]
    previous: str
    generation: str
    tasks: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The admin route's response body."""
        return {"status": self.status, "previous": self.previous, "generation": self.generation,
                "tasks": self.tasks, "seconds": round(self.seconds, 3)}


class Live:
    """The `Served` generation of this process, swapped atomically by `reload` (see the module docstring).

    `load` reads and validates the files (a new `Generation` each call); `build` makes the matcher
    for a generation; `store`, when set, is where the workers' generations are published and
    watched.
    """

    def __init__(self, served: Served, *, build: Callable[[Generation], Matcher],
                 load: Callable[[], Generation] | None = None, store: GenerationStore | None = None) -> None:
        self._current = served
        self._build = build
        self._load = load
        self._store = store
        self._on_swap: Callable[[Served | None, Served], None] | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._failed: str | None = None

    def observe(self, on_swap: Callable[[Served | None, Served], None]) -> None:
        """Tell `on_swap` of the current generation now (old None) and of every swap after (old, new)."""
        self._on_swap = on_swap
        on_swap(None, self._current)

    @property
    def current(self) -> Served:
        """The generation to serve a request that starts now (read it once per request)."""
        return self._current

    @property
    def can_reload(self) -> bool:
        """Whether this process knows where to reload from."""
        return self._load is not None

    def reload(self) -> ReloadOutcome:
        """Load the files, warm the new generation, swap it in, and publish it for the other workers.

        Raises the loader's error (`MatcherError`, `OSError`) when the files do not load, and the
        warm-up's when the new matcher cannot warm up; either way the served generation stays.
        """
        if self._load is None:
            raise MatcherError("this server has no catalog files to reload from")
        started = time.perf_counter()
        with self._reload_lock:
            previous = self._current
            generation = self._load()
            if generation.fingerprint != previous.fingerprint:
                self._swap(generation)
            if self._store is not None:
                self._store.publish(generation)
        status: Literal["reloaded", "unchanged"] = (
            "unchanged" if generation.fingerprint == previous.fingerprint else "reloaded")
        _log.info("task-matcher reload: %s, generation %s -> %s (%d tasks)", status, previous.fingerprint[:12],
                  generation.fingerprint[:12], len(generation.catalog))
        return ReloadOutcome(status, previous.fingerprint, generation.fingerprint, len(generation.catalog),
                             time.perf_counter() - started)

    def watch(self, interval: float = WATCH_INTERVAL_SECONDS) -> None:
        """Follow the store's pointer on a daemon thread until `stop` (no store: nothing to watch)."""
        if self._store is None or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._follow, args=(interval,), name="task-matcher-generation-watch",
                                         daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """End the watcher thread."""
        self._stop.set()

    def _follow(self, interval: float) -> None:
        assert self._store is not None
        while not self._stop.wait(interval):
            fingerprint = self._current.fingerprint
            try:
                fingerprint, _ = self._store.pointer()
                if fingerprint in (self._current.fingerprint, self._failed):
                    continue
                with self._reload_lock:
                    if self._store.pointer()[0] == self._current.fingerprint:
                        continue
                    generation = self._store.current()
                    self._swap(generation)
                _log.info("task-matcher now serves generation %s (%d tasks), published by a reload",
                          generation.fingerprint[:12], len(generation.catalog))
            except Exception:  # this worker keeps its generation; a later publish is tried again
                self._failed = fingerprint
                _log.exception("task-matcher cannot serve the published generation %s; still serving %s",
                               fingerprint[:12], self._current.fingerprint[:12])

    def _swap(self, generation: Generation) -> None:
        """Build and warm the matcher of `generation` on this thread, then make it current."""
        old = self._current
        served = Served.of(generation, self._build(generation), keys_required=old.warm.keys_required)
        served.warm.run()
        self._current = served
        self._failed = None
        if self._on_swap is not None:
            self._on_swap(old, served)
