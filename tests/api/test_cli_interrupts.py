"""``Interrupts``: a signal raises only inside a stage's computation; elsewhere it waits."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from api.cli.interrupts import Interrupts, Terminated


@pytest.fixture
def interrupts() -> Iterator[Interrupts]:
    it = Interrupts(threading.Event())
    it.install()
    try:
        yield it
    finally:
        it.restore()


def test_a_signal_outside_a_stage_is_held_until_the_next_stage_starts(
    interrupts: Interrupts,
) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # lands here, in "database code": nothing raised
    assert interrupts.pending == signal.SIGTERM and interrupts.stop.is_set()
    with pytest.raises(Terminated), interrupts.computing():
        raise AssertionError("the stage must not start")


def test_a_signal_inside_a_stage_raises_where_it_lands(interrupts: Interrupts) -> None:
    reached = []

    def stage() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after")  # never: the handler raised on the line above

    with pytest.raises(KeyboardInterrupt):
        interrupts.guard(stage)()
    assert reached == [] and interrupts.stop.is_set()


def test_a_second_signal_while_one_is_pending_raises_at_once(interrupts: Interrupts) -> None:
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        interrupts.check()


def test_restore_puts_the_previous_handlers_back() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    it = Interrupts(threading.Event())
    it.install()
    assert signal.getsignal(signal.SIGTERM) != before[0]
    it.restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
