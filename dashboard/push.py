"""Rerun the live fragments of every tab watching a run from the server: at once when the run records an epoch or
changes status, and at a pace, spread over time, for what moves in between (progress, step points, the queue).

A fragment's `run_every` timer lives in the browser: the tab asks for a rerun when its timer fires, so a new
epoch waits for the next tick, and with a class's tabs sharing a machine the ticks and their requests run late
(20 tabs on this 2-core box: 1.3 s median, 4 s worst from the row's write to the tab showing it). A timer is
also fixed when the page is drawn: the first tabs of a class kept the fast timers of a lone watcher, and tabs
opened together fired together. Streamlit has no public call for a server to rerun a session, so this uses its
runtime the way its own file watcher does (AppSession.request_rerun on the server's event loop, with the
session's last client state and the fragment's id). One thread per server looks at what each watched fragment
shows (from live.SharedReads: no extra store reads) every POLL_S seconds and reruns it

* at once when its urgent part moved (a run's epochs recorded and status), and
* when its paced part moved (progress, step points) and its pace has passed since it last drew: the pace is
  set from the number of watching sessions at every look (more watchers: slower), the most overdue first, at
  most CATCH_UP times the steady rate of all paced redraws (so that a class's redraws, and a backlog such as
  every chart's first step points, are spread over time, not fired together), and not within QUIET_S of an
  urgent push (the browsers are drawing the epoch; longer when many were pushed) unless a whole pace overdue.

The fragments' own timers stay as a slow safety net (a push lost in a full rerun). Where Streamlit's internals
differ (another version), `Pusher.available` is False and the timers alone serve, at the paces of a lone watcher.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

_LOG = logging.getLogger(__name__)

POLL_S = 0.1  # seconds between looks at the shared reads (each look is in memory; a read is at most live.READ_TTL old)
FORGET_S = 60.0  # a fragment not run for this long (its tab closed or moved on; its safety-net timer is shorter)
QUIET_S = 0.5  # after an urgent push, paced redraws wait this long (unless a whole pace overdue)...
QUIET_PER_PUSH_S = 0.04  # ...or this long per fragment pushed, when longer: a browser's CPU time to draw one rerun
CATCH_UP = 1.5  # paced redraws go out at up to this many times their steady rate (a backlog drains, never in a burst)


class _Always:
    """A paced state that differs from every other: the fragment redraws at each pace (e.g. estimates that tick)."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return "ALWAYS"


ALWAYS = _Always()

State = tuple[Hashable, object]  # (urgent part, paced part) of what a fragment shows


@dataclass
class Watcher:
    topic: Hashable  # what the fragment shows (e.g. a run's status line): one read of it serves all its watchers
    shown: State  # what the tab drew last (or was last pushed to draw)
    pace: Callable[[int], float]  # watching sessions -> seconds between paced redraws
    drawn_at: float  # when it last drew, or was pushed
    seen_at: float  # when its fragment last ran
    moved_at: float | None = None  # when its paced part first differed from what it drew (None: it has not)


def _streamlit_hooks():
    """(here, rerun) from Streamlit's runtime, or None where this Streamlit lacks them: here() gives (this session's
    id, this fragment's id) inside a fragment, else None; rerun(session, fragment) reruns that session's fragment
    and says whether the session still holds it."""
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
        if hasattr(session, "has_fragment") and not session.has_fragment(fragment_id):
            return False  # the tab moved to another page (a full rerun re-registers a fragment it draws again)
        state = ClientState()
        state.CopyFrom(session._client_state)  # query string and page of the tab's last run
        state.ClearField("widget_states")  # no widget changes (and no button press replayed)
        state.fragment_id = fragment_id
        state.is_auto_rerun = True
        runtime._get_async_objs().eventloop.call_soon_threadsafe(session.request_rerun, state)
        return True

    return here, rerun


class Pusher:
    """Which fragments of which tabs show what, and the thread that reruns them when it moves."""

    def __init__(self, poll_s: float = POLL_S):
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._watchers: dict[tuple[str, str], Watcher] = {}  # (session, fragment) -> what it shows
        self._latest: dict[Hashable, Callable[[], State]] = {}  # topic -> how to read what it should show now
        self._quiet_until = 0.0
        self._credit = 0.0  # paced redraws this look may send (fractions carry over)
        self._thread: threading.Thread | None = None
        hooks = _streamlit_hooks()
        self.available = hooks is not None
        self._here, self._rerun = hooks if hooks else (None, None)

    def watch(self, topic: Hashable, shown: State, latest: Callable[[], State],
              pace: Callable[[int], float]) -> None:
        """Called from a fragment that drew `topic` as `shown` (urgent part, paced part): rerun it when `latest()`'s
        urgent part differs, and when its paced part differs and `pace(watching sessions)` seconds have passed."""
        here = self._where()
        if here is None:
            return
        now = time.monotonic()
        with self._lock:
            self._watchers[here] = Watcher(topic, shown, pace, now, now)  # a fragment shows one topic at a time
            self._latest[topic] = latest
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="live-push", daemon=True)
                self._thread.start()

    def leave(self) -> None:
        """Called from a fragment that no longer shows anything live: the server stops rerunning it."""
        here = self._where()
        if here is not None:
            with self._lock:
                self._watchers.pop(here, None)

    def _where(self) -> tuple[str, str] | None:
        """(session, fragment) of the fragment running this code; None outside a fragment or without pushes."""
        if not self.available:
            return None
        try:
            return self._here()
        except Exception:  # noqa: BLE001 - Streamlit's internals moved: the timers serve
            self.available = False
            return None

    def _loop(self) -> None:
        while self.available:
            time.sleep(self.poll_s)
            self.tick()

    def _due(self, now: float, latest: dict[Hashable, State]) -> list[tuple[str, str]]:
        """The fragments to rerun now, (session, fragment), marked as pushed (call with the lock held)."""
        sessions = len({sid for sid, _ in self._watchers})
        urgent, paced, rate = [], [], 0.0
        for key, w in self._watchers.items():
            if w.topic not in latest:
                continue
            now_shows = latest[w.topic]
            if w.shown[0] != now_shows[0]:
                urgent.append((key, w))
                continue
            pace = w.pace(sessions)
            rate += self.poll_s / pace
            if w.shown[1] == now_shows[1]:
                continue
            if w.moved_at is None:
                w.moved_at = now
            due_at = max(w.drawn_at + pace, w.moved_at)  # not before its pace, nor before it had news
            if now >= due_at:
                paced.append(((now - due_at) / pace, key, w))
        if urgent:  # every tab of a class draws the epoch first (on one machine: ~40 ms of CPU each)
            self._quiet_until = max(self._quiet_until, now + max(QUIET_S, QUIET_PER_PUSH_S * len(urgent)))
        if now < self._quiet_until:  # the browsers are drawing an epoch: only what is a whole pace overdue
            paced = [p for p in paced if p[0] >= 1]
        paced.sort(key=lambda p: -p[0])  # the most overdue first
        self._credit = min(self._credit + CATCH_UP * rate, max(1.0, CATCH_UP * rate))
        sent = min(len(paced), int(self._credit))
        self._credit -= sent
        due = urgent + [(key, w) for _, key, w in paced[:sent]]
        for _, w in due:  # once per change: the rerun re-registers with what it drew
            w.shown, w.drawn_at, w.moved_at = latest[w.topic], now, None
        return [key for key, _ in due]

    def tick(self) -> None:
        """One look at every watched topic; rerun the fragments that are due."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, w in self._watchers.items() if now - w.seen_at > FORGET_S]:
                del self._watchers[key]
            topics = {w.topic for w in self._watchers.values()}
            self._latest = {t: f for t, f in self._latest.items() if t in topics}
            reads = dict(self._latest)
        latest: dict[Hashable, State] = {}
        for topic, read in reads.items():
            try:
                latest[topic] = read()
            except Exception:  # noqa: BLE001 - the run is gone or the store unreadable: its tabs say so themselves
                with self._lock:
                    for key in [k for k, w in self._watchers.items() if w.topic == topic]:
                        del self._watchers[key]
        with self._lock:
            due = self._due(now, latest)
        for key in due:
            try:
                alive = self._rerun(*key)
            except Exception:  # noqa: BLE001 - Streamlit's internals moved: say so once, the timers serve
                _LOG.warning("live push off: this Streamlit's runtime differs; tabs refresh on their timers", exc_info=True)
                self.available = False
                with self._lock:
                    self._watchers.clear()
                return
            if not alive:  # the session has gone, or no longer draws this fragment
                with self._lock:
                    self._watchers.pop(key, None)
