"""Running the gateway: one process, or one per core.

:func:`serve` runs one application until SIGINT or SIGTERM, on the gateway's runner
(:func:`gateway.web.server.make_runner`: head timeout, FHIR answers to what the HTTP parser
refuses, no ``Server`` header) and, with a certificate configured, over TLS.

:func:`serve_workers` runs ``workers`` such processes, each a whole gateway against the same
MongoDB, all listening on the same port with ``SO_REUSEPORT`` (the kernel spreads connections
among them). The first process is a small supervisor that serves nothing: SIGINT or SIGTERM to it
stops every worker; a worker that exits on its own stops the others and the supervisor exits with
an error, so a process manager sees the failure. Workers are forked children that the kernel
signals if the supervisor dies without cleaning up (``PR_SET_PDEATHSIG``), so none outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from aiohttp import web

from gateway.localstack import die_with_parent
from gateway.settings import Settings
from gateway.web.server import make_runner, tls_context

log = logging.getLogger("gateway")

_STOP_SECONDS = 30.0


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def serve(
    app: web.Application,
    settings: Settings,
    *,
    banner: Callable[[], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM; ``banner`` runs once it is listening."""
    asyncio.run(_serve(app, settings, banner, reuse_port))


async def _serve(
    app: web.Application,
    settings: Settings,
    banner: Callable[[], None] | None,
    reuse_port: bool,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = make_runner(app, settings)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            ssl_context=tls_context(settings),
            reuse_port=reuse_port or None,
        )
        await site.start()
        if banner is not None:
            banner()
        await stop.wait()
    finally:
        await runner.cleanup()


def serve_workers(settings: Settings, workers: int, run_worker: Callable[[int], int]) -> int:
    """Run ``run_worker(n)`` (worker ``n`` of 1..``workers``, which serves with ``reuse_port`` and
    returns an exit status) in ``workers`` processes until SIGINT or SIGTERM. The exit status is 0
    after a requested stop, else that of the first worker that exited on its own (1 if a signal
    ended it)."""
    context = multiprocessing.get_context("fork")  # nothing runs yet: no loop, no threads
    processes = [
        context.Process(target=_worker, args=(run_worker, n), name=f"fhir-gateway worker {n}")
        for n in range(1, workers + 1)
    ]
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process in processes:
            process.start()
        log.info(
            "%d workers serving %s:%s (pids %s)",
            workers,
            settings.host,
            settings.port,
            " ".join(str(p.pid) for p in processes),
        )
        failed = _supervise(processes, lambda: stopping)
        if failed is not None:
            log.error("worker %s exited with %s; stopping the others", failed.pid, failed.exitcode)
            request_stop(signal.SIGTERM, None)
        _wait_all(processes)
        if failed is None:
            return 0
        return failed.exitcode if failed.exitcode and failed.exitcode > 0 else 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _worker(run_worker: Callable[[int], int], n: int) -> None:
    die_with_parent()
    # The supervisor's handlers were inherited: a worker stops on SIGTERM and SIGINT itself.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status = run_worker(n)
    except KeyboardInterrupt:
        status = 0
    except Exception:
        log.exception("the worker could not serve")
        status = 1
    sys.exit(status)


def _supervise(
    processes: Sequence[BaseProcess], stopping: Callable[[], bool]
) -> BaseProcess | None:
    """Wait until every worker has exited, or one has while no stop was requested (returned)."""
    running = list(processes)
    while running:
        ready = wait([p.sentinel for p in running], timeout=1.0)
        for process in [p for p in running if p.sentinel in ready]:
            process.join()
            running.remove(process)
            if not stopping():
                return process
    return None


def _wait_all(processes: Sequence[BaseProcess]) -> None:
    for process in processes:
        process.join(_STOP_SECONDS)
        if process.exitcode is None:
            log.warning("worker %s did not stop in %s s; killing it", process.pid, _STOP_SECONDS)
            process.kill()
            process.join()
