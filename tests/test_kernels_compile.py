"""Every .cu file compiles with nvcc for sm_80 and sm_90, every instantiation, warnings as errors.

Runs wherever nvcc is installed (no GPU needed); skipped only where it is not.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from emarray.kernel_table import FAMILIES

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


def test_every_cu_file_has_an_instantiation_table():
    assert sorted(p.name for p in KERNELS.glob("*.cu")) == sorted(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_nvcc_compiles_all_instantiations(tmp_path, family):
    names = FAMILIES[family]
    # taking each kernel's address forces nvcc to instantiate exactly what NVRTC will
    wrapper = tmp_path / f"check_{family}"
    wrapper.write_text(
        f'#include "{family}"\n'
        "void* emarray_all_instantiations[] = {\n"
        + "".join(f"  (void*)&{n},\n" for n in names) + "};\n")
    # NVRTC's options for these modules (emarray.cuda.modules.OPTIONS) where nvcc has them
    cmd = [NVCC, "-std=c++17", "-ftz=false", "-fmad=false", "-prec-div=true", "-prec-sqrt=true",
           "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Werror",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           "-I", str(KERNELS), "-c", str(wrapper), "-o", str(tmp_path / "out.o"),
           "--keep", "--keep-dir", str(tmp_path)]  # (keeps the PTX of each architecture)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # every instantiation really is emitted: count the kernel entries in each PTX
    for arch in ("compute_80", "compute_90"):
        ptx = tmp_path / f"check_{Path(family).stem}.{arch}.ptx"
        entries = [ln for ln in ptx.read_text().splitlines() if ".entry" in ln]
        assert len(entries) == len(names), arch


def test_a_warning_fails_the_check(tmp_path):
    """The flags above really turn warnings into errors (so the check can fail)."""
    bad = tmp_path / "bad.cu"
    bad.write_text("__global__ void k(int* p) { int unused = 3; p[0] = 1; }\n")
    r = subprocess.run([NVCC, "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Werror",
                        "-gencode", "arch=compute_80,code=sm_80", "-c", str(bad), "-o",
                        str(tmp_path / "bad.o")], capture_output=True, text=True)
    assert r.returncode != 0
