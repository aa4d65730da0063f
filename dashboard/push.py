"""Rerun the status line of every tab watching a run as soon as a new epoch (or the run's end) is in the store.

A fragment's `run_every` timer lives in the browser: the tab asks for a rerun when its timer fires, so a new
epoch waits for the next tick, and with a class's tabs sharing a machine the ticks and their requests run late
(20 tabs on this 2-core box: 1.3 s median, 4 s worst from the row's write to the tab showing it). Streamlit has
no public call for a server to rerun a session, so this uses its runtime the way its own file watcher does
(AppSession.request_rerun on the server's event loop, with the session's last client state and the fragment's
id): one thread per server looks at the shared read of each watched run (live.SharedReads, no extra store
reads) every POLL_S seconds and reruns the watching fragments when the run's epoch count or status moved.
Where Streamlit's internals differ (another version), `Pusher.available` is False and the timers alone serve.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_LOG = logging.getLogger(__name__)

POLL_S = 0.1  # seconds between looks at the shared reads (each look is in memory; a read is at most live.READ_TTL old)
FORGET_S = 30.0  # a tab not heard from for this long (closed, or watching another run) is dropped


@dataclass
class Watcher:
    fragment_id: str
    shown: tuple  # (epochs, status) the tab drew last
    seen_at: float


def _streamlit_hooks():
    """(here, rerun) from Streamlit's runtime, or None where this Streamlit lacks them: here() gives (this session's
    id, this fragment's id) inside a fragment, else None; rerun(session, fragment) reruns that session's fragment."""
    try:
        from streamlit.proto.ClientState_pb2 import ClientState
        from streamlit.runtime import get_instance
        from streamlit.runtime.scriptrunner_utils.script_run_context import ThreadState, get_script_run_ctx
    except ImportError:
        return None

    def here() -> tuple[str, str] | None:
        ctx = get_script_run_ctx()
        fragment_id = ThreadState.get().fragment_id if ctx is not None else None
        return (ctx.session_id, fragment_id) if fragment_id else None

    def rerun(session_id: str, fragment_id: str) -> bool:
        runtime = get_instance()
        info = runtime._session_mgr.get_active_session_info(session_id)
        if info is None:
            return False
        session = info.session
        state = ClientState()
        state.CopyFrom(session._client_state)  # query string and page of the tab's last run
        state.ClearField("widget_states")  # no widget changes (and no button press replayed)
        state.fragment_id = fragment_id
        state.is_auto_rerun = True
        runtime._get_async_objs().eventloop.call_soon_threadsafe(session.request_rerun, state)
        return True

    return here, rerun


class Pusher:
    """Which tabs watch which run, and the thread that reruns their fragment when the run moves."""

    def __init__(self, poll_s: float = POLL_S):
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._watchers: dict[tuple[str, int], dict[str, Watcher]] = {}  # (store url, run) -> session -> watcher
        self._latest: dict[tuple[str, int], Callable[[], tuple]] = {}  # how to read a run's (epochs, status)
        self._thread: threading.Thread | None = None
        hooks = _streamlit_hooks()
        self.available = hooks is not None
        self._here, self._rerun = hooks if hooks else (None, None)
        self.pushes = 0  # fragment reruns requested, for tests

    def watch(self, key: tuple[str, int], shown: tuple, latest: Callable[[], tuple]) -> None:
        """Called from a fragment that draws run `key` as `shown`: rerun it when `latest()` differs."""
        if not self.available:
            return
        try:
            here = self._here()
        except Exception:  # noqa: BLE001 - Streamlit's internals moved: the timers serve
            self.available = False
            return
        if here is None:  # not inside a fragment
            return
        session_id, fragment_id = here
        with self._lock:
            for watchers in self._watchers.values():  # a tab watches one run at a time
                watchers.pop(session_id, None)
            self._watchers.setdefault(key, {})[session_id] = Watcher(fragment_id, shown, time.monotonic())
            self._latest[key] = latest
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="live-push", daemon=True)
                self._thread.start()

    def watching(self) -> int:
        """Sessions watching a live run on this server now."""
        with self._lock:
            return sum(len(w) for w in self._watchers.values())

    def _loop(self) -> None:
        while self.available:
            time.sleep(self.poll_s)
            self.tick()

    def tick(self) -> None:
        """One look at every watched run; rerun the fragments of tabs that drew an older state."""
        now = time.monotonic()
        with self._lock:
            for gone in [k for k, w in self._watchers.items() if not w]:  # nobody watches these runs any more
                del self._watchers[gone]
                self._latest.pop(gone, None)
            keys = list(self._watchers)
        for key in keys:
            try:
                latest = self._latest[key]()
            except Exception:  # noqa: BLE001 - the run is gone or the store unreadable: its tabs say so themselves
                with self._lock:
                    self._watchers.pop(key, None)
                continue
            with self._lock:
                watchers = self._watchers.get(key, {})
                due = [(sid, w) for sid, w in watchers.items() if w.shown != latest]
                for sid, w in list(watchers.items()):
                    if now - w.seen_at > FORGET_S:
                        del watchers[sid]
                for _, w in due:
                    w.shown = latest  # once per change: the rerun re-registers with what it drew
            for sid, w in due:
                try:
                    alive = self._rerun(sid, w.fragment_id)
                except Exception:  # noqa: BLE001 - Streamlit's internals moved: say so once, the timers serve
                    _LOG.warning("live push off: this Streamlit's runtime differs; tabs refresh on their timers", exc_info=True)
                    self.available = False
                    with self._lock:
                        self._watchers.clear()
                    return
                if alive:
                    self.pushes += 1
                else:  # the session has gone
                    with self._lock:
                        self._watchers.get(key, {}).pop(sid, None)
