"""The built-in GPU catalog: memory as CUDA programs see it, features, and default prices.

Memory: ``memory_mib`` is what nvidia-smi (and the GPU-feature-discovery label ``nvidia.com/gpu.memory``)
reports. CUDA programs see a little less: on an H100 80GB HBM3 nvidia-smi says 81,559 MiB while
``torch.cuda.mem_get_info()`` reports 79.19 GiB (81,089 MiB) — the driver keeps ~470 MiB. vLLM sizes its
budget from the CUDA figure, so the planner does too (``DRIVER_RESERVED_BYTES`` below, measured on H100 and
applied to every product).

Prices: assumed on-demand USD per GPU-hour (public list prices of large clouds in 2025, per GPU of an 8-GPU
instance where one exists). They are defaults for ``estimate_cost`` only; callers override them with
``prices={"H100-80GB": 4.0}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.units import GIB, MIB

# nvidia-smi total (81,559 MiB) minus CUDA-visible total (79.19 GiB = 81,089 MiB) on H100 80GB HBM3,
# from the vLLM 0.19 startup logs in shared/calibration/vllm_measured.csv.
DRIVER_RESERVED_BYTES = 470 * MIB


@dataclass(frozen=True)
class GPUSpec:
    """One GPU product."""

    name: str
    """Short catalog name, e.g. ``H100-80GB``."""
    products: tuple[str, ...]
    """Product strings as GPU-feature-discovery writes them (``nvidia.com/gpu.product``) and other aliases."""
    memory_mib: int
    """Total memory as nvidia-smi reports it, in MiB."""
    architecture: str
    """Family name (``hopper``, ``ampere`` ...)."""
    compute_capability: str
    """CUDA compute capability (``9.0``), or the ROCm target for AMD parts."""
    price_per_hour_usd: float
    """Assumed on-demand price of one GPU for one hour."""
    nvlink: bool
    """Whether GPUs of a node talk over NVLink/xGMI (SXM/OAM parts) rather than PCIe only."""
    resource: str = "nvidia.com/gpu"
    """The extended resource the device plugin advertises."""

    @property
    def usable_bytes(self) -> int:
        """Memory a CUDA program can allocate (what vLLM multiplies by ``gpu_memory_utilization``)."""
        return self.memory_mib * MIB - DRIVER_RESERVED_BYTES

    def has_memory(self, memory_gib: float) -> bool:
        """Whether a stated memory size names this product: anything from CUDA's usable GiB (less 1) to the
        marketing size in decimal GB (plus 1) — an H100 is "80", "79.19" or "85"; an L4 "24" or "22.5"."""
        return self.usable_bytes / GIB - 1 <= memory_gib <= self.memory_mib * MIB / 1e9 + 1

    @property
    def supports_fp8(self) -> bool:
        """Native fp8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell (10.0) and MI300 (gfx942)."""
        if self.compute_capability.startswith("gfx"):
            return self.compute_capability >= "gfx942"
        return float(self.compute_capability) >= 8.9

    @property
    def supports_bf16(self) -> bool:
        """bfloat16 needs Ampere (8.0) or newer."""
        return self.compute_capability.startswith("gfx") or float(self.compute_capability) >= 8.0


GPU_CATALOG: tuple[GPUSpec, ...] = (
    GPUSpec("T4", ("Tesla-T4", "NVIDIA-T4"), 15360, "turing", "7.5", 0.53, False),
    GPUSpec("V100-32GB", ("Tesla-V100-SXM2-32GB", "V100"), 32768, "volta", "7.0", 3.06, True),
    GPUSpec("A10G", ("NVIDIA-A10G", "A10"), 23028, "ampere", "8.6", 1.01, False),
    GPUSpec("L4", ("NVIDIA-L4",), 23034, "ada-lovelace", "8.9", 0.80, False),
    GPUSpec("L40S", ("NVIDIA-L40S",), 46068, "ada-lovelace", "8.9", 1.86, False),
    GPUSpec(
        "A100-40GB",
        ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB", "A100"),
        40960,
        "ampere",
        "8.0",
        4.10,
        True,
    ),
    GPUSpec("A100-80GB", ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"), 81920, "ampere", "8.0", 5.12, True),
    GPUSpec("H100-80GB", ("NVIDIA-H100-80GB-HBM3", "H100-SXM", "H100"), 81559, "hopper", "9.0", 6.88, True),
    GPUSpec("H100-PCIe", ("NVIDIA-H100-PCIe",), 81559, "hopper", "9.0", 4.76, False),
    GPUSpec("H100-NVL", ("NVIDIA-H100-NVL",), 95830, "hopper", "9.0", 5.50, True),
    GPUSpec("H200", ("NVIDIA-H200", "NVIDIA-H200-141GB-HBM3e"), 143771, "hopper", "9.0", 10.60, True),
    GPUSpec("B200", ("NVIDIA-B200",), 183359, "blackwell", "10.0", 14.24, True),
    GPUSpec("MI300X", ("AMD-Instinct-MI300X", "AMD-MI300X"), 196592, "cdna3", "gfx942", 6.00, True, "amd.com/gpu"),
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY: dict[str, GPUSpec] = {}
for _spec in GPU_CATALOG:
    for _alias in (_spec.name, *_spec.products):
        _BY_KEY.setdefault(_key(_alias), _spec)


def find_gpu(name: str, memory_gib: float | None = None) -> GPUSpec | None:
    """The catalog entry for a catalog name, GFD product string or alias (case and punctuation ignored).

    With ``memory_gib`` the entry must also have that nominal memory, and a family name picks the matching
    product: ``A100`` with 80 GiB is the A100-80GB, with 40 GiB the A100-40GB, with 48 GiB none.
    """
    key = _key(name)
    exact = _BY_KEY.get(key)
    if memory_gib is None:
        return exact
    family = [spec for spec in GPU_CATALOG if _key(spec.name).startswith(key)]
    return next((s for s in (exact, *family) if s is not None and s.has_memory(memory_gib)), None)


def lookup_gpu(name: str, field: str = "gpu_type") -> GPUSpec:
    """Like :func:`find_gpu` but raises a clear error listing the known names."""
    spec = find_gpu(name)
    if spec is None:
        known = ", ".join(g.name for g in GPU_CATALOG)
        raise InvalidConfigurationError(
            f"{field}: unknown GPU {name!r}; known GPUs are {known} (or give gpu_memory_gb explicitly)"
        )
    return spec
