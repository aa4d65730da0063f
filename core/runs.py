"""The run store: runs, their per-epoch metrics and their checkpoints, behind one database URL.

Default: a SQLite file (runs/runs.db, WAL mode so readers never block the training writer), with
checkpoints as files in a folder per run next to it. Any other SQLAlchemy URL (postgresql://...)
keeps checkpoints as binary rows in the same database, so workers need no shared disk.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
import torch

from core import PROJECT_ROOT
from core.config import TrainConfig

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
sa.Index("runs_status", runs_table.c.status)
sa.Index("runs_sweep", runs_table.c.sweep)
SCHEMA_VERSION = 1  # bump with a schema change; an older store gets missing columns by ALTER TABLE ... ADD COLUMN


class StoreError(RuntimeError):
    """The store cannot be opened or a run/checkpoint is missing or unreadable."""


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
            self.engine = sa.create_engine(url, connect_args={"timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.folder = None
            try:
                self.engine = sa.create_engine(
                    url, pool_pre_ping=True, pool_size=2, max_overflow=4, connect_args=_connect_args(url)
                )
            except (ImportError, sa.exc.ArgumentError) as e:
                raise StoreError(f"cannot use the run store URL {self.safe_url}: {_one_line(e)} "
                                 "(PostgreSQL needs `pip install 'psycopg[binary]'`)") from None
        try:
            self._create_or_upgrade_schema()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as e:
            raise StoreError(f"cannot open the run store at {self.safe_url}: {_one_line(e.orig or e)}") from None

    def _create_or_upgrade_schema(self) -> None:
        """Create missing tables, add columns newer code expects (additive ALTERs only), record the version.
        On PostgreSQL an advisory lock makes concurrent workers opening a fresh database take turns."""
        with self.engine.begin() as c:
            if c.dialect.name == "postgresql":
                c.execute(sa.text("SELECT pg_advisory_xact_lock(7240331)"))
            metadata.create_all(c)
            have = {t: {col["name"] for col in sa.inspect(c).get_columns(t)} for t in metadata.tables}
            for table in metadata.tables.values():
                for col in table.columns:
                    if col.name not in have[table.name]:
                        kind = col.type.compile(dialect=c.dialect)
                        c.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {kind}'))
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

    @property
    def safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    # ---- runs -------------------------------------------------------------------------------
    def create_run(self, config: TrainConfig, label: str = "", sweep: str | None = None) -> int:
        from core.models import build_model, count_parameters

        config.validate()
        params = count_parameters(build_model(config.model, config.dropout))
        with self.engine.begin() as c:
            res = c.execute(
                runs_table.insert().values(
                    model=config.model,
                    config=config.to_json(),
                    label=label,
                    status="queued",
                    created_at=time.time(),
                    params=params,
                    sweep=sweep,
                )
            )
            return int(res.inserted_primary_key[0])

    def get(self, run_id: int) -> Run:
        self.reconcile()
        with self.engine.connect() as c:
            row = c.execute(runs_table.select().where(runs_table.c.id == run_id)).mappings().first()
        if row is None:
            raise StoreError(f"no run {run_id} in {self.safe_url}")
        return _run(row)

    def list_runs(
        self, status: str | None = None, sweep: str | None = None, limit: int | None = None, search: str = ""
    ) -> list[Run]:
        """Newest first; `search` keeps the runs it matches (see `_matching`)."""
        self.reconcile()
        q = runs_table.select().order_by(runs_table.c.id.desc())
        if status:
            q = q.where(runs_table.c.status == status)
        if sweep:
            q = q.where(runs_table.c.sweep == sweep)
        if search.strip():
            q = q.where(_matching(search))
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as c:
            return [_run(r) for r in c.execute(q).mappings()]

    def count_runs(self, search: str = "") -> int:
        q = sa.select(sa.func.count()).select_from(runs_table)
        if search.strip():
            q = q.where(_matching(search))
        with self.engine.connect() as c:
            return c.execute(q).scalar_one()

    def best_by_model(self) -> dict[str, float]:
        """Best test accuracy reached by any run, per model: one aggregate query, however many runs."""
        q = (
            sa.select(runs_table.c.model, sa.func.max(runs_table.c.best_test_acc))
            .where(runs_table.c.best_test_acc.is_not(None))
            .group_by(runs_table.c.model)
        )
        with self.engine.connect() as c:
            return {model: best for model, best in c.execute(q)}

    def sweeps(self) -> list[str]:
        """Sweep ids that have trials in the store, newest first."""
        q = (
            sa.select(runs_table.c.sweep)
            .where(runs_table.c.sweep.is_not(None))
            .group_by(runs_table.c.sweep)
            .order_by(sa.func.max(runs_table.c.id).desc())
        )
        with self.engine.connect() as c:
            return [r[0] for r in c.execute(q)]

    def update(self, run_id: int, **values) -> None:
        with self.engine.begin() as c:
            c.execute(runs_table.update().where(runs_table.c.id == run_id).values(**values))

    def claim(
        self, run_id: int, pid: int, max_running: int | None = None, from_status: tuple[str, ...] = ("queued", "interrupted", "stopped")
    ) -> bool:
        """Mark a run that is in one of `from_status` as running by this process. With max_running, only
        when fewer runs than that are running on this host (a local queue). Atomic: one UPDATE."""
        host = socket.gethostname()
        cond = sa.and_(runs_table.c.id == run_id, runs_table.c.status.in_(from_status))
        if max_running is not None:
            running = (
                sa.select(sa.func.count())
                .select_from(runs_table)
                .where(runs_table.c.status == "running", runs_table.c.host == host)
                .scalar_subquery()
            )
            cond = sa.and_(cond, running < max_running)
        now = time.time()
        with self.engine.begin() as c:
            res = c.execute(
                runs_table.update()
                .where(cond)
                .values(status="running", pid=pid, host=host, started_at=now, heartbeat=now, ended_at=None, error=None)
            )
        return res.rowcount == 1

    def finish(self, run_id: int, status: str, error: str | None = None) -> None:
        assert status in STATUSES
        self.update(run_id, status=status, ended_at=time.time(), error=error, stop_requested=False)

    def request_stop(self, run_id: int) -> None:
        """Ask a run to stop; a queued run that has not started is stopped at once."""
        with self.engine.begin() as c:
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
        with self.engine.connect() as c:
            return bool(c.execute(sa.select(runs_table.c.stop_requested).where(runs_table.c.id == run_id)).scalar())

    def reconcile(self) -> int:
        """Mark as interrupted the running runs whose process is gone: by pid on this host, by heartbeat
        elsewhere. Returns how many were marked."""
        host = socket.gethostname()
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(
                    runs_table.c.id, runs_table.c.pid, runs_table.c.host, runs_table.c.heartbeat, runs_table.c.stop_requested
                ).where(runs_table.c.status == "running")
            ).all()
        dead = [
            r
            for r in rows
            if (r.host == host and r.pid and not pid_alive(r.pid))
            or (r.host != host and (r.heartbeat or 0) < time.time() - HEARTBEAT_TIMEOUT)
        ]
        # A process that died after it was asked to stop (e.g. a sweep's trial actor torn down by Ray
        # while it was winding down) did what was asked: the run is stopped, with its saved epochs.
        if dead:
            with self.engine.begin() as c:
                for stop_was_asked, status, error in (
                    (False, "interrupted", "the training process died before finishing"),
                    (True, "stopped", None),
                ):
                    ids = [r.id for r in dead if bool(r.stop_requested) == stop_was_asked]
                    if ids:
                        c.execute(
                            runs_table.update()
                            .where(runs_table.c.id.in_(ids), runs_table.c.status == "running")
                            .values(status=status, ended_at=time.time(), error=error)
                        )
        return len(dead)

    def delete_run(self, run_id: int) -> None:
        with self.engine.begin() as c:
            for t in (epochs_table, checkpoints_table):
                c.execute(t.delete().where(t.c.run_id == run_id))
            c.execute(runs_table.delete().where(runs_table.c.id == run_id))
        if self.folder:
            for f in self.run_dir(run_id).glob("*"):
                f.unlink()

    # ---- epochs -----------------------------------------------------------------------------
    def add_epoch(self, run_id: int, result) -> None:
        """Record one finished epoch (an EpochResult) and the run's progress, in one transaction."""
        with self.engine.begin() as c:
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

    def epochs(self, run_id: int) -> list[dict]:
        with self.engine.connect() as c:
            q = epochs_table.select().where(epochs_table.c.run_id == run_id).order_by(epochs_table.c.epoch)
            return [dict(r) for r in c.execute(q).mappings()]

    def epochs_of(self, run_ids: list[int]) -> dict[int, list[dict]]:
        """Per-epoch rows of many runs in one query (for Compare)."""
        out: dict[int, list[dict]] = {i: [] for i in run_ids}
        with self.engine.connect() as c:
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
        assert self.folder is not None
        return self.folder / str(run_id)

    def save_checkpoint(self, run_id: int, name: str, state: dict) -> None:
        """Write atomically: a reader sees the old checkpoint or the new one, never half of one."""
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
            return
        with self.engine.begin() as c:  # one transaction: delete + insert is atomic to readers
            t = checkpoints_table
            c.execute(t.delete().where(t.c.run_id == run_id, t.c.name == name))
            c.execute(t.insert().values(run_id=run_id, name=name, data=data, updated_at=time.time()))

    def has_checkpoint(self, run_id: int, name: str) -> bool:
        if self.folder:
            return (self.run_dir(run_id) / f"{name}.pt").is_file()
        t = checkpoints_table
        with self.engine.connect() as c:
            return c.execute(sa.select(t.c.name).where(t.c.run_id == run_id, t.c.name == name)).first() is not None

    def runs_with_checkpoint(self, name: str) -> set[int]:
        """Ids of every run that has checkpoint `name`: one directory listing or one query, for pickers
        that would otherwise ask run by run (seconds at 10,000 runs on PostgreSQL)."""
        if self.folder:
            if not self.folder.is_dir():
                return set()
            return {int(p.parent.name) for p in self.folder.glob(f"*/{name}.pt") if p.parent.name.isdigit()}
        t = checkpoints_table
        with self.engine.connect() as c:
            return set(c.execute(sa.select(t.c.run_id).where(t.c.name == name).distinct()).scalars())

    def load_checkpoint(self, run_id: int, name: str = "best") -> dict:
        data, where = self._checkpoint(run_id, name)
        return load_state_bytes(data, where)

    def checkpoint_bytes(self, run_id: int, name: str = "best") -> bytes:
        """The checkpoint as stored (a torch.save file), e.g. to measure or copy it."""
        return self._checkpoint(run_id, name)[0]

    def _checkpoint(self, run_id: int, name: str) -> tuple[bytes, str]:
        if self.folder:
            path = self.run_dir(run_id) / f"{name}.pt"
            if not path.is_file():
                raise StoreError(f"run {run_id} has no '{name}' checkpoint ({path})")
            return path.read_bytes(), str(path)
        t = checkpoints_table
        with self.engine.connect() as c:
            data = c.execute(sa.select(t.c.data).where(t.c.run_id == run_id, t.c.name == name)).scalar()
        if data is None:
            raise StoreError(f"run {run_id} has no '{name}' checkpoint")
        return data, f"run {run_id}/{name}"


def load_state_bytes(data: bytes, where: str) -> dict:
    """torch.load with weights_only=True, turning a corrupt file into one clear StoreError."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise StoreError(f"checkpoint {where} is corrupt or not a checkpoint of this lab ({type(e).__name__})") from None


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
    d = dict(row)
    d["config"] = TrainConfig.from_dict(json.loads(d["config"]))
    d["stop_requested"] = bool(d["stop_requested"])
    return Run(**d)
