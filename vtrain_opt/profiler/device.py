"""What the device is: its name, memory, cores/SMs, versions, and its GPU catalog entry."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from typing import Any

from vtrain_opt.spec.hardware import gpu_names

DEVICES = ("cuda", "cpu")

# Reported names (torch.cuda.get_device_name) of the catalog's GPUs, with their SM count
# to tell SXM parts from PCIe ones (an H100 PCIe has 114 SMs and lower peaks).
_CATALOG_PATTERNS = (
    (r"H200", "h200"),
    (r"H100.*(SXM|HBM3)|H100 80GB HBM3", "h100-sxm"),
    (r"B200", "b200"),
    (r"A100.*80\s*GB", "a100-80gb"),
    (r"A100.*40\s*GB|A100-SXM4-40GB", "a100-40gb"),
    (r"V100.*32\s*GB", "v100-32gb"),
)


def resolve_device(torch: Any, name: str | None) -> Any:
    """The torch device to profile: --device, else CUDA when visible, else the CPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in DEVICES:
        raise ValueError(f"--device {name!r}: allowed: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ValueError(
            f"--device cuda: no CUDA device is visible to torch {torch.__version__} ({build}); "
            "use --device cpu, or install a CUDA build of torch on a machine with a GPU"
        )
    return torch.device(name, 0) if name == "cuda" else torch.device("cpu")


def catalog_gpu(reported_name: str, num_sms: int | None) -> str | None:
    """The catalog name of a CUDA device, or None when it is not one of the catalog's."""
    from vtrain_opt.spec.hardware import get_gpu

    for pattern, key in _CATALOG_PATTERNS:
        if (
            re.search(pattern, reported_name, re.IGNORECASE)
            and key in gpu_names()
            and (num_sms is None or get_gpu(key).num_sms == num_sms)
        ):
            return key
    return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def host_cpu() -> str:
    """The host's processor, for the sources of host-side measurements."""
    return f"{_cpu_name()}, {os.cpu_count()} logical CPUs, host {platform.node()}"


def _total_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0.0


def _driver_version() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def describe(torch: Any, device: Any) -> dict[str, Any]:
    """Facts about the device and the software, for the profile's provenance."""
    info: dict[str, Any] = {
        "kind": device.type,
        "torch": torch.__version__,
        "host": platform.node(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            memory_bytes=float(props.total_memory),
            num_sms=int(props.multi_processor_count),
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            driver=_driver_version(),
            devices_visible=torch.cuda.device_count(),
        )
        info["catalog_gpu"] = catalog_gpu(info["name"], info["num_sms"])
    else:
        threads = torch.get_num_threads()
        info.update(
            name=f"{_cpu_name()} ({threads} threads)",
            memory_bytes=_total_memory_bytes(),
            num_sms=threads,
            cpu_count=os.cpu_count(),
            catalog_gpu=None,
        )
    return info
