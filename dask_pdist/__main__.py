from dask_pdist.cli.main import main

raise SystemExit(main())
