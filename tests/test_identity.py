"""A lab for a class (issue 17): who owns a run, who may stop, resume and delete it, a user's share of the queue,
and queue positions; on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from core import estimate
from core.config import TrainConfig
from core.identity import NotAllowed, User, settings, user_from_headers, user_named
from core.launch import QueueFull, delete_run, resume_run, start_run, stop_run
from core.runs import RunStore, StoreError
from core.sweep import SweepSpec, launch_sweep

TINY = TrainConfig(epochs=1, batch_size=64, train_limit=256, test_limit=64, device="cpu")
CLASS = settings({"MNIST_LAB_TRUST_PROXY": "1", "MNIST_LAB_TEACHERS": "tess"})
ALICE, BOB, TESS = user_named("alice", CLASS), user_named("bob", CLASS), user_named("tess", CLASS)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, store_url):
    url = store_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = RunStore(url)
    yield s
    s.engine.dispose()


def wait_ended(store: RunStore, run_id: int, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store.reconcile()
        run = store.get(run_id)
        if not run.active:
            return run.status
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} still {store.get(run_id).status} after {timeout} s")


# ---- who is who --------------------------------------------------------------------------------------
def test_the_header_names_the_user_only_when_a_proxy_is_trusted():
    headers = {"x-forwarded-user": "alice", "Host": "lab"}
    assert user_from_headers(headers, settings({})) is None  # identity off: no setting, nobody named
    assert user_from_headers(headers, settings({"MNIST_LAB_USER_HEADER": "X-Forwarded-User"})) is None  # not trusted
    assert user_from_headers(headers, CLASS) == User("alice", teacher=False)
    assert user_from_headers({"X-Forwarded-User": " tess "}, CLASS) == User("tess", teacher=True)
    custom = settings({"MNIST_LAB_TRUST_PROXY": "1", "MNIST_LAB_USER_HEADER": "X-Auth-Request-User"})
    assert user_from_headers({"X-Auth-Request-User": "bob", "X-Forwarded-User": "alice"}, custom).name == "bob"


def test_a_request_without_the_header_is_nobody_not_everybody():
    nobody = user_from_headers({"Host": "lab"}, CLASS)
    assert nobody is not None and not nobody.signed_in
    assert not user_named("eve\nadmin", CLASS).signed_in  # a control character is no name
    with pytest.raises(ValueError, match="MNIST_LAB_SWEEPS must be everyone or teachers"):
        settings({"MNIST_LAB_SWEEPS": "students"})


# ---- ownership, enforced in core ----------------------------------------------------------------------
def test_b_cannot_stop_resume_or_delete_a_run_of_a(store):
    run_id = store.create_run(TINY, owner="alice")
    with pytest.raises(NotAllowed, match=f"run {run_id} is alice's: only alice or a teacher may stop it"):
        stop_run(store, run_id, BOB)
    run = store.get(run_id)
    assert (run.status, run.stop_requested) == ("queued", False)

    store.finish(run_id, "stopped")
    with pytest.raises(NotAllowed, match=f"run {run_id} is alice's: only alice or a teacher may resume it"):
        resume_run(store, run_id, user=BOB)
    with pytest.raises(NotAllowed, match=f"run {run_id} is alice's: only alice or a teacher may delete it"):
        delete_run(store, run_id, BOB)
    assert store.get(run_id).status == "stopped"  # nothing changed
    with pytest.raises(NotAllowed, match="sign in to stop"):
        stop_run(store, run_id, user_named("", CLASS))


def test_a_run_without_owner_is_a_teachers_to_change(store):
    run_id = store.create_run(TINY)  # made before identity was on, or from the command line
    with pytest.raises(NotAllowed, match="only a teacher may stop it"):
        stop_run(store, run_id, ALICE)
    stop_run(store, run_id, TESS)
    assert store.get(run_id).status == "stopped"


def test_a_teacher_stops_resumes_and_deletes_a_students_run(store, synthetic_root):
    run_id = store.create_run(TINY, owner="alice")
    stop_run(store, run_id, TESS)
    assert store.get(run_id).status == "stopped"  # queued and never started: stopped at once
    resume_run(store, run_id, data_root=str(synthetic_root), user=TESS)
    assert store.get(run_id).owner == "alice"  # still hers
    assert wait_ended(store, run_id) == "finished"
    delete_run(store, run_id, TESS)
    with pytest.raises(StoreError, match=f"no run {run_id}"):
        store.get(run_id)


def test_the_owner_stops_and_deletes_her_own_run_but_not_while_it_is_active(store):
    run_id = store.create_run(TINY, owner="alice")
    with pytest.raises(StoreError, match="stop it before deleting it"):
        delete_run(store, run_id, ALICE)
    stop_run(store, run_id, ALICE)
    delete_run(store, run_id, ALICE)
    assert store.list_runs(owner="alice") == []


def test_identity_off_everything_works_as_before(store, synthetic_root):
    run_id = start_run(store, TINY, data_root=str(synthetic_root))  # user=None: identity off
    assert store.get(run_id).owner is None
    assert wait_ended(store, run_id) == "finished"
    theirs = store.create_run(TINY, owner="alice")  # even a named run: with identity off nobody is refused
    stop_run(store, theirs)
    resume_run(store, theirs, data_root=str(synthetic_root))
    stop_run(store, theirs)
    wait_ended(store, theirs)
    delete_run(store, theirs)
    delete_run(store, run_id)
    assert store.list_runs() == []


def test_pickers_read_my_runs_only(store):
    mine = store.create_run(TINY, owner="bob")
    store.create_run(TINY, owner="alice")
    store.create_run(TINY)
    assert [r.id for r in store.list_runs(owner="bob")] == [mine]
    assert len(store.list_runs()) == 3


# ---- a user's share of the queue ---------------------------------------------------------------------
def test_a_user_over_the_cap_is_refused_at_create_and_nothing_is_recorded(store, synthetic_root):
    held = [store.create_run(TINY, owner="alice") for _ in range(2)]
    with pytest.raises(QueueFull, match="alice already has 2 runs queued or training, the most one user may have"):
        start_run(store, TINY, data_root=str(synthetic_root), user=ALICE, runs_per_user=2)
    assert [r.id for r in store.list_runs(owner="alice")] == held[::-1]  # the refused run left no row
    stop_run(store, held[0], ALICE)
    with pytest.raises(QueueFull):  # a resume counts too
        resume_run(store, held[0], user=ALICE, runs_per_user=1)
    # a place came free: alice may start again; the teacher is never capped
    started = start_run(store, TINY, data_root=str(synthetic_root), user=ALICE, runs_per_user=2)
    assert store.get(started).owner == "alice"
    for run_id in (started, held[1]):
        stop_run(store, run_id, TESS)
        wait_ended(store, run_id)
    store.create_run(TINY, owner="tess")
    store.create_run(TINY, owner="tess")
    teachers = start_run(store, TINY, data_root=str(synthetic_root), user=TESS, runs_per_user=1)
    stop_run(store, teachers, TESS)
    assert wait_ended(store, teachers) == "stopped"


def test_nobody_signed_in_starts_nothing(store):
    with pytest.raises(NotAllowed, match="sign in to start a run"):
        start_run(store, TINY, user=user_named(None, CLASS))
    assert store.list_runs() == []


# ---- queue positions -----------------------------------------------------------------------------------
def test_queue_positions_follow_arrival_and_the_slot_goes_to_the_oldest(store):
    pid = os.getpid()
    running = store.create_run(TINY, owner="alice", pid=pid)
    assert store.claim(running, pid, max_running=1)
    waiting = [store.create_run(TINY, owner=name, pid=pid) for name in ("bob", "carol", "bob")]
    entries = estimate.queue(store, slots=1)
    assert [(e.run.id, e.run.owner, e.position) for e in entries] == [
        (running, "alice", None), (waiting[0], "bob", 1), (waiting[1], "carol", 2), (waiting[2], "bob", 3)]
    starts = [e.starts_in for e in entries[1:]]
    assert starts == sorted(starts) and starts[0] > 0  # each waits for the one before it
    assert [e.position for e in estimate.owned_by(entries, "bob")] == [1, 3]
    assert estimate.entry_of(entries, waiting[1]).position == 2

    store.finish(running, "finished")
    assert not store.claim(waiting[1], pid, max_running=1)  # carol's turn has not come: bob was first
    assert store.claim(waiting[0], pid, max_running=1)
    assert [e.position for e in estimate.queue(store, slots=1) if e.position] == [1, 2]


def test_only_teachers_launch_sweeps_when_so_set(monkeypatch, store_url):
    monkeypatch.setenv("MNIST_LAB_SWEEPS", "teachers")
    monkeypatch.setenv("MNIST_LAB_TEACHERS", "tess")
    with pytest.raises(NotAllowed, match="only a teacher may launch sweeps"):
        launch_sweep(SweepSpec(), store_url, user=BOB)


def test_a_queued_run_waits_without_torch_and_the_same_process_trains_it(store_url, synthetic_root):
    store = RunStore(store_url)
    ahead = store.create_run(TINY, owner="alice", pid=os.getpid())  # older, queued on this host: it goes first
    run_id = start_run(store, TINY, data_root=str(synthetic_root), user=BOB)
    pid = store.get(run_id).pid
    deadline = time.monotonic() + 60
    while "VmRSS" not in _proc_status(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)  # long enough to have imported whatever it imports
    rss_mb = int(next(line for line in _proc_status(pid).splitlines() if line.startswith("VmRSS")).split()[1]) / 1024
    assert "core.slotwait" in Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ")
    assert rss_mb < 200, f"a waiting run holds {rss_mb:.0f} MB (a training process with torch: ~550 MB)"
    assert store.get(run_id).status == "queued"
    store.finish(ahead, "stopped")  # its turn: the waiter becomes the training process
    assert wait_ended(store, run_id) == "finished"
    assert store.get(run_id).pid == pid  # the same process trained it


def _proc_status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""
