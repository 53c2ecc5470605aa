"""A stop signal is never lost: one whose handler ran inside a finalizer (a weak reference's
callback, a ``__del__``) is raised again where the main thread resumes (cli/signals.py). CI once
failed on a follower's SIGTERM that met importlib's module-lock callback: Python swallowed the
KeyboardInterrupt and printed "Exception ignored in ..." with a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# a real SIGINT whose handler runs inside a weak reference's callback, as the garbage collector
# or an import lock's clean-up runs one; HOOK says whether the CLI's delivery is installed
_PROGRAM = textwrap.dedent(
    """
    import os, signal, sys, weakref
    from dask_pdist.cli.signals import deliver_lost_interrupts, interrupt_once

    signal.signal(signal.SIGINT, interrupt_once)
    if HOOK:
        deliver_lost_interrupts()

    class Thing:
        pass

    def callback(_):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):  # the handler runs here, inside the callback
            pass

    thing = Thing()
    ref = weakref.ref(thing, callback)
    try:
        del thing
        for _ in range(1_000_000):
            pass
    except KeyboardInterrupt:
        print("stopped", signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    else:
        print("lost")
    """
)


def _run(hook: bool) -> subprocess.CompletedProcess:
    code = f"HOOK = {hook}\n{_PROGRAM}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_stop_signal_that_lands_in_a_finalizer_is_raised_again():
    out = _run(hook=True)
    assert out.stdout.split() == ["stopped", "True"], out  # stopped once; later Ctrl-Cs still ignored
    assert out.stderr == ""  # no "Exception ignored" traceback


def test_without_the_delivery_python_loses_that_stop():
    # the case the delivery exists for (if Python ever propagates these, the delivery is moot)
    out = _run(hook=False)
    assert out.stdout.split() == ["lost"]
    assert "Exception ignored" in out.stderr and "KeyboardInterrupt" in out.stderr


@pytest.mark.parametrize("hook", [True, False])
def test_other_exceptions_in_finalizers_are_still_printed(hook):
    code = textwrap.dedent(
        f"""
        import weakref
        from dask_pdist.cli.signals import deliver_lost_interrupts
        if {hook}:
            deliver_lost_interrupts()

        class Thing:
            pass

        def callback(_):
            raise ValueError("a finalizer's own error")

        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing
        print("went on")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["went", "on"]
    assert "a finalizer's own error" in out.stderr


@pytest.mark.parametrize("first", ["SIGTERM", "SIGINT"])
def test_after_a_stop_signal_both_are_ignored(first):
    # an attack: `compute` sent SIGTERM twice 0.3 s apart exited -15 (killed) instead of 130:
    # the handler ignored only later SIGINTs, so the second SIGTERM raised again in the clean
    # stop or, once Python's shutdown had put the default back, killed the process
    code = textwrap.dedent(
        f"""
        import os, signal
        from dask_pdist.cli.signals import interrupt_once

        signal.signal(signal.SIGINT, interrupt_once)
        signal.signal(signal.SIGTERM, interrupt_once)  # as the CLI installs it, as the program
        try:
            os.kill(os.getpid(), signal.{first})
            for _ in range(1_000_000):
                pass
        except KeyboardInterrupt:
            print("stopped")
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(os.getpid(), sig)
            for _ in range(1_000_000):
                pass
        print("ignored", signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["stopped", "ignored", "True"], out
    assert out.returncode == 0 and out.stderr == ""


def test_a_caller_s_sigterm_handler_is_left_alone():
    # called from Python (not the program), only SIGINT is the CLI's: SIGTERM stays the caller's
    code = textwrap.dedent(
        """
        import signal
        from dask_pdist.cli.signals import interrupt_once

        mine = lambda signum, frame: None
        signal.signal(signal.SIGTERM, mine)
        try:
            interrupt_once(signal.SIGINT, None)
        except KeyboardInterrupt:
            print(signal.getsignal(signal.SIGTERM) is mine, signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out


def test_a_follower_stopped_mid_append_ignores_later_signals():
    # an attack: SIGTERM, then six more 10 ms apart, during a follower's append: the second
    # stopped the append (exit 130 expected), the follower's exit put interrupt_once back, and
    # a later one killed the process (-15) after Python's shutdown had set the default again
    import signal

    from dask_pdist.cli.follow import _Stop
    from dask_pdist.cli.signals import interrupt_once

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in saved:  # as the CLI installs them, as the program
            signal.signal(sig, interrupt_once)
        with pytest.raises(KeyboardInterrupt), _Stop() as stop:
            stop.appending = True
            stop._handle(signal.SIGTERM, None)  # the first: stop after this append
            assert stop.requested
            stop._handle(signal.SIGTERM, None)  # the second: stop the append now
        assert stop.forced
        # a third, while the append's job stops (its clean stop, the resume hint): ignored, not
        # one more KeyboardInterrupt in the middle of it (seen: exit -2 with no traceback)
        try:
            stop._handle(signal.SIGTERM, None)
        except KeyboardInterrupt:  # (not let through: it would end the test session)
            pytest.fail("a third signal raised KeyboardInterrupt again")
        assert [signal.getsignal(sig) for sig in saved] == [signal.SIG_IGN, signal.SIG_IGN]
        for sig in saved:  # not stopped (--idle-exit): the CLI's handlers are put back
            signal.signal(sig, interrupt_once)
        with _Stop():
            pass
        assert [signal.getsignal(sig) for sig in saved] == [interrupt_once, interrupt_once]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
