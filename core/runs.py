"""The run store: runs, their per-epoch metrics and their checkpoints, behind one database URL.

Default: a SQLite file (runs/runs.db, WAL mode so readers never block the training writer), with
checkpoints as files in a folder per run next to it. Any other SQLAlchemy URL (postgresql://...)
keeps checkpoints as binary rows in the same database, so workers need no shared disk.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from core import PROJECT_ROOT

if TYPE_CHECKING:  # imported where used: a process waiting in the queue (core.slotwait) needs neither torch
    from core.config import TrainConfig  # nor the models (~0.5 GB), only the runs' status

STATUSES = ("queued", "running", "finished", "stopped", "failed", "interrupted")
ACTIVE = ("queued", "running")
HEARTBEAT_TIMEOUT = 120.0  # seconds without a heartbeat before a run on another host counts as interrupted

metadata = sa.MetaData()
runs_table = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("config", sa.Text, nullable=False),  # TrainConfig as JSON
    sa.Column("label", sa.String(200), nullable=False, server_default=""),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),  # unix seconds
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("heartbeat", sa.Float),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("stop_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),  # epochs finished
    sa.Column("batch", sa.Integer, nullable=False, server_default="0"),  # batches done in the current epoch
    sa.Column("batches_per_epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("params", sa.Integer),
    sa.Column("best_test_acc", sa.Float),
    sa.Column("sweep", sa.String(64)),  # sweep id when the run is a sweep trial
    sa.Column("uid", sa.String(32)),  # unique per run: names its checkpoint folder, so no other store's files match
    sa.Column("saved_epoch", sa.Integer, nullable=False, server_default="0"),  # epoch of the newest 'last' checkpoint
    # ---- schema 5, issue 17 (a lab for a class): who made the run; NULL = identity off, or made before it was on
    sa.Column("owner", sa.String(200)),
)
epochs_table = sa.Table(
    "epochs",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),  # 1-based
    sa.Column("train_loss", sa.Float),
    sa.Column("train_acc", sa.Float),
    sa.Column("test_loss", sa.Float),
    sa.Column("test_acc", sa.Float),
    sa.Column("lr", sa.Float),
    sa.Column("seconds", sa.Float),
)
steps_table = sa.Table(  # points within epochs, a few a second at most (core.worker.ProgressReporter)
    "steps",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),  # global optimizer step
    sa.Column("epoch", sa.Float, nullable=False),  # fractional, 1-based end: 0.5 = half-way through epoch 1
    sa.Column("train_loss", sa.Float),  # over the batches since the previous point
    sa.Column("train_acc", sa.Float),
    sa.Column("lr", sa.Float),
)
layer_health_table = sa.Table(  # per layer, one optimizer step every few seconds (core.health.UpdateWatch)
    "layer_health",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("layer", sa.String(64), primary_key=True),
    sa.Column("epoch", sa.Float, nullable=False),  # fractional, like steps.epoch
    sa.Column("weight_norm", sa.Float),
    sa.Column("grad_norm", sa.Float),
    sa.Column("update_ratio", sa.Float),  # ||w_after - w_before|| / ||w_after|| of that step
)
activations_table = sa.Table(  # per ReLU block at the end of each epoch, on a fixed test batch
    "activations",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("block", sa.String(64), primary_key=True),
    sa.Column("dead_frac", sa.Float),  # units that never fire on the batch
    sa.Column("histogram", sa.Text),  # JSON {"counts": [...], "edges": [...]}
)
checkpoints_table = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
schema_table = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)
# ---- schema 5: the user's own labelled digits (core.digits; issue 15) ----
# Pictures are kept in the database, not beside the checkpoints: the same on SQLite and PostgreSQL, each
# picture written in one transaction with its row (no orphan files), and backed up with the store.
digits_table = sa.Table(
    "digits",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("label", sa.Integer, nullable=False),  # the digit it is, 0-9, as the user said
    sa.Column("picture", sa.LargeBinary, nullable=False),  # the original picture, PNG
    sa.Column("reading", sa.LargeBinary, nullable=False),  # its 28x28 reading (core.predict), PNG
    sa.Column("read_by", sa.String(200)),  # the model that read it when it was saved (None: imported)
    sa.Column("read_as", sa.Integer),  # what that model read it as
    sa.Column("created_at", sa.Float, nullable=False),  # unix seconds
    sa.Column("owner", sa.String(200)),  # whose set it belongs to (None: no user identity)
)
sa.Index("digits_owner", digits_table.c.owner)
sa.Index("runs_status", runs_table.c.status)
sa.Index("runs_sweep", runs_table.c.sweep)
sa.Index("runs_owner", runs_table.c.owner)  # schema 5: "my runs" in pickers, a user's cap on queued runs
SCHEMA_VERSION = 5  # bump with a schema change; an older store gets missing columns by ALTER TABLE ... ADD COLUMN


class StoreError(RuntimeError):
    """The store cannot be opened or a run/checkpoint is missing or unreadable."""


RESUME_KEYS = ("model", "optimizer", "scheduler", "epochs_done", "best_test_acc", "config")  # Trainer.state_dict()


@dataclass
class Run:
    id: int
    model: str
    config: TrainConfig
    label: str
    status: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    heartbeat: float | None
    host: str | None
    pid: int | None
    error: str | None
    stop_requested: bool
    epoch: int
    batch: int
    batches_per_epoch: int
    params: int | None
    best_test_acc: float | None
    sweep: str | None
    uid: str | None
    saved_epoch: int
    owner: str | None = None  # the user who made it (core.identity); None with identity off

    @property
    def progress(self) -> float:
        """Fraction of the whole run done, 0..1, for a progress bar."""
        per = self.batch / self.batches_per_epoch if self.batches_per_epoch else 0.0
        return min(1.0, (self.epoch + per) / max(1, self.config.epochs))

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def default_url() -> str:
    """$MNIST_LAB_DB, else a SQLite file runs/runs.db in the project."""
    return os.environ.get("MNIST_LAB_DB") or f"sqlite:///{PROJECT_ROOT / 'runs' / 'runs.db'}"


def normalise_url(url: str) -> str:
    """A bare path is a SQLite file; postgres:// and postgresql:// use the psycopg 3 driver (psycopg[binary])."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _matching(search: str) -> sa.ColumnElement[bool]:
    """Runs whose model, label, status or sweep contain every word of `search` (any case); a word that
    is a number (or #number) also matches that run id. "tiny4k finished" = finished Tiny4k runs."""
    c = runs_table.c
    clauses = []
    for word in search.split():
        either = [col.icontains(word, autoescape=True) for col in (c.model, c.label, c.status, c.sweep)]
        if (number := word.lstrip("#")).isdigit():
            either.append(c.id == int(number))
        clauses.append(sa.or_(*either))
    return sa.and_(*clauses)


class RunStore:
    """All reads and writes of runs. Safe to share between threads; one per process is enough."""

    def __init__(self, url: str | None = None):
        url = normalise_url(url or default_url())
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = sa.engine.make_url(url).database
            if not path or path == ":memory:":
                raise StoreError("the run store needs a SQLite file, not an in-memory database")
            db = Path(path).resolve()
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the run store folder {db.parent}: {e.strerror}") from None
            self.folder = db.parent / f"{db.stem}.checkpoints"  # one sub-folder per run
            self.where = str(db)
            self.engine = sa.create_engine(url, connect_args={"timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.folder = None
            self.where = self.safe_url
            try:
                self.engine = sa.create_engine(
                    url, pool_pre_ping=True, pool_size=2, max_overflow=4, connect_args=_connect_args(url)
                )
            except (ImportError, sa.exc.ArgumentError) as e:
                raise StoreError(f"cannot use the run store URL {self.safe_url}: {_one_line(e)} "
                                 "(PostgreSQL needs `pip install 'psycopg[binary]'`)") from None
        self._uids: dict[int, str | None] = {}  # run id -> uid, fixed for a run's life
        self._reconciled_at = 0.0
        with self._tx() as c:
            self._create_or_upgrade_schema(c)

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sa.Connection]:
        """A connection (in a transaction when `write`); any database error becomes one StoreError line
        naming the store and what to do."""
        try:
            with self.engine.begin() if write else self.engine.connect() as c:
                yield c
        except sa.exc.DatabaseError as e:  # a damaged file, or one that is no database at all
            what = _one_line(e.orig or e)
            if self.is_sqlite and ("not a database" in what or "malformed" in what or "disk image" in what):
                raise StoreError(f"the run store {self.where} is not a readable SQLite database ({what}): move it "
                                 "aside, or point --runs / MNIST_LAB_DB at another file") from None
            if isinstance(e, (sa.exc.OperationalError, sa.exc.InterfaceError)):
                raise StoreError(f"cannot open the run store at {self.safe_url}: {what}") from None
            raise StoreError(f"the run store at {self.safe_url} failed: {what}") from None
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"the run store at {self.safe_url} failed: {_one_line(e)}") from None

    def _create_or_upgrade_schema(self, c: sa.Connection) -> None:
        """Create missing tables, add columns newer code expects (additive ALTERs only, with their defaults
        so old rows read as new ones would), record the version. On PostgreSQL an advisory lock makes
        concurrent workers opening a fresh database take turns."""
        if c.dialect.name == "postgresql":
            c.execute(sa.text("SELECT pg_advisory_xact_lock(7240331)"))
        metadata.create_all(c)
        have = {t: {col["name"] for col in sa.inspect(c).get_columns(t)} for t in metadata.tables}
        for table in metadata.tables.values():
            for col in table.columns:
                if col.name not in have[table.name]:
                    kind = col.type.compile(dialect=c.dialect)
                    default = f" NOT NULL DEFAULT {col.server_default.arg}" if col.server_default is not None else ""
                    if isinstance(col.type, sa.Boolean) and default:
                        default = " NOT NULL DEFAULT " + ("false" if c.dialect.name == "postgresql" else "0")
                    c.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {kind}{default}'))
            for index in table.indexes:
                index.create(c, checkfirst=True)
        version = c.execute(sa.select(sa.func.max(schema_table.c.version))).scalar()
        if version is None:
            c.execute(schema_table.insert().values(version=SCHEMA_VERSION))
        elif version > SCHEMA_VERSION:
            raise StoreError(f"the run store at {self.safe_url} has schema version {version}, newer than this "
                             f"code's {SCHEMA_VERSION}: update the code")
        elif version < SCHEMA_VERSION:
            c.execute(schema_table.update().values(version=SCHEMA_VERSION))

    def close(self) -> None:
        """Close this store's pooled connections (before a process replaces itself, e.g. core.slotwait's exec)."""
        self.engine.dispose()

    @property
    def safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    # ---- runs -------------------------------------------------------------------------------
    def create_run(
        self, config: TrainConfig, label: str = "", sweep: str | None = None, *, params: int | None = None,
        pid: int | None = None, owner: str | None = None,
    ) -> int:
        """Record a queued run. `params`: the model's parameter count (the caller knows the model; the store
        holds runs, not networks). `pid`: the local process answerable for the run until its training
        process claims it; when that process dies first, `reconcile` marks the run interrupted. `owner`: the
        user who made it (core.identity), None with identity off."""
        config.validate()
        with self._tx() as c:
            res = c.execute(
                runs_table.insert().values(
                    model=config.model,
                    config=config.to_json(),
                    label=label,
                    status="queued",
                    created_at=time.time(),
                    params=params,
                    sweep=sweep,
                    uid=uuid.uuid4().hex,
                    pid=pid,
                    host=socket.gethostname() if pid else None,
                    owner=owner,
                )
            )
            return int(res.inserted_primary_key[0])

    def get(self, run_id: int) -> Run:
        """The run as stored (a read: it writes nothing; see `reconcile`)."""
        with self._tx(write=False) as c:
            row = c.execute(runs_table.select().where(runs_table.c.id == run_id)).mappings().first()
        if row is None:
            raise StoreError(f"no run {run_id} in {self.safe_url}")
        return _run(row)

    def list_runs(
        self, status: str | None = None, sweep: str | None = None, limit: int | None = None, search: str = "",
        owner: str | None = None,
    ) -> list[Run]:
        """Newest first; `search` keeps the runs it matches (see `_matching`); `owner`: only that user's runs."""
        q = runs_table.select().order_by(runs_table.c.id.desc())
        if status:
            q = q.where(runs_table.c.status == status)
        if sweep:
            q = q.where(runs_table.c.sweep == sweep)
        if search.strip():
            q = q.where(_matching(search))
        if owner is not None:
            q = q.where(runs_table.c.owner == owner)
        if limit:
            q = q.limit(limit)
        with self._tx(write=False) as c:
            return [_run(r) for r in c.execute(q).mappings()]

    def count_runs(self, search: str = "") -> int:
        q = sa.select(sa.func.count()).select_from(runs_table)
        if search.strip():
            q = q.where(_matching(search))
        with self._tx(write=False) as c:
            return c.execute(q).scalar_one()

    def best_by_model(self) -> dict[str, float]:
        """Best test accuracy reached by any run, per model: one aggregate query, however many runs."""
        q = (
            sa.select(runs_table.c.model, sa.func.max(runs_table.c.best_test_acc))
            .where(runs_table.c.best_test_acc.is_not(None))
            .group_by(runs_table.c.model)
        )
        with self._tx(write=False) as c:
            return {model: best for model, best in c.execute(q)}

    def sweeps(self) -> list[str]:
        """Sweep ids that have trials in the store, newest first."""
        q = (
            sa.select(runs_table.c.sweep)
            .where(runs_table.c.sweep.is_not(None))
            .group_by(runs_table.c.sweep)
            .order_by(sa.func.max(runs_table.c.id).desc())
        )
        with self._tx(write=False) as c:
            return [r[0] for r in c.execute(q)]

    def update(self, run_id: int, **values) -> None:
        with self._tx() as c:
            c.execute(runs_table.update().where(runs_table.c.id == run_id).values(**values))

    def claim(
        self, run_id: int, pid: int, max_running: int | None = None, from_status: tuple[str, ...] = ("queued", "interrupted", "stopped")
    ) -> bool:
        """Mark a run that is in one of `from_status` as running by this process. With max_running, only
        when fewer runs than that are running on this host and no older run is queued for it here (a local
        first-come queue, so core.estimate's queue positions hold). Atomic: one UPDATE."""
        host = socket.gethostname()
        cond = sa.and_(runs_table.c.id == run_id, runs_table.c.status.in_(from_status))
        if max_running is not None:
            running = (
                sa.select(sa.func.count())
                .select_from(runs_table)
                .where(runs_table.c.status == "running", runs_table.c.host == host)
                .scalar_subquery()
            )
            cond = sa.and_(cond, running < max_running, ~_older_queued_here(run_id, host))
        now = time.time()
        with self._tx() as c:
            res = c.execute(
                runs_table.update()
                .where(cond)
                .values(status="running", pid=pid, host=host, started_at=now, heartbeat=now, ended_at=None, error=None)
            )
        return res.rowcount == 1

    def requeue(self, run_id: int, pid: int | None = None) -> bool:
        """Queue a stopped, interrupted or failed run again, to resume from its last checkpoint (the same run,
        its curves continue); `pid` answers for it until its training process claims it (see create_run).
        False when the run is in another state."""
        with self._tx() as c:
            res = c.execute(
                runs_table.update()
                .where(runs_table.c.id == run_id, runs_table.c.status.in_(("stopped", "interrupted", "failed")))
                .values(status="queued", stop_requested=False, error=None, ended_at=None, pid=pid,
                        host=socket.gethostname() if pid else None)
            )
        return res.rowcount == 1

    def finish(self, run_id: int, status: str, error: str | None = None) -> None:
        assert status in STATUSES
        self.update(run_id, status=status, ended_at=time.time(), error=error, stop_requested=False)

    def request_stop(self, run_id: int) -> None:
        """Ask a run to stop; a queued run that has not started is stopped at once."""
        with self._tx() as c:
            c.execute(
                runs_table.update()
                .where(runs_table.c.id == run_id, runs_table.c.status == "queued", runs_table.c.started_at.is_(None))
                .values(status="stopped", ended_at=time.time())
            )
            c.execute(
                runs_table.update()
                .where(runs_table.c.id == run_id, runs_table.c.status.in_(ACTIVE))
                .values(stop_requested=True)
            )

    def stop_requested(self, run_id: int) -> bool:
        with self._tx(write=False) as c:
            return bool(c.execute(sa.select(runs_table.c.stop_requested).where(runs_table.c.id == run_id)).scalar())

    def reconcile(self) -> int:
        """Mark as interrupted (resumable) the active runs whose process is gone: a running run by its pid
        on this host or its heartbeat elsewhere; a queued run whose answerable process on this host (its
        creator, or the process waiting for a slot) died. Returns how many were marked.

        Reads never reconcile: the training process does at its start and while it waits for a slot, the
        CLI and launcher before they start a run, and pages on their own schedule (`reconcile_if_due`)."""
        host = socket.gethostname()
        self._reconciled_at = time.monotonic()
        with self._tx(write=False) as c:
            rows = c.execute(
                sa.select(
                    runs_table.c.id, runs_table.c.status, runs_table.c.pid, runs_table.c.host, runs_table.c.heartbeat,
                    runs_table.c.stop_requested,
                ).where(runs_table.c.status.in_(ACTIVE))
            ).all()
        dead = [
            r
            for r in rows
            if (r.host == host and r.pid and not pid_alive(r.pid))
            or (r.status == "running" and r.host != host and (r.heartbeat or 0) < time.time() - HEARTBEAT_TIMEOUT)
        ]
        # A process that died after it was asked to stop (e.g. a sweep's trial actor torn down by Ray
        # while it was winding down) did what was asked: the run is stopped, with its saved epochs.
        if dead:
            with self._tx() as c:
                for stop_was_asked, status, error in (
                    (False, "interrupted", "the training process died before finishing"),
                    (True, "stopped", None),
                ):
                    ids = [r.id for r in dead if bool(r.stop_requested) == stop_was_asked]
                    if ids:
                        c.execute(
                            runs_table.update()
                            .where(runs_table.c.id.in_(ids), runs_table.c.status.in_(ACTIVE))
                            .values(status=status, ended_at=time.time(), error=error)
                        )
        return len(dead)

    def reconcile_if_due(self, seconds: float = 5.0) -> None:
        """`reconcile`, unless this store object did so less than `seconds` ago (for pages that refresh often)."""
        if time.monotonic() - self._reconciled_at >= seconds:
            self.reconcile()

    def delete_run(self, run_id: int) -> None:
        """Delete a run's rows and its checkpoint folder (found by its uid, so read before the row goes)."""
        d = self.run_dir(run_id) if self.folder else None
        with self._tx() as c:
            for t in (epochs_table, steps_table, layer_health_table, activations_table, checkpoints_table):
                c.execute(t.delete().where(t.c.run_id == run_id))
            c.execute(runs_table.delete().where(runs_table.c.id == run_id))
        self._uids.pop(run_id, None)
        if d is not None and d.is_dir() and d.parent == self.folder:
            shutil.rmtree(d)

    # ---- a lab for a class (issue 17): owners and a user's share of the queue ---------------------
    def active_count(self, owner: str, up_to: int | None = None) -> int:
        """How many of `owner`'s runs are queued or running (`up_to`: only those with an id up to it, so a run
        just created counts the runs made before it, and of two made at once the later one is over a cap)."""
        q = sa.select(sa.func.count()).select_from(runs_table).where(
            runs_table.c.owner == owner, runs_table.c.status.in_(ACTIVE))
        if up_to is not None:
            q = q.where(runs_table.c.id <= up_to)
        with self._tx(write=False) as c:
            return c.execute(q).scalar_one()

    def waiting_state(self, run_id: int) -> tuple[str, bool]:
        """(status, stop requested) of a run, without reading its config (core.slotwait imports no models)."""
        with self._tx(write=False) as c:
            row = c.execute(sa.select(runs_table.c.status, runs_table.c.stop_requested)
                            .where(runs_table.c.id == run_id)).first()
        if row is None:
            raise StoreError(f"no run {run_id} in {self.safe_url}")
        return row.status, bool(row.stop_requested)

    def first_in_line(self, run_id: int) -> bool:
        """No run older than this one is queued on this host: it is next for a training slot here."""
        with self._tx(write=False) as c:
            return not c.execute(sa.select(_older_queued_here(run_id, socket.gethostname()))).scalar()

    # ---- epochs -----------------------------------------------------------------------------
    def add_epoch(self, run_id: int, result) -> None:
        """Record one finished epoch (an EpochResult) and the run's progress, in one transaction."""
        with self._tx() as c:
            c.execute(
                epochs_table.insert().values(
                    run_id=run_id,
                    epoch=result.epoch,
                    train_loss=result.train_loss,
                    train_acc=result.train_acc,
                    test_loss=result.test_loss,
                    test_acc=result.test_acc,
                    lr=result.lr,
                    seconds=result.seconds,
                )
            )
            best = c.execute(
                sa.select(sa.func.max(epochs_table.c.test_acc)).where(epochs_table.c.run_id == run_id)
            ).scalar()
            c.execute(
                runs_table.update()
                .where(runs_table.c.id == run_id)
                .values(epoch=result.epoch, batch=0, best_test_acc=best, heartbeat=time.time())
            )

    def truncate_epochs(self, run_id: int, after: int) -> None:
        """Forget the epochs past `after` (recorded, but not in the checkpoint a run resumes from: they are
        trained again) and set the run's progress back to that epoch."""
        with self._tx() as c:
            c.execute(epochs_table.delete().where(epochs_table.c.run_id == run_id, epochs_table.c.epoch > after))
            for t in (steps_table, layer_health_table, activations_table):
                c.execute(t.delete().where(t.c.run_id == run_id, t.c.epoch > after))
            best = c.execute(
                sa.select(sa.func.max(epochs_table.c.test_acc)).where(epochs_table.c.run_id == run_id)
            ).scalar()
            c.execute(runs_table.update().where(runs_table.c.id == run_id).values(epoch=after, batch=0, best_test_acc=best))

    def record_progress(self, run_id: int, batch: int, batches_per_epoch: int, point=None) -> None:
        """The run's progress and heartbeat, and a step point (a core.train.StepPoint) when given: one transaction."""
        with self._tx() as c:
            c.execute(runs_table.update().where(runs_table.c.id == run_id).values(
                batch=batch, batches_per_epoch=batches_per_epoch, heartbeat=time.time()))
            if point is not None:
                c.execute(steps_table.insert().values(
                    run_id=run_id, step=point.step, epoch=point.epoch, train_loss=point.train_loss,
                    train_acc=point.train_acc, lr=point.lr))

    def steps(self, run_id: int, max_points: int = 600) -> list[dict]:
        """The run's step points in step order, at most about `max_points` of them: a long run is thinned
        in the query (every k-th row, and the last), so a page reads only what it draws."""
        t = steps_table
        q = t.select().where(t.c.run_id == run_id, t.c.step.in_(_thinned_steps(t, run_id, max_points))).order_by(t.c.step)
        with self._tx(write=False) as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def record_layer_health(self, run_id: int, step: int, epoch: float, rows: list[dict]) -> None:
        """One optimizer step's per-layer norms and update ratio (core.health.UpdateWatch.measure)."""
        with self._tx() as c:
            c.execute(layer_health_table.insert(), [{"run_id": run_id, "step": step, "epoch": epoch, **r} for r in rows])

    def layer_health(self, run_id: int, max_steps: int = 200) -> list[dict]:
        """Per-layer rows of at most about `max_steps` measured steps (evenly thinned in the query), step order."""
        t = layer_health_table
        q = t.select().where(t.c.run_id == run_id, t.c.step.in_(_thinned_steps(t, run_id, max_steps))).order_by(t.c.step, t.c.layer)
        with self._tx(write=False) as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def record_activations(self, run_id: int, epoch: int, rows: list[dict]) -> None:
        """Per block at the end of an epoch: dead-unit fraction and histogram (core.health.activation_stats)."""
        with self._tx() as c:
            c.execute(activations_table.insert(), [
                {"run_id": run_id, "epoch": epoch, "block": r["block"], "dead_frac": r["dead_frac"],
                 "histogram": json.dumps({"counts": r["counts"], "edges": r["edges"]})} for r in rows])

    def activations(self, run_id: int, epoch: int | None = None) -> list[dict]:
        """Rows of one epoch (default: the newest recorded), block order as recorded, histograms decoded."""
        t = activations_table
        with self._tx(write=False) as c:
            if epoch is None:
                epoch = c.execute(sa.select(sa.func.max(t.c.epoch)).where(t.c.run_id == run_id)).scalar()
            rows = c.execute(t.select().where(t.c.run_id == run_id, t.c.epoch == epoch).order_by(t.c.block)).mappings().all()
        return [{**r, "histogram": json.loads(r["histogram"])} for r in rows]

    def epochs(self, run_id: int) -> list[dict]:
        with self._tx(write=False) as c:
            q = epochs_table.select().where(epochs_table.c.run_id == run_id).order_by(epochs_table.c.epoch)
            return [dict(r) for r in c.execute(q).mappings()]

    def epochs_of(self, run_ids: list[int]) -> dict[int, list[dict]]:
        """Per-epoch rows of many runs in one query (for Compare)."""
        out: dict[int, list[dict]] = {i: [] for i in run_ids}
        with self._tx(write=False) as c:
            q = (
                epochs_table.select()
                .where(epochs_table.c.run_id.in_(run_ids))
                .order_by(epochs_table.c.run_id, epochs_table.c.epoch)
            )
            for r in c.execute(q).mappings():
                out[r["run_id"]].append(dict(r))
        return out

    # ---- checkpoints --------------------------------------------------------------------------
    def run_dir(self, run_id: int) -> Path:
        """A run's checkpoint folder: <id>-<uid>, so a folder left by a deleted store, or by another run with
        the same id, is never taken for this run's (runs of stores older than uids keep <id>)."""
        assert self.folder is not None
        if run_id not in self._uids:
            with self._tx(write=False) as c:
                uid = c.execute(sa.select(runs_table.c.uid).where(runs_table.c.id == run_id)).scalar()
            self._uids[run_id] = uid
        uid = self._uids[run_id]
        return self.folder / (f"{run_id}-{uid}" if uid else str(run_id))

    def stale_checkpoint_folders(self, run_id: int) -> list[Path]:
        """Folders in the checkpoint folder that carry this run's id but are not this run's (another
        store's, or a run deleted from the database): never resumed from, reported."""
        if not self.folder or not self.folder.is_dir():
            return []
        mine = self.run_dir(run_id)
        return sorted(p for p in self.folder.iterdir()
                      if p.is_dir() and p != mine and p.name.split("-", 1)[0] == str(run_id))

    def clean_temporary(self, run_id: int) -> list[Path]:
        """Delete the half-written checkpoint files (.<name>.pt.tmp<pid>) a killed process left; returns them."""
        if not self.folder or not self.run_dir(run_id).is_dir():
            return []
        left = sorted(self.run_dir(run_id).glob(".*.pt.tmp*"))
        for f in left:
            f.unlink(missing_ok=True)
        return left

    def save_checkpoint(self, run_id: int, name: str, state: dict) -> None:
        """Write atomically: a reader sees the old checkpoint or the new one, never half of one."""
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        if self.folder:
            d = self.run_dir(run_id)
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{name}.pt.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / f"{name}.pt")
            self._note_saved(run_id, name, state)
            return
        with self._tx() as c:  # one transaction: delete + insert is atomic to readers
            t = checkpoints_table
            c.execute(t.delete().where(t.c.run_id == run_id, t.c.name == name))
            c.execute(t.insert().values(run_id=run_id, name=name, data=data, updated_at=time.time()))
        self._note_saved(run_id, name, state)

    def _note_saved(self, run_id: int, name: str, state: dict) -> None:
        """Record the epoch of the newest 'last' checkpoint, so a missing checkpoint is told from none yet."""
        if name == "last" and isinstance(state.get("epochs_done"), int):
            self.update(run_id, saved_epoch=state["epochs_done"])

    def has_checkpoint(self, run_id: int, name: str) -> bool:
        if self.folder:
            return (self.run_dir(run_id) / f"{name}.pt").is_file()
        t = checkpoints_table
        with self._tx(write=False) as c:
            return c.execute(sa.select(t.c.name).where(t.c.run_id == run_id, t.c.name == name)).first() is not None

    def runs_with_checkpoint(self, name: str) -> set[int]:
        """Ids of every run that has checkpoint `name`: one directory listing or one query, for pickers
        that would otherwise ask run by run (seconds at 10,000 runs on PostgreSQL)."""
        if self.folder:
            if not self.folder.is_dir():
                return set()
            with self._tx(write=False) as c:
                folders = {(f"{i}-{u}" if u else str(i)): i for i, u in c.execute(sa.select(runs_table.c.id, runs_table.c.uid))}
            return {folders[p.parent.name] for p in self.folder.glob(f"*/{name}.pt") if p.parent.name in folders}
        t = checkpoints_table
        with self._tx(write=False) as c:
            return set(c.execute(sa.select(t.c.run_id).where(t.c.name == name).distinct()).scalars())

    def load_checkpoint(self, run_id: int, name: str = "best", keys: tuple[str, ...] = ()) -> dict:
        """The checkpoint's state; `keys` it must hold (e.g. RESUME_KEYS), else one StoreError line."""
        data, where = self._checkpoint(run_id, name)
        return load_state_bytes(data, where, keys)

    def checkpoint_bytes(self, run_id: int, name: str = "best") -> bytes:
        """The checkpoint as stored (a torch.save file), e.g. to measure or copy it."""
        return self._checkpoint(run_id, name)[0]

    def _checkpoint(self, run_id: int, name: str) -> tuple[bytes, str]:
        if self.folder:
            path = self.run_dir(run_id) / f"{name}.pt"
            if not path.is_file():
                raise StoreError(f"run {run_id} has no '{name}' checkpoint ({path})")
            return path.read_bytes(), f"run {run_id}'s {name!r} checkpoint ({path})"
        t = checkpoints_table
        with self._tx(write=False) as c:
            data = c.execute(sa.select(t.c.data).where(t.c.run_id == run_id, t.c.name == name)).scalar()
        if data is None:
            raise StoreError(f"run {run_id} has no '{name}' checkpoint")
        return data, f"run {run_id}'s {name!r} checkpoint"


    # ---- the own digits (schema 5, core.digits) ---------------------------------------------------
    def add_digits(self, rows: list[dict], owner: str | None = None) -> list[int]:
        """Labelled pictures ({"label", "picture", "reading", optional "read_by", "read_as"}), all in one
        transaction: all are saved or none. Returns their ids."""
        now = time.time()
        ids = []
        with self._tx() as c:
            for r in rows:
                res = c.execute(digits_table.insert().values(
                    label=int(r["label"]), picture=r["picture"], reading=r["reading"], read_by=r.get("read_by"),
                    read_as=r.get("read_as"), created_at=now, owner=owner))
                ids.append(int(res.inserted_primary_key[0]))
        return ids

    def digits(self, owner: str | None = None, pictures: bool = True) -> list[dict]:
        """The owner's labelled digits (owner None: those saved without a user), oldest first; without the
        original pictures when `pictures` is False (a gallery shows the readings)."""
        t = digits_table
        cols = [col for col in t.columns if pictures or col.name != "picture"]
        q = sa.select(*cols).where(_owned_by(t, owner)).order_by(t.c.id)
        with self._tx(write=False) as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def digit_counts(self, owner: str | None = None) -> dict[int, int]:
        """Labelled digits per digit 0-9 (zeros included) of the owner's set."""
        t = digits_table
        q = sa.select(t.c.label, sa.func.count()).where(_owned_by(t, owner)).group_by(t.c.label)
        with self._tx(write=False) as c:
            found = dict(c.execute(q).all())
        return {d: int(found.get(d, 0)) for d in range(10)}

    def delete_digit(self, digit_id: int, owner: str | None = None) -> bool:
        """Delete one of the owner's digits; False when the owner has no digit with that id."""
        t = digits_table
        with self._tx() as c:
            return c.execute(t.delete().where(t.c.id == digit_id, _owned_by(t, owner))).rowcount == 1

    # ---- measuring the store (core.scalebench) ------------------------------------------------------
    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def count_statements(self) -> Counter:
        """A live counter of the SQL statements this store object sends, by verb (INSERT, UPDATE, SELECT...)."""
        counts: Counter = Counter()

        def before(conn, cursor, statement, parameters, context, executemany):
            counts[statement.lstrip().split(None, 1)[0].upper()] += 1

        sa.event.listen(self.engine, "before_cursor_execute", before)
        return counts

    def insert_finished_runs(self, n: int, epochs: int, label: str, rows_per_batch: int = 1000) -> None:
        """n finished runs of `epochs` epochs each, in bulk (for measuring queries at scale; no checkpoints)."""
        from core.config import TrainConfig

        cfg = TrainConfig().to_json()
        now = time.time()
        with self._tx() as c:
            first = c.execute(sa.select(sa.func.coalesce(sa.func.max(runs_table.c.id), 0))).scalar() + 1
            for start in range(0, n, rows_per_batch):
                ids = range(first + start, first + min(n, start + rows_per_batch))
                c.execute(runs_table.insert(), [
                    {"id": i, "model": "Model3", "config": cfg, "label": label, "status": "finished",
                     "created_at": now, "started_at": now, "ended_at": now, "epoch": epochs, "params": 7_800,
                     "best_test_acc": 99.0 + (i % 50) / 100, "sweep": f"bench-{i // 100}", "uid": uuid.uuid4().hex}
                    for i in ids])
                c.execute(epochs_table.insert(), [
                    {"run_id": i, "epoch": e, "train_loss": 0.05, "train_acc": 98.5, "test_loss": 0.02,
                     "test_acc": 99.0 + e / 100, "lr": 0.01, "seconds": 20.0}
                    for i in ids for e in range(1, epochs + 1)])
        if self.dialect == "postgresql":  # ids were given explicitly: move the sequence past them
            with self._tx() as c:
                c.execute(sa.text("SELECT setval('runs_id_seq', (SELECT max(id) FROM runs))"))
                c.execute(sa.text("ANALYZE"))

    def delete_runs_labelled(self, label: str) -> None:
        with self._tx() as c:
            gone = sa.select(runs_table.c.id).where(runs_table.c.label == label)
            for t in (epochs_table, steps_table, layer_health_table, activations_table, checkpoints_table):
                c.execute(t.delete().where(t.c.run_id.in_(gone)))
            c.execute(runs_table.delete().where(runs_table.c.label == label))

    def table_bytes(self) -> dict:
        """Bytes on disk per table (PostgreSQL, or SQLite with dbstat), else the whole SQLite file."""
        with self._tx(write=False) as c:
            if self.dialect == "postgresql":
                return {t: c.execute(sa.text(f"SELECT pg_total_relation_size('{t}')")).scalar()
                        for t in ("runs", "epochs", "steps", "checkpoints")}
            try:
                rows = c.execute(sa.text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")).all()
                return {name: int(size) for name, size in rows}
            except sa.exc.OperationalError:  # SQLite built without dbstat
                pass
        with self._tx(write=False) as c:
            return {"file": c.execute(sa.text("PRAGMA page_count")).scalar() * c.execute(sa.text("PRAGMA page_size")).scalar()}


def _older_queued_here(run_id: int, host: str) -> sa.Exists:
    """A run older than `run_id` queued on `host` (its process waits for a slot there): it goes first.
    (schema 5, issue 17: first come, first served)"""
    older = runs_table.alias("older")
    return sa.exists().where(older.c.status == "queued", older.c.host == host, older.c.id < run_id)


def _owned_by(table: sa.Table, owner: str | None) -> sa.ColumnElement[bool]:
    """Rows of `owner`; owner None: the rows saved without one (so one user's rows never show to another)."""
    return table.c.owner.is_(None) if owner is None else table.c.owner == owner


def _thinned_steps(table: sa.Table, run_id: int, at_most: int) -> sa.Select:
    """The distinct steps a run has in `table`, every k-th of them and the last, so that about `at_most` remain:
    a long run is thinned in the query and a page reads only what it draws."""
    ranked = (sa.select(table.c.step, sa.func.row_number().over(order_by=table.c.step).label("rn"),
                        sa.func.count().over().label("total"))
              .where(table.c.run_id == run_id).group_by(table.c.step).subquery())
    stride = (ranked.c.total + at_most - 1) // at_most
    return sa.select(ranked.c.step).where(sa.or_((ranked.c.rn - 1) % stride == 0, ranked.c.rn == ranked.c.total))


def load_state_bytes(data: bytes, where: str, keys: tuple[str, ...] = ()) -> dict:
    """torch.load with weights_only=True, turning a corrupt file, or a torch file that is no checkpoint of
    this lab (not a dict, or without `keys`), into one clear StoreError."""
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise StoreError(f"{where} is corrupt or not a checkpoint of this lab ({type(e).__name__})") from None
    missing = [k for k in keys if k not in state] if isinstance(state, dict) else list(keys) or ["a dict"]
    if missing:
        raise StoreError(f"{where} is not a checkpoint of this lab (no {', '.join(map(repr, missing))})")
    return state


def _connect_args(url: str) -> dict:
    # An unreachable server fails in seconds, not after the OS's TCP timeout.
    return {"connect_timeout": 5} if url.startswith("postgresql") else {}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _run(row) -> Run:
    from core.config import TrainConfig

    d = dict(row)
    d["config"] = TrainConfig.from_dict(json.loads(d["config"]))
    d["stop_requested"] = bool(d["stop_requested"])
    for counter in ("epoch", "batch", "batches_per_epoch", "saved_epoch"):  # NULL in rows an old upgrade added to
        d[counter] = d[counter] or 0
    return Run(**d)
