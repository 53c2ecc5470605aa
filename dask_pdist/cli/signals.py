"""Stop signals for the command line: the first Ctrl-C (or, as the program, SIGTERM) stops the
job through ``KeyboardInterrupt``; later ones are ignored; and a stop is never lost.

Python runs a signal's handler between two bytecodes of the main thread, wherever it is, also
inside a weak reference's callback or a ``__del__`` (the garbage collector, an import lock's
clean-up). An exception raised there is not propagated: Python prints "Exception ignored in
..." with a traceback and goes on. A stop raised there was lost (the job ran on, later
signals ignored) and buried the job's own lines under a traceback (seen once in CI: a follower's
SIGTERM met importlib's module-lock callback). As the program, :func:`deliver_lost_interrupts`
catches that case and raises the ``KeyboardInterrupt`` again where the main thread resumes.
"""

from __future__ import annotations

import signal
import sys
import threading

__all__ = ["catch_interrupts", "deliver_lost_interrupts", "interrupt_once"]


def interrupt_once(signum, frame) -> None:  # noqa: ANN001
    """The handler: the first Ctrl-C stops the run; later ones are ignored (a second quick Ctrl-C
    used to land in the clean stop: the resume hint, the shutdown of zarr's and dask's threads,
    and print asyncio tracebacks instead of the hint). Both stop signals are ignored from then
    on: a second SIGTERM used to raise again in the clean stop, or, once Python's shutdown had
    set the default back, kill the process (exit 143 instead of 130)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if signal.getsignal(signal.SIGTERM) is interrupt_once:  # (installed as the program only)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def catch_interrupts() -> object:
    """Install :func:`interrupt_once` for SIGINT where Python's default handler is in place;
    returns the handler it replaced (None: nothing changed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None  # ignored (nohup, background job) or handled by the caller: leave it be
    return signal.signal(signal.SIGINT, interrupt_once)


def deliver_lost_interrupts() -> None:
    """As the program: a ``KeyboardInterrupt`` that a finalizer swallowed is raised again, once,
    where the main thread resumes, and the "Exception ignored" traceback is not printed. Other
    unraisable exceptions go to the hook that was in place."""
    _PREVIOUS_HOOK[0] = sys.unraisablehook
    sys.unraisablehook = _hook


_PREVIOUS_HOOK = [sys.__unraisablehook__]


def _hook(unraisable) -> None:  # noqa: ANN001
    lost_stop = isinstance(unraisable.exc_type, type) and issubclass(unraisable.exc_type, KeyboardInterrupt)
    # (signal handlers run in the main thread only: a KeyboardInterrupt elsewhere is not a stop)
    if not lost_stop or threading.current_thread() is not threading.main_thread():
        _PREVIOUS_HOOK[0](unraisable)
        return
    # A one-shot SIGINT handler that puts the present one back and raises, then "a SIGINT
    # arrived", from another thread: Python runs the handler at the main thread's next check.
    # The present handler is kept as it is: SIG_IGN after interrupt_once, or a follower's, whose
    # state already counts the signal that was lost.
    present = signal.getsignal(signal.SIGINT)
    if present is None:  # (installed outside Python: put the default back)
        present = signal.SIG_DFL

    def once(signum, frame) -> None:  # noqa: ANN001
        if _inside_hook(frame):  # (the check came before this hook returned: not yet)
            _interrupt_from_a_thread()
            return
        signal.signal(signal.SIGINT, present)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, once)
    _interrupt_from_a_thread()


def _inside_hook(frame) -> bool:  # noqa: ANN001
    while frame is not None:
        if frame.f_code is _hook.__code__:
            return True
        frame = frame.f_back
    return False


def _interrupt_from_a_thread() -> None:
    # Not from this thread: Python would run the handler at once, inside this hook (whose own
    # exceptions are swallowed too). A bare thread: threading.Thread.start waits for it, and
    # that wait could run the handler here again.
    import _thread

    _thread.start_new_thread(_thread.interrupt_main, (signal.SIGINT,))
