"""dask.distributed: worker processes (pickled graph) give bit-identical results."""

from __future__ import annotations

import distributed
import numpy as np
import pytest

from conftest import random_history
from dask_pdist import open_distances, open_history, pairwise_distances, to_zarr
from dask_pdist.cli.main import main

pytestmark = pytest.mark.slow  # starts dask.distributed clusters of processes


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        yield c


def test_local_cluster_with_processes_is_bit_identical(cluster, write_safetensors, tmp_path):
    x = random_history((41, 17, 9), scale=0.3)
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "BF16")
    ds = pairwise_distances(open_history(path, chunks=6))
    local = ds.compute(scheduler="sync")
    with distributed.Client(cluster) as client:
        delayed = to_zarr(ds, tmp_path / "d.zarr", compute=False)
        client.compute(delayed).result()
    back = open_distances(tmp_path / "d.zarr")
    np.testing.assert_array_equal(back.euclidean.values, local.euclidean.values)
    np.testing.assert_array_equal(back.chebyshev.values, local.chebyshev.values)


def test_cli_scheduler_option(cluster, tmp_path, capsys):
    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "30", "--vocab", "12", "--dim", "5"])
    assert main(["compute", str(src), "-o", str(tmp_path / "a.zarr"), "--no-progress"]) == 0
    assert (
        main(
            [
                "compute",
                str(src),
                "-o",
                str(tmp_path / "b.zarr"),
                "--chunk-steps",
                "4",
                "--scheduler",
                cluster.scheduler_address,
            ]
        )
        == 0
    )
    a, b = open_distances(tmp_path / "a.zarr"), open_distances(tmp_path / "b.zarr")
    np.testing.assert_array_equal(a.euclidean.values, b.euclidean.values)
    np.testing.assert_array_equal(a.chebyshev.values, b.chebyshev.values)
