"""The NVIDIA GPUs of a node: finding them at `corral start` (and for the embedded runtime
of init()), naming their model, and the GPU ids a worker process runs with.

Finding: NVML through nvidia-ml-py (module `pynvml`) first; where NVML is unavailable
(the package is missing or the driver library cannot be loaded), `nvidia-smi
--query-gpu=index,name,memory.total --format=csv,noheader`; neither answering means no
GPUs. A CUDA_VISIBLE_DEVICES already set on the node limits the offer to the GPUs it
names, under the names it uses (indices, or UUIDs when NVML can tell them).

The node then advertises `GPU: <count>` and `accelerator_type:<model>: 1` (the model of
its first offered GPU, e.g. "A100", "T4", "H100"), unless --num-gpus, --resources or a
node type's `resources` (CORRAL_NODE_RESOURCES) say otherwise: a configured count takes
that many of the found GPUs' ids, or ids 0..n-1 where too few were found.

In a worker: the node agent tells it the ids of the task or actor it runs; assign()
puts them into CUDA_VISIBLE_DEVICES (or removes it for work without GPUs) and
get_gpu_ids() returns them, as Ray's ray.get_gpu_ids() does."""
from __future__ import annotations

import csv
import itertools
import logging
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

log = logging.getLogger("corral.gpus")

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
NVIDIA_SMI_QUERY = ["--query-gpu=index,name,memory.total", "--format=csv,noheader"]
NVIDIA_SMI_TIMEOUT_S = 10.0
ACCELERATOR_TYPE_PREFIX = "accelerator_type:"
BRAND_WORDS = ("NVIDIA", "Tesla")           # leading words that say nothing of the model
MEMORY_UNITS_BYTES = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}


@dataclass(frozen=True)
class Gpu:
    """One GPU a node may offer. `id` is what CUDA_VISIBLE_DEVICES calls it: its index,
    or the entry of the node's own CUDA_VISIBLE_DEVICES that named it."""
    id: str
    name: str                  # as the driver reports it, "NVIDIA A100-SXM4-40GB"
    memory_bytes: int
    uuid: str | None = None    # "GPU-8f3c...", known through NVML only


@dataclass(frozen=True)
class GpuOffer:
    """What a node offers: the ids the agent hands out, and the resources detection adds
    beneath what flags and the node type configure."""
    ids: list
    resources: dict


# ---------------------------------------------------------------- finding the GPUs

def detect_gpus(environ: dict | None = None) -> list[Gpu]:
    """This machine's NVIDIA GPUs, limited to those its CUDA_VISIBLE_DEVICES names.
    [] when there are none or neither NVML nor nvidia-smi can say."""
    environ = os.environ if environ is None else environ
    found = _from_nvml()
    if found is None:
        found = _from_nvidia_smi(environ.get("PATH"))
    return visible(found, environ.get(CUDA_VISIBLE_DEVICES))


def _from_nvml() -> list[Gpu] | None:
    """None when NVML cannot be used here (so nvidia-smi is asked instead)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:   # e.g. no driver library on this machine
        log.debug("NVML unavailable: %s", error)
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(Gpu(str(index), _text(pynvml.nvmlDeviceGetName(handle)),
                            int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                            _nvml_uuid(pynvml, handle)))
        return gpus
    except pynvml.NVMLError as error:
        log.warning("NVML failed while listing GPUs (%s); asking nvidia-smi", error)
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as error:
            log.debug("nvmlShutdown: %s", error)


def _nvml_uuid(pynvml, handle) -> str | None:
    getter = getattr(pynvml, "nvmlDeviceGetUUID", None)
    if getter is None:
        return None
    try:
        return _text(getter(handle))
    except pynvml.NVMLError:
        return None


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _from_nvidia_smi(path: str | None) -> list[Gpu]:
    program = shutil.which("nvidia-smi", path=path)
    if program is None:
        return []
    try:
        result = subprocess.run([program, *NVIDIA_SMI_QUERY], capture_output=True,
                                text=True, timeout=NVIDIA_SMI_TIMEOUT_S,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("nvidia-smi did not answer (%s): no GPUs offered", error)
        return []
    if result.returncode != 0:
        log.warning("nvidia-smi exited with %s (%s): no GPUs offered", result.returncode,
                    (result.stderr or result.stdout).strip()[-300:])
        return []
    return parse_nvidia_smi_csv(result.stdout)


def parse_nvidia_smi_csv(text: str) -> list[Gpu]:
    """Rows "0, NVIDIA A100-SXM4-40GB, 40960 MiB" -> Gpus; rows that are not of that
    form are skipped (logged)."""
    gpus = []
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if not row:
            continue
        if len(row) < 2 or not row[0].strip().isdigit():
            log.warning("nvidia-smi: cannot read the row %r", ",".join(row))
            continue
        memory = row[2] if len(row) > 2 else ""
        gpus.append(Gpu(row[0].strip(), row[1].strip(), memory_bytes(memory)))
    return gpus


def memory_bytes(text: str) -> int:
    """"40960 MiB" -> bytes; 0 when nvidia-smi does not know ("[N/A]")."""
    parts = text.split()
    try:
        amount = float(parts[0])
    except (IndexError, ValueError):
        return 0
    unit = parts[1].upper() if len(parts) > 1 else "MIB"
    return int(amount * MEMORY_UNITS_BYTES.get(unit, 1 << 20))


def visible(gpus: list[Gpu], cuda_visible_devices: str | None) -> list[Gpu]:
    """The GPUs the node's CUDA_VISIBLE_DEVICES names, in its order and under its names
    (unset: all of them; "" or "NoDevFiles": none). An entry naming no found GPU is
    left out, with a warning."""
    if cuda_visible_devices is None:
        return list(gpus)
    chosen, taken = [], set()
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if not entry or entry == "NoDevFiles":
            continue
        gpu = next((g for g in gpus if g.id == entry or
                    (g.uuid and entry.startswith("GPU-") and g.uuid.startswith(entry))),
                   None)
        if gpu is None:
            log.warning("CUDA_VISIBLE_DEVICES names %r, which is not a GPU found on this "
                        "node: not offered", entry)
        elif gpu.id not in taken:     # named twice: offered once
            taken.add(gpu.id)
            chosen.append(Gpu(entry, gpu.name, gpu.memory_bytes, gpu.uuid))
    return chosen


# ---------------------------------------------------------------- what the node offers

def accelerator_type(name: str | None) -> str | None:
    """A GPU model as a resource name: the words up to and including the first one with
    a digit, brand words dropped, the first such word cut at its SKU suffix, joined by
    "-": "NVIDIA A100-SXM4-40GB" -> "A100", "Tesla T4" -> "T4", "NVIDIA H100 80GB HBM3"
    -> "H100", "NVIDIA GeForce RTX 4090" -> "GeForce-RTX-4090"."""
    words = (name or "").split()
    while words and words[0] in BRAND_WORDS:
        words = words[1:]
    model = []
    for word in words:
        if any(c.isdigit() for c in word):
            model.append(word.split("-", 1)[0] or word)
            break
        model.append(word)
    text = re.sub(r"[^A-Za-z0-9_.-]", "", "-".join(model))
    return text or None


def offer(gpus: list[Gpu], configured: float | None) -> GpuOffer:
    """The ids and default resources for the found `gpus`, when flags or the node type
    configure `configured` GPUs (None: not configured, offer what was found)."""
    if configured is None:
        ids = [g.id for g in gpus]
    else:
        count = math.ceil(configured)
        ids = [g.id for g in gpus][:count]
        spare = (str(n) for n in itertools.count() if str(n) not in ids)
        if gpus and len(ids) < count:
            log.warning("%s GPUs configured but only %d found: the next free numbers "
                        "stand for the others", configured, len(gpus))
        while len(ids) < count:
            ids.append(next(spare))
    resources = {"GPU": float(len(ids))} if ids else {}
    offered = [g for g in gpus if g.id in ids]
    model = accelerator_type(offered[0].name) if offered else None
    if model:
        resources[ACCELERATOR_TYPE_PREFIX + model] = 1.0
    return GpuOffer(ids, resources)


# ---------------------------------------------------------------- inside a worker

_assigned: list = []


def assign(ids) -> None:
    """This worker process runs with these GPU ids now: CUDA_VISIBLE_DEVICES names them,
    or is removed when there are none (a task without GPUs sees no GPU variable, even
    in a worker whose previous task had GPUs)."""
    global _assigned
    _assigned = [str(i) for i in ids]
    if _assigned:
        os.environ[CUDA_VISIBLE_DEVICES] = ",".join(_assigned)
    else:
        os.environ.pop(CUDA_VISIBLE_DEVICES, None)


def get_gpu_ids() -> list:
    """The GPU ids given to the running task or actor (ints where they are indices, else
    the strings CUDA_VISIBLE_DEVICES uses); [] outside tasks and for work without
    GPUs."""
    return [int(i) if i.isdigit() else i for i in _assigned]
