"""The Optuna storage and the MLflow client, made to ride out a database outage.

A study runs for days against one PostgreSQL: a restart, a failover or a network cut must not end the fleet. Every
storage call (and every MLflow call) that fails for a reason that passes, a refused or dropped connection, a locked
SQLite file, is retried with backoff (0.5 s doubling to 5 s) until the database answers, for up to
`heartbeat.outage` seconds (`OUTAGE.limit_s`) counted from the start of the outage. The heartbeat thread retries
the same way, so it survives and the trial it guards is not re-run. Past the limit the call raises
`StorageOutage`: the worker ends with one line, and its RUNNING trial is failed and re-run by the next worker once
its heartbeat is stale.

After an outage every worker's last heartbeat is old. So a worker does not judge any trial stale until it has been
connected for `interval + 5 s + 2 s` (`STALE_JUDGE_MARGIN_S`), long enough for the live workers' heartbeat threads
to beat again; otherwise the first worker back would fail (and re-run) its neighbours' running trials. A stale
query that was itself retried through an outage is answered the moment the database returns, so its answer is
dropped too. A worker whose trial was failed as stale anyway (it was paused longer than `heartbeat.grace`) says so
and carries on; the trial's retry is queued.

A trial failed for a stale heartbeat gets `fail_reason` = "worker died (stale heartbeat)" before its state changes
(Optuna refuses attributes on finished trials), whichever worker or Optuna call fails it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from autotune.spec import mask_url

T = TypeVar("T")

STALE_REASON = "worker died (stale heartbeat)"
# Retry waits: the first, doubling up to the last.
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 5.0
# After (re)connecting, wait this long beyond one heartbeat interval before failing anyone's trial as stale.
STALE_JUDGE_MARGIN_S = MAX_WAIT_S + 2.0
# Connecting at start-up: attempts (the first wait doubles, capped at 8 s). A command that cannot reach the database
# exits 2 quickly; `autotune worker` (a fleet member, often restarted by its supervisor during the very outage that
# killed it) keeps trying for `heartbeat.outage` seconds instead (`wait_s`), saying so once on stderr.
CONNECT_ATTEMPTS = 5
CONNECT_BACKOFF_S = 0.5
CONNECT_MAX_WAIT_S = 8.0
# What a restart or an outage never says: a wrong name, user, password or database. No waiting for those.
NOT_AN_OUTAGE = ("does not exist", "password authentication failed", "no pg_hba.conf entry", "failed to resolve host",
                 "Name or service not known", "nodename nor servname")


class StorageOutage(RuntimeError):
    """The database stayed unreachable for longer than `heartbeat.outage` seconds (exit 2, one line)."""


def is_transient(error: BaseException) -> bool:
    """True when `error` (or what it wraps) is a connection failure or a lock: worth retrying, not a bug.

    PostgreSQL: any OperationalError / InterfaceError / disconnect (refused, dropped, server shutting down).
    SQLite: only "database is locked" and "unable to open" (other SQLite OperationalErrors are broken schemas).
    MLflow over HTTP: connection errors. Optuna and MLflow wrap these; the whole chain is searched.
    """
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageOutage):
            return False
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, (sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(current, sqlalchemy.exc.OperationalError):
            original = current.orig
            if original is not None and type(original).__module__.startswith("sqlite3"):
                text = str(original).lower()
                return "locked" in text or "unable to open" in text
            return True
        if isinstance(current, ConnectionError) or type(current).__name__ in ("NewConnectionError", "MaxRetryError"):
            return True
        current = current.__cause__ or current.__context__
    return False


def _reason(error: BaseException) -> str:
    """The innermost line that says what went wrong, e.g. 'connection refused'."""
    current, last = error, error
    while current is not None:
        last = current
        current = current.__cause__ or current.__context__
    text = (str(last).strip().splitlines() or [type(last).__name__])[0]
    return f"{type(last).__name__}: {text}"[:200]


class _Outage:
    """Process-wide view of the database's health, shared by the main thread and the heartbeat thread."""

    def __init__(self) -> None:
        self.limit_s = 300.0
        self.heartbeat_interval_s = 60.0
        self.since: float | None = None        # monotonic start of the current outage
        self.connected_at: float | None = None  # monotonic time of the first success after the last outage
        self.outages = 0
        self.echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
        self._lock = threading.Lock()

    def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`call(*args, **kwargs)`, retried through a transient outage of up to `limit_s` seconds."""
        wait = FIRST_WAIT_S
        while True:
            try:
                result = call(*args, **kwargs)
            except Exception as error:
                if not is_transient(error):
                    raise
                down_s = self._failed(error)
                if down_s > self.limit_s:
                    raise StorageOutage(f"storage: the database has been unreachable for {down_s:.0f} s, longer "
                                        f"than heartbeat.outage ({self.limit_s:g} s): {_reason(error)}") from None
                time.sleep(min(wait, max(0.05, self.limit_s - down_s + 0.05)))
                wait = min(wait * 2, MAX_WAIT_S)
                continue
            if self.since is not None or self.connected_at is None:
                self._succeeded()
            return result

    def _failed(self, error: BaseException) -> float:
        with self._lock:
            now = time.monotonic()
            if self.since is None:
                self.since = now
                self.outages += 1
                self.echo(f"storage: database unreachable ({_reason(error)}); retrying for up to "
                          f"{self.limit_s:g} s")
            return now - self.since

    def _succeeded(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self.since is not None:
                self.echo(f"storage: database back after {now - self.since:.0f} s; carrying on")
                self.since = None
                self.connected_at = now
            elif self.connected_at is None:
                self.connected_at = now

    def may_judge_stale(self) -> bool:
        """Connected long enough that a live worker's heartbeat would have been recorded since the last outage."""
        if self.since is not None or self.connected_at is None:
            return False
        return time.monotonic() - self.connected_at >= self.heartbeat_interval_s + STALE_JUDGE_MARGIN_S


OUTAGE = _Outage()

# The RDBStorage methods that reach the database (those _CachedStorage calls, and the public ones we call).
_RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "_create_new_trial", "set_trial_param", "_set_trial_param",
    "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_user_attrs", "get_trial_system_attrs", "get_trial_id_from_study_id_trial_number", "get_trial",
    "get_all_trials", "_get_trials", "get_n_trials", "get_best_trial", "_get_best_trial_id",
    "get_trial_number_from_id", "get_trial_params",
)


def _retried(name: str) -> Callable:
    method = getattr(RDBStorage, name)

    def call(self, *args, **kwargs):
        return OUTAGE.run(method, self, *args, **kwargs)

    call.__name__ = name
    call.__doc__ = method.__doc__
    return call


class ResilientRDBStorage(RDBStorage):
    """RDBStorage whose database calls ride out an outage (see the module docstring)."""

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        attempts = 0

        def once() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retry after a commit whose answer the dropped connection lost: the state is already ours.
                if attempts > 1 and RDBStorage.get_trial(self, trial_id).state == state:
                    return True
                raise

        return OUTAGE.run(once)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            OUTAGE.run(RDBStorage.record_heartbeat, self, trial_id)
        except StorageOutage:
            pass  # the main thread reports the outage and ends the worker; the heartbeat thread stays quiet

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """RUNNING trials whose heartbeat is older than the grace period (a pure query)."""
        return OUTAGE.run(RDBStorage._get_stale_trial_ids, self, study_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """What Optuna's `fail_stale_trials` fails: none until this worker may judge, each with its reason set."""
        if not OUTAGE.may_judge_stale():
            return []
        outages = OUTAGE.outages
        stale = self.stale_trial_ids(study_id)
        # A query retried through an outage answers just after the database's return, when every live worker's
        # last heartbeat is still from before it: judge again later, not on that answer.
        if OUTAGE.outages != outages or not OUTAGE.may_judge_stale():
            return []
        for trial_id in stale:
            try:
                self.set_trial_user_attr(trial_id, "fail_reason", STALE_REASON)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker failed it first
        return stale


for _name in _RETRIED:
    setattr(ResilientRDBStorage, _name, _retried(_name))


class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose heartbeat went stale (queued WAITING with the same thresholds, at most
    `max_retry` times per chain), its `retry_of` naming the dead trial.

    Optuna's own callback copies the dead trial's user attributes into the retry: a retry of a retry (an interrupted
    trial's, then its worker died) kept the first trial's `retry_of`, so by `retry_of` the dead retry looked never
    re-run and the first trial re-run twice (bench/soak.py found it), and every retry started with the dead trial's
    `fail_reason`, rung, FLOPs ratio and MLflow run id. Only the warm-start marks carry over here.
    """

    KEPT_USER_ATTRS = ("warm_start", "warm_start_index")

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        system_attrs: dict[str, Any] = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
        system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
        if self._max_retry is not None and self._max_retry < len(system_attrs["retry_history"]):
            return
        user_attrs = {key: trial.user_attrs[key] for key in self.KEPT_USER_ATTRS if key in trial.user_attrs}
        study.add_trial(optuna.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={**user_attrs, "retry_of": trial.number}, system_attrs=system_attrs,
            intermediate_values=trial.intermediate_values if self._inherit_intermediate_values else None))


def quiet_optuna() -> None:
    """Our progress bar and tables report trials; Optuna's per-trial log lines and experimental warnings would not."""
    import warnings

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def ensure_sqlite_parent(url: str) -> None:
    """SQLite creates the database file but not its directory."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def has_heartbeats(url: str) -> bool:
    """Whether the storage at `url` records heartbeats: RDB storages do, the journal file does not."""
    return not url.startswith("journal:///")


def storage_for(url: str, heartbeat_interval: int = 60, grace_period: int = 600, outage_s: float = 300.0,
                attempts: int = CONNECT_ATTEMPTS, backoff_s: float = CONNECT_BACKOFF_S) -> optuna.storages.BaseStorage:
    """The Optuna storage: connection retries at start, outage retries afterwards, heartbeats.

    Heartbeats let a later worker fail (and re-run once) a trial whose worker died; the re-run keeps a link to
    the trial it replaces. A database unreachable at start raises `StorageOutage` after `attempts` tries (exit 2).
    """
    import sqlalchemy.exc

    quiet_optuna()
    OUTAGE.limit_s = float(outage_s)
    OUTAGE.heartbeat_interval_s = float(heartbeat_interval)
    if not has_heartbeats(url):  # the journal file: one machine, processes share the file through its lock
        path = Path(url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        journal = optuna.storages.journal
        return journal.JournalStorage(journal.JournalFileBackend(str(path)))
    ensure_sqlite_parent(url)

    def connect() -> ResilientRDBStorage:
        return ResilientRDBStorage(
            url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=1),
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite")
            else {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}},
        )

    return keep_connecting(connect, f"storage: cannot reach {mask_url(url)}", StorageOutage,
                           (sqlalchemy.exc.OperationalError,), attempts, backoff_s)


def wait_for_database(url: str, wait_s: float) -> None:
    """Return once the database at `url` accepts a connection, trying for up to `wait_s` seconds (StorageOutage
    after that). For workers, before `storage_for`, outside any signal deferral: Ctrl-C or SIGTERM ends the wait."""
    if not url.startswith("postgresql"):  # SQLite and the journal file are local: nothing to wait for
        return
    import sqlalchemy.exc

    keep_connecting(lambda: connect_once(url), f"storage: cannot reach {mask_url(url)}", StorageOutage,
                    (sqlalchemy.exc.OperationalError,), CONNECT_ATTEMPTS, CONNECT_BACKOFF_S, wait_s)


def connect_once(url: str, timeout_s: float = 10.0) -> None:
    """Open and close one connection to the database at `url` (no pool kept): raises what the driver raises."""
    import sqlalchemy
    import sqlalchemy.pool

    connect_args = {"connect_timeout": int(timeout_s)} if url.startswith("postgresql") else {}
    engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def keep_connecting(connect: Callable[[], T], failure: str, error_class: type[Exception],
                    transient: tuple[type[BaseException], ...], attempts: int, backoff_s: float,
                    wait_s: float = 0.0) -> T:
    """`connect()`, retried on `transient` errors: `attempts` tries with the wait doubling from `backoff_s` (capped
    at CONNECT_MAX_WAIT_S), and on until `wait_s` seconds have passed since the first try unless the error is not an
    outage (NOT_AN_OUTAGE: a typo in the URL fails as fast as without `wait_s`). Gives up with
    `error_class(f"{failure} after N attempts[ over S s]: <reason>")`, one line (exit 2 in the CLI)."""
    started = time.monotonic()
    wait, attempt = backoff_s, 0
    while True:
        attempt += 1
        try:
            return connect()
        except transient as error:
            reason = connect_reason(error)
            if any(marker in reason for marker in NOT_AN_OUTAGE):
                wait_s = 0.0
            elapsed = time.monotonic() - started
            if attempt >= attempts and elapsed >= wait_s:
                over = f" over {elapsed:.0f} s" if wait_s else ""
                raise error_class(f"{failure} after {attempt} attempts{over}: {reason}") from None
            if attempt == 1 and wait_s:
                print(f"{failure} ({reason}); trying again for up to {wait_s:g} s (heartbeat.outage)",
                      file=sys.stderr, flush=True)
            time.sleep(wait if attempt < attempts else min(wait, wait_s - elapsed))
            wait = min(wait * 2, CONNECT_MAX_WAIT_S)


def connect_reason(error: BaseException) -> str:
    """The first line of what a failed connection says (the driver's message, not SQLAlchemy's wrapper)."""
    reason = getattr(error, "orig", None) or getattr(error, "reason", None) or error
    text = str(reason).strip()
    return text.splitlines()[0] if text else type(error).__name__


def backend_of(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage behind Optuna's in-process cache (`optuna.load_study` wraps an RDBStorage in one)."""
    return getattr(storage, "_backend", storage)


def stale_trial_numbers(study: optuna.Study) -> list[int]:
    """Numbers of the study's RUNNING trials whose worker has been silent for longer than the grace period."""
    backend = backend_of(study._storage)
    if not isinstance(backend, ResilientRDBStorage):
        return []
    stale = set(backend.stale_trial_ids(study._study_id))
    return [trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if trial._trial_id in stale]


class Resilient:
    """A proxy whose method calls ride out an outage (`OUTAGE.run`): for the MLflow client."""

    def __init__(self, target: Any) -> None:
        self._target = target
        # MLflow logs each failed database call with its traceback; the retry loop reports the outage instead.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            return OUTAGE.run(value, *args, **kwargs)

        return call


class ReadOnlyStorage(optuna.storages.BaseStorage):
    """A view of a storage that refuses every write (`autotune dashboard`: a UI must not delete or edit a study).

    Reads go to the wrapped storage; `create_*`, `delete_*` and `set_*` raise PermissionError naming the call.
    """

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self._storage = storage

    def __getattr__(self, name: str):  # the non-abstract reads (get_n_trials, get_best_trial, ...)
        return getattr(self._storage, name)


def _read(name: str):
    def call(self, *args, **kwargs):
        return getattr(self._storage, name)(*args, **kwargs)

    call.__name__ = name
    return call


def _refuse(name: str):
    def call(self, *args, **kwargs):
        raise PermissionError(f"read-only storage: {name} is not allowed here")

    call.__name__ = name
    return call


for _name in optuna.storages.BaseStorage.__abstractmethods__:
    setattr(ReadOnlyStorage, _name, (_refuse if _name.startswith(("create_", "delete_", "set_")) else _read)(_name))
ReadOnlyStorage.__abstractmethods__ = frozenset()
