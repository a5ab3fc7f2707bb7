"""The CUDA backend: CuPy + the kernels in ``kernels/``. Imported only when CUDA is asked for."""
