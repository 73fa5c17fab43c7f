"""Where a study lives (``hydra.sweeper.storage``), and the heartbeat that tells a live trial from a dead one.

- ``null``: ``sqlite:///<sweep dir>/optuna.db``, Optuna's embedded storage, for one worker on one machine (SQLite
  has no row locks and no safe NFS access, so Optuna advises against it for parallel workers).
- an SQLAlchemy URL of a database server, e.g. ``postgresql://user:password@host:5432/optuna``: any number of
  sweep processes, on any machines, share the study.
- ``journal:<file>``: Optuna's journal file (``JournalFileBackend``), for several sweep processes on one host.

On a database (SQLite included) each running trial records a heartbeat every ``heartbeat_interval`` seconds;
a trial whose heartbeat is older than ``grace_period`` belongs to a worker that died (``kill -9``, a lost node),
and the next worker to ask for a trial fails it and queues its parameters again (``on_stale``). Optuna's journal
storage has no heartbeat: a dead worker's trial stays RUNNING there.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hydra_plugins.aigc_lab_sweeper._errors import SweepError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

log = logging.getLogger(__name__)

JOURNAL = "journal:"
DRIVERS = {"postgresql": "'psycopg[binary]'", "mysql": "PyMySQL"}  # the packages SQLAlchemy's default dialects need


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """The study's storage: the one configured, else the sweep dir's SQLite file."""
    return storage or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"


def is_shared(storage: str | None) -> bool:
    """A storage that several sweep processes may use at once (any configured one): a trial found RUNNING may
    belong to a live worker, so only a stale heartbeat marks it dead."""
    return storage is not None


def shown(url: str) -> str:
    """``url`` fit for messages and logs: its password replaced by ``***``."""
    if url.startswith(JOURNAL) or "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: keep the scheme and host only
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}" if "@" in rest else url


def open_storage(url: str, heartbeat_interval: int | None, grace_period: int | None,
                 on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None) -> BaseStorage:
    """The storage at ``url``, connected (one ``SweepError`` naming the URL, password hidden, when it cannot be)."""
    import optuna

    try:
        if url.startswith(JOURNAL):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url.removeprefix(JOURNAL)).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat's arguments
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=on_stale,
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
    except ModuleNotFoundError as err:
        package = DRIVERS.get(url.partition(":")[0].partition("+")[0], err.name)
        raise SweepError(f"hydra.sweeper.storage {shown(url)}: its database driver is not installed "
                         f"({err.name}): pip install {package}") from None
    except Exception as err:
        reason = " ".join(str(err).split())[:300].replace(url, shown(url))
        raise SweepError(f"cannot open the Optuna storage {shown(url)} (hydra.sweeper.storage): "
                         f"{type(err).__name__}: {reason}") from None


def is_storage_error(err: BaseException) -> bool:
    """An error of the storage itself (a database gone, a connection lost), not of the sweep."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError  # optuna's own dependency

    return isinstance(err, (optuna.exceptions.StorageInternalError, SQLAlchemyError))


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose heartbeat stopped (their worker died), which queues them again (``on_stale``)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def heartbeats(storage: BaseStorage, study: optuna.Study, trials: Sequence[optuna.Trial]) -> Iterator[None]:
    """Record the ``trials``' heartbeats now and every ``heartbeat_interval`` seconds until the block ends (a
    storage without heartbeats: nothing)."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        yield
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]
    stop = threading.Event()

    def beat() -> None:
        for trial_id in ids:
            storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]

    def beat_until_stopped() -> None:
        while not stop.wait(interval):
            try:
                beat()
            except Exception as err:  # the storage is gone: the sweep says so when it next uses it
                log.warning("Heartbeat not recorded (%s): the storage is unreachable", type(err).__name__)
                return

    beat()  # before the trials start: a worker killed at once leaves them stale too
    thread = threading.Thread(target=beat_until_stopped, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
