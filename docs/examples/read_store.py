import xarray as xr

import dask_pdist as dp

ds = dp.open_distances("d.zarr")  # lazy; xr.open_zarr("d.zarr") opens it too
print(ds.sizes, ds.step.values)
d = ds.euclidean.sel(step=12)  # one step: a (token_i, token_j) DataArray
print(d.sel(token_i=5, token_j=[6, 7, 8]).values)
nearest = int(d.sel(token_i=5).drop_sel(token_j=5).idxmin("token_j"))
print("nearest token to 5 at step 12:", nearest)
print(ds.chebyshev.sel(step=slice(6, 12), token_i=5).mean("token_j").values)
print(xr.open_zarr("d.zarr").euclidean.shape)
