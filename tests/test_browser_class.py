"""A class on one server (issue 17), end to end: `streamlit run` on 127.0.0.1 with the trusted-proxy settings, behind
a small auth proxy (also on 127.0.0.1) that does what oauth2-proxy does: it turns the session cookie of a signed-in
person into the X-Forwarded-User header on every request it forwards, the websocket's included, and drops any such
header the browser sent. Three Chromium contexts are three people: alice and bob are students, tess a teacher.
(Playwright's extra_http_headers would not do: Chromium leaves them off the websocket handshake, where Streamlit
reads st.context.headers.)

The machine's one training slot is held by a run of this test process, so the runs started from the page stay
queued (their training processes wait for the slot; nothing trains but one tiny run for the pickers).
Screenshots: test-artifacts/screenshots/class-*.png.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path

import pytest

from core.config import TrainConfig
from core.runs import RunStore
from core.worker import execute_run
from tests.conftest import launch_chromium, make_synthetic_mnist, start_streamlit, stop_server, wait_for_plotly

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-artifacts" / "screenshots"
HEADER = "X-Forwarded-User"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed (apt-get install chromium)"),
]


class AuthProxy:
    """The auth proxy in front of the lab: the `lab_user` cookie (what a login would have set) becomes HEADER
    upstream. `forge(user, message)` may rewrite a person's websocket messages to the server (the crafted request)."""

    def __init__(self, upstream: str):
        self.upstream, self.forge = upstream, lambda user, message: message
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        assert ready.wait(30), "the auth proxy did not start"

    def _run(self, ready: threading.Event) -> None:
        from websockets.asyncio.server import serve

        async def main():
            async with serve(self._socket, "127.0.0.1", 0, process_request=self._http, subprotocols=["streamlit"],
                             max_size=None, compression=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                await asyncio.Future()

        self.loop.run_until_complete(main())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def user(headers) -> str:
        cookie = SimpleCookie(headers.get("Cookie", ""))
        return cookie["lab_user"].value if "lab_user" in cookie else ""

    async def _http(self, connection, request):
        """Plain HTTP (pages, scripts, health): fetched from the lab with the user's header."""
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        wanted = {k: v for k, v in request.headers.raw_items() if k.lower() in ("accept", "accept-encoding", "cookie")}

        def fetch():
            req = urllib.request.Request(self.upstream + request.path, headers={**wanted, HEADER: self.user(request.headers)})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, r.reason, r.headers.items(), r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.reason, e.headers.items(), e.read()

        status, reason, headers, body = await asyncio.to_thread(fetch)
        keep = [(k, v) for k, v in headers if k.lower() not in ("transfer-encoding", "connection", "content-length")]
        return Response(status, reason, Headers([*keep, ("Content-Length", str(len(body)))]), body)

    async def _socket(self, ws):
        from websockets.asyncio.client import connect

        user = self.user(ws.request.headers)
        offered = [p.strip() for p in ws.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        target = self.upstream.replace("http://", "ws://") + ws.request.path
        async with connect(target, additional_headers={HEADER: user}, subprotocols=offered or None, max_size=None,
                           compression=None) as up:
            async def to_lab():
                async for message in ws:
                    await up.send(self.forge(user, message))

            async def to_browser():
                async for message in up:
                    await ws.send(message)

            done, pending = await asyncio.wait([asyncio.create_task(to_lab()), asyncio.create_task(to_browser())],
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base URL, store, data root): the dashboard as a class would run it behind its auth proxy."""
    folder = tmp_path_factory.mktemp("class")
    data = make_synthetic_mnist(folder / "mnist", n_train=256, n_test=64)
    url = f"sqlite:///{folder / 'runs.db'}"
    env = {**os.environ, "MNIST_LAB_DB": url, "MNIST_ROOT": str(data), "MNIST_LAB_TRUST_PROXY": "1",
           "MNIST_LAB_USER_HEADER": HEADER, "MNIST_LAB_TEACHERS": "tess", "MNIST_LAB_LOCAL_SLOTS": "1"}
    try:
        proc, base = start_streamlit(ROOT, env, folder)
    except RuntimeError as e:
        pytest.fail(str(e))
    store = RunStore(url)
    proxy = AuthProxy(base)
    yield proxy, store, data
    for run in store.list_runs():  # the page-started runs' waiting processes end with their runs
        if run.active:
            store.request_stop(run.id)
    stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def person(browser, proxy: AuthProxy, name: str):
    """A browser context signed in as `name` at the auth proxy (its session cookie); it also claims to be alice
    in a header of its own, which the proxy must drop."""
    context = browser.new_context(extra_http_headers={HEADER: "alice"}, viewport={"width": 1400, "height": 1000})
    context.add_cookies([{"name": "lab_user", "value": name, "url": proxy.url}])
    context.set_default_timeout(60_000)
    return context.new_page()


def open_train(page, base: str, run_id: int | None = None) -> None:
    page.goto(f"{base}/Train" + (f"?run={run_id}" if run_id else ""))
    page.get_by_text("Training runs in its own process").wait_for()


def start_from_page(page, store: RunStore, owner: str) -> int:
    """Press Start on the Train page; returns the run it recorded (the page puts it in the URL)."""
    before = {r.id for r in store.list_runs()}
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"run=\d+"))
    (run,) = [r for r in store.list_runs() if r.id not in before]
    assert run.owner == owner
    page.get_by_text(f"Run {run.id}: Model3").wait_for()
    return run.id


def test_a_class_on_one_server(lab, browser):
    proxy, store, data = lab
    base = proxy.url
    # one tiny finished run of alice's for the pickers, trained here; then this process holds the training slot
    finished = store.create_run(TrainConfig(epochs=1, train_limit=256, test_limit=64, device="cpu"), owner="alice")
    assert execute_run(finished, store, str(data), max_running=None, log=lambda s: None) == "finished"
    holder = store.create_run(TrainConfig(), label="holds the slot", owner="tess", pid=os.getpid())
    assert store.claim(holder, os.getpid(), max_running=1)

    alice = person(browser, proxy, "alice")
    open_train(alice, base)
    alice.get_by_text("Signed in as alice").wait_for()
    a_run = start_from_page(alice, store, "alice")
    alice.get_by_text("#1 in the queue").wait_for()
    alice.get_by_role("button", name="Stop").wait_for()  # her own run: she may stop it
    alice.get_by_text("epoch(s) recorded").wait_for()
    alice.screenshot(path=str(SHOTS / "class-alice-train.png"), full_page=True)

    forged = {}

    def forge(user, message):
        """Bob's click on Stop of his own run, rewritten into a click on Stop of alice's run shown to him: the same
        widget id her page would send (a button's id is its key and the page's hash), and her run in the query."""
        from streamlit.elements.lib.utils import _compute_element_id
        from streamlit.proto.BackMsg_pb2 import BackMsg

        if user != "bob" or not forged.get("armed") or not isinstance(message, bytes):
            return message
        msg = BackMsg()
        msg.ParseFromString(message)
        if not msg.HasField("rerun_script"):
            return message
        state = msg.rerun_script
        for widget in state.widget_states.widgets:
            if widget.trigger_value and widget.id.endswith(f"-stop-{forged['own']}"):
                page_hash = state.page_script_hash
                assert widget.id == _compute_element_id("button", f"stop-{forged['own']}", active_script_hash=page_hash)
                widget.id = _compute_element_id("button", f"stop-{a_run}", active_script_hash=page_hash)
                state.query_string = f"run={a_run}"
                state.fragment_id = ""  # a whole-page run, as a fresh request for alice's run would be
                forged["sent"] = widget.id
                return msg.SerializeToString()
        return message

    proxy.forge = forge
    bob = person(browser, proxy, "bob")
    open_train(bob, base)
    bob.get_by_text("Signed in as bob").wait_for()
    bob.get_by_text("No run yet").wait_for()  # alice's run is not bob's default
    b_run = start_from_page(bob, store, "bob")
    bob.get_by_text("#2 in the queue").wait_for()

    # bob opens alice's run by its URL: he sees it, without Stop
    open_train(bob, base, a_run)
    bob.get_by_text(f"Run {a_run}: Model3").wait_for()
    bob.get_by_text("Only alice or a teacher can stop this run.").wait_for()
    assert bob.get_by_role("button", name="Stop").count() == 0
    bob.get_by_role("button", name="Start").wait_for()  # the whole page drawn before the picture
    bob.get_by_text("epoch(s) recorded").wait_for()
    bob.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')")
    bob.wait_for_timeout(1000)  # the form and charts drawn, not their placeholders
    bob.screenshot(path=str(SHOTS / "class-bob-sees-alices-run.png"), full_page=True)

    # the crafted request: bob's own Stop click replayed as a click on alice's Stop, in bob's session
    open_train(bob, base, b_run)
    forged.update(armed=True, own=b_run)
    bob.get_by_role("button", name="Stop").click()
    deadline = time.monotonic() + 30
    while "sent" not in forged and time.monotonic() < deadline:
        bob.wait_for_timeout(200)
    assert forged.get("sent", "").endswith(f"-stop-{a_run}"), "the forged stop was never sent"
    bob.get_by_text("Only alice or a teacher can stop this run.").wait_for()  # the server showed him her run
    bob.wait_for_timeout(2000)
    run = store.get(a_run)
    assert (run.status, run.stop_requested) == ("queued", False), "bob's forged stop reached alice's run"
    forged["armed"] = False

    # bob's pickers: his runs (none finished) and the references; alice's run only with the class's toggle
    bob.goto(f"{base}/Draw")
    picker = bob.get_by_role("combobox", name="Model")  # Streamlit's selectbox
    picker.wait_for()
    shown = picker.evaluate("el => el.value || el.textContent")  # the chosen option, as the box shows it
    assert shown == "Model3 (reference)", shown
    picker.click()
    options = bob.get_by_role("option").all_inner_texts()
    assert any("Model3 (reference)" in o for o in options)
    assert not any(f"run {finished}:" in o for o in options), options
    bob.keyboard.press("Escape")
    bob.screenshot(path=str(SHOTS / "class-bob-draw-picker.png"), full_page=True)
    bob.get_by_text("The class's runs too").click()
    bob.wait_for_timeout(1500)  # the toggle reruns the page; the picker's options come with it
    picker.click()
    assert any(f"run {finished}: Model3" in o and "(alice)" in o for o in bob.get_by_role("option").all_inner_texts())
    bob.keyboard.press("Escape")

    # Compare lists bob's runs and the references; alice's run only with the class's toggle
    bob.goto(f"{base}/Compare")
    bob.get_by_text("Summary").wait_for()

    def compare_options() -> list[str]:
        bob.get_by_role("combobox", name="Runs").click()
        bob.get_by_role("option").first.wait_for()
        shown = bob.get_by_role("option").all_inner_texts()
        bob.keyboard.press("Escape")
        return shown

    assert not any(f"run {finished}:" in o for o in compare_options())
    assert bob.get_by_text(f"run {finished}: Model3").count() == 0
    bob.get_by_text("The class's runs too").click()
    bob.wait_for_timeout(1500)
    assert any(f"run {finished}: Model3" in o for o in compare_options())

    # the teacher stops alice's run
    tess = person(browser, proxy, "tess")
    open_train(tess, base, a_run)
    tess.get_by_text("Signed in as tess (teacher)").wait_for()
    tess.get_by_role("button", name="Stop").click()
    tess.get_by_text("Stopped on request").wait_for()
    assert store.get(a_run).status == "stopped"
    wait_for_plotly(tess)  # the stopped run's charts, not their loading placeholders
    tess.screenshot(path=str(SHOTS / "class-teacher-stopped-alices-run.png"), full_page=True)

    # bob's own run was untouched by all this, and he may stop it himself
    assert store.get(b_run).status == "queued"
    open_train(bob, base, b_run)
    bob.get_by_role("button", name="Stop").click()
    bob.get_by_text("Stopped on request").wait_for()
    assert store.get(b_run).status == "stopped"
    store.finish(holder, "stopped")
