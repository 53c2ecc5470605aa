"""The job runner (store/job.py): one way to run a planned computation: scheduler, progress bar,
and what happens when it stops."""

from __future__ import annotations

import subprocess
import sys
import threading

import dask
import pytest

from dask_pdist.errors import InputError
from dask_pdist.store.job import Job, local_scheduler


def _fail(exc: BaseException):  # noqa: ANN202
    def task(_):  # noqa: ANN001, ANN202
        raise exc

    return dask.delayed(task)(1)


def test_execute_returns_the_result_and_shows_the_bar_only_when_asked(capsys):
    assert Job(dask.delayed(sum)([1, 2]), desc="adding").execute(progress=False) == 3
    assert capsys.readouterr().err == ""
    assert Job(dask.delayed(sum)([1, 2]), desc="adding").execute(progress=True) == 3
    assert "adding" in capsys.readouterr().err


def test_a_failed_job_calls_on_stop_and_clears_its_bar(capsys):
    stopped = []
    with pytest.raises(RuntimeError, match="disk gone"):
        Job(_fail(RuntimeError("disk gone")), desc="writing", on_stop=stopped.append).execute(progress=True)
    assert [str(e) for e in stopped] == ["disk gone"]


def test_on_stop_runs_only_when_every_task_the_job_started_has_ended():
    # dask raises a failed task's error while the others still run; on_stop (which releases a
    # store's lock) must not run before they end, or they write into a store no longer held
    started, ended = threading.Event(), threading.Event()

    def running(_):  # noqa: ANN001, ANN202
        started.set()
        ended.wait(timeout=1.0)  # set by on_stop when it runs too early, else ends after a second
        ended.set()

    def failing(_):  # noqa: ANN001, ANN202
        started.wait(timeout=30)
        raise RuntimeError("failed")

    seen = []
    work = [dask.delayed(running)(0), dask.delayed(failing)(1)]
    with dask.config.set(num_workers=2), pytest.raises(RuntimeError, match="failed"):
        Job(dask.delayed(list)(work), on_stop=lambda exc: seen.append(ended.is_set()) or ended.set() or "").execute(
            progress=False
        )
    assert seen == [True]


def test_a_stop_by_the_input_carries_the_note_of_on_stop():
    with pytest.raises(InputError, match=r"NaN at step 3; 2 of 5 blocks kept") as info:
        Job(_fail(InputError("NaN at step 3")), on_stop=lambda exc: "2 of 5 blocks kept").execute(progress=False)
    assert isinstance(info.value.__cause__, InputError)


def test_an_interruption_is_recorded_then_propagates():
    stopped = []
    with pytest.raises(KeyboardInterrupt):
        Job(_fail(KeyboardInterrupt()), on_stop=lambda exc: stopped.append(type(exc)) or "").execute(progress=False)
    assert stopped == [KeyboardInterrupt]


def test_the_local_scheduler_does_not_import_dask_distributed():
    code = (
        "import sys, dask\n"
        "from dask_pdist.store.job import Job\n"
        "assert Job(dask.delayed(len)('abc')).execute(progress=False) == 3\n"
        "print('distributed' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_configured_scheduler_is_dask_s_choice():
    with dask.config.set(scheduler="sync"):
        assert local_scheduler() == {}
    if "distributed" not in sys.modules:
        assert local_scheduler()["scheduler"] is dask.threaded.get
