"""The ``dask-pdist`` command line: parse, call one public function, print. Heavy imports
happen inside each subcommand so that ``dask-pdist --help`` stays fast."""

from dask_pdist.cli.main import main

__all__ = ["main"]
