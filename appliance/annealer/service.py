"""`kiln-annealer`: the annealer service loop plus its heartbeat (DESIGN §2, §4).

`serve(settings, db, stop)` blocks until `stop` is set. Several may run against one database: the
claim arbitrates. On stop, jigs already running finish and their results are written.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from sqlalchemy import delete, select

from appliance.annealer.runner import Annealer
from appliance.bmc.roles import register_bmc_operations
from appliance.config import Settings
from appliance.db import Database
from appliance.models import AnnealerHeartbeat, utcnow

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
IDLE_MIN, IDLE_MAX = 0.05, 1.0


def beat(db: Database, annealer: Annealer) -> None:
    with db.session() as session:
        row = session.get(AnnealerHeartbeat, annealer.name)
        if row is None:
            row = AnnealerHeartbeat(name=annealer.name, host=socket.gethostname(), pid=os.getpid())
            session.add(row)
        row.seen_at = utcnow()


def forget(db: Database, annealer: Annealer) -> None:
    with db.session() as session:
        session.execute(delete(AnnealerHeartbeat).where(AnnealerHeartbeat.name == annealer.name))


def heartbeats(db: Database) -> list[AnnealerHeartbeat]:
    with db.read_session() as session:
        return list(session.scalars(select(AnnealerHeartbeat).order_by(AnnealerHeartbeat.name)))


def make_annealer(settings: Settings, db: Database, *, workers: int | None = None) -> Annealer:
    register_bmc_operations(db, settings)  # the bmc jig's discover/configure need this process's db
    return Annealer(
        db,
        workers=workers or settings.annealer_workers,
        batch=max(settings.annealer_batch, 1),
        lease_seconds=settings.annealer_lease_seconds,
        retry_limit=settings.annealer_retry_limit,
    )


def serve(settings: Settings, db: Database, stop: threading.Event, *, workers: int | None = None) -> None:
    annealer = make_annealer(settings, db, workers=workers)
    log.info("annealer %s started: %d workers, batch %d", annealer.name, annealer.workers, annealer.batch)
    last_beat = 0.0
    idle = IDLE_MIN
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now - last_beat > HEARTBEAT_SECONDS:
                beat(db, annealer)
                last_beat = now
            try:
                work = annealer.step(idle=idle > IDLE_MIN)
            except Exception:  # the database went away for a moment: log, back off, go on
                log.exception("annealer step failed; retrying")
                work = 0
                idle = IDLE_MAX
            if work or annealer.inflight:
                idle = IDLE_MIN
                if not work:
                    stop.wait(0.01)
            else:
                stop.wait(idle)
                idle = min(idle * 2, IDLE_MAX)
    finally:
        annealer.close()
        forget(db, annealer)
        log.info("annealer %s stopped after %d node-roles", annealer.name, annealer.completed)
