"""Byte units. The planner computes in integer bytes and converts to GiB only at the API edge."""

GIB = 1 << 30
MIB = 1 << 20
KIB = 1 << 10


def to_gib(num_bytes: float, digits: int = 2) -> float:
    """Bytes → GiB, rounded for display (vLLM and nvidia-smi count GiB as 2**30 bytes)."""
    return round(num_bytes / GIB, digits)


def from_gib(gib: float) -> int:
    """GiB → whole bytes."""
    return round(gib * GIB)


def human_bytes(num_bytes: float) -> str:
    """A short human string such as ``71.3 GiB`` or ``512.0 MiB``."""
    if abs(num_bytes) >= GIB:
        return f"{num_bytes / GIB:.1f} GiB"
    return f"{num_bytes / MIB:.1f} MiB"
