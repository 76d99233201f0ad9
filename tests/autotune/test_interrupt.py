"""The deferred stop: a first SIGINT/SIGTERM waits for a safe point, a second one interrupts at once."""

import os
import signal

import pytest

from autotune.interrupt import STOP, StopRequested


@pytest.fixture
def installed():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    STOP.install()
    try:
        yield STOP
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        STOP.signals = 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_waits_for_the_check_and_a_second_one_forces(installed, sig):
    reached = []
    with installed.deferred():
        os.kill(os.getpid(), sig)  # handled before the next bytecode: no exception here
        reached.append(1)
        assert installed.signals == 1
        with pytest.raises(StopRequested):
            installed.check()
        with pytest.raises(KeyboardInterrupt) as forced:
            os.kill(os.getpid(), sig)
            reached.append(2)
        assert type(forced.value) is KeyboardInterrupt
    assert reached == [1]


def test_outside_a_deferred_block_a_signal_interrupts_at_once(installed):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert installed.signals == 1


def test_the_worker_parent_never_forces_and_counts_every_signal(installed):
    with installed.deferred(force_on_second=False):
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGTERM)
        assert installed.signals == 3
    with pytest.raises(StopRequested):
        installed.check()


def test_a_stop_request_is_a_keyboard_interrupt_for_existing_handlers():
    assert issubclass(StopRequested, KeyboardInterrupt) and not issubclass(StopRequested, Exception)


def test_the_command_handler_exits_130_at_once_outside_deferred_blocks():
    import subprocess
    import sys

    code = ("import os, signal, time\n"
            "from autotune.interrupt import STOP\n"
            "STOP.install(exit_at_once=True)\n"
            "with STOP.deferred():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    print('deferred', STOP.signals, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(5)\n"
            "print('not reached', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130
    assert done.stdout == "deferred 1\n"
    assert done.stderr.strip() == ("interrupted: stopped at once (nothing was being written); "
                                   "run the same command to resume")
