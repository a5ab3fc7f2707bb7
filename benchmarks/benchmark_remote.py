"""asv: volumes on S3 (moto's server on 127.0.0.1, started per benchmark): a block read of the
whole volume through emarray's engine against a plain dask read of the same store, and a
threshold S3 -> S3. The side-by-side figures are ``benchmarks/remote_compare.py``'s."""
from __future__ import annotations

import os
import uuid

import numpy as np


class RemoteRead:
    timeout = 300

    def setup(self):
        from benchmarks.remote_compare import make_input, start_moto
        self.server, endpoint = start_moto()
        self.env = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                   "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        from emarray import storage
        bucket = f"asv-{uuid.uuid4().hex[:8]}"
        storage.filesystem(f"s3://{bucket}")[0].mkdir(bucket)
        self.url = f"s3://{bucket}/raw.zarr"
        make_input(self.url, (64, 256, 256), (32, 128, 128))

    def teardown(self):
        self.server.terminate()
        for k, v in self.env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def time_emarray_read(self):
        import emarray
        from emarray.engine import reduce_blocks
        reduce_blocks(lambda ctx, b: float(np.sum(b, dtype=np.float64)),
                      [emarray.open_volume(self.url)], lambda a, b: a + b, progress=False)

    def time_dask_read(self):
        import dask.array as da
        import zarr

        import emarray
        from emarray import storage
        vol = emarray.open_volume(self.url)
        float(da.from_zarr(zarr.open_array(storage.store(vol.array_url), mode="r")).sum()
              .compute(scheduler="threads"))

    def time_threshold_s3_to_s3(self):
        import emarray
        emarray.threshold(self.url, self.url.replace("raw", "mask"), 0.5, overwrite=True,
                          progress=False)
