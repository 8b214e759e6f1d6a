"""A stand-in for nvidia-ml-py's `pynvml`, put first on PYTHONPATH by tests/runtime/
test_gpus.py so the runtime's detection (runtime.node.gpus) meets NVML answering for GPUs this
machine does not have. It answers what detection asks: nvmlInit, nvmlShutdown,
nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetName,
nvmlDeviceGetMemoryInfo, nvmlDeviceGetUUID.

FAKE_NVML_GPUS: JSON list of [name, memory bytes] (default: two "NVIDIA A100-SXM4-40GB").
FAKE_NVML_MODE=unavailable: nvmlInit fails as on a machine without the driver library
(so detection falls back to nvidia-smi)."""
import json
import os
from types import SimpleNamespace


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_Uninitialized(NVMLError):
    pass


_state = {"initialized": False}


def _gpus():
    text = os.environ.get("FAKE_NVML_GPUS")
    return json.loads(text) if text else [["NVIDIA A100-SXM4-40GB", 40 << 30]] * 2


def nvmlInit():
    if os.environ.get("FAKE_NVML_MODE") == "unavailable":
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
    _state["initialized"] = True


def nvmlShutdown():
    _check()
    _state["initialized"] = False


def _check():
    if not _state["initialized"]:
        raise NVMLError_Uninitialized("Uninitialized")


def nvmlDeviceGetCount():
    _check()
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index):
    _check()
    if not 0 <= index < len(_gpus()):
        raise NVMLError("Invalid Argument")
    return SimpleNamespace(index=index)


def nvmlDeviceGetName(handle):
    _check()
    return _gpus()[handle.index][0]


def nvmlDeviceGetMemoryInfo(handle):
    _check()
    total = _gpus()[handle.index][1]
    return SimpleNamespace(total=total, free=total, used=0)


def nvmlDeviceGetUUID(handle):
    _check()
    return f"GPU-{handle.index:08x}-fake-0000-0000-000000000000"
