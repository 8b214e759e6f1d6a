"""GPUs: detection (runtime.node.gpus), the id allocator (runtime.agent.gpu_ids), and tasks and
actors running with their own CUDA_VISIBLE_DEVICES.

This machine has no GPU, so the runtime meets fakes of what it asks: a `pynvml` module
on PYTHONPATH (tests/runtime/gpu_fakes/pynvml.py; two A100s, or NVML "unavailable") and
an `nvidia-smi` script on PATH printing two T4s. Each end-to-end test runs a driver
program as its own process with that environment; its embedded runtime (init())
detects the fakes. The driver gets a private TMPDIR, so whatever runtime it started is
found and stopped by pid afterwards even when it hung or was killed."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import pytest

from runtime import scheduling
from runtime.node import gpus
from runtime.node import session
from runtime.agent.gpu_ids import GpuIds, default_ids, ids_of

REPO = Path(__file__).resolve().parents[2]
FAKES = Path(__file__).resolve().parent / "gpu_fakes"
SMI_QUERY = " ".join(gpus.NVIDIA_SMI_QUERY)
FAKE_SMI = f"""#!/bin/sh
# a stand-in for nvidia-smi: two T4s, for the query runtime.node.gpus makes (anything else fails)
if [ "$*" != "{SMI_QUERY}" ]; then echo "unexpected arguments: $*" >&2; exit 2; fi
echo "0, Tesla T4, 15360 MiB"
echo "1, Tesla T4, 15360 MiB"
"""


# ---------------------------------------------------------------- allocator (pure)

def test_whole_gpu_requests_take_distinct_free_ids():
    ids = GpuIds(["0", "1", "2"])
    first, second = ids.take(1), ids.take(2)
    assert ids_of(first) == ["0"] and ids_of(second) == ["1", "2"]
    assert ids.take(1) is None and ids.take(0) == ()
    ids.give_back(second)
    assert ids_of(ids.take(2)) == ["1", "2"]


def test_fractions_pack_onto_one_id_before_using_another():
    ids = GpuIds(["0", "1"])
    halves = [ids.take(0.5) for _ in range(2)]
    assert [ids_of(h) for h in halves] == [["0"], ["0"]]
    assert ids_of(ids.take(0.25)) == ["1"]
    assert ids_of(ids.take(0.5)) == ["1"]      # the fullest id with room, not a free one
    assert ids.in_use() == {"0": 1.0, "1": 0.75}
    assert ids.take(0.5) is None and ids_of(ids.take(0.25)) == ["1"]


def test_whole_request_skips_an_id_with_fractions_on_it():
    ids = GpuIds(["0", "1"])
    quarter = ids.take(0.25)
    assert ids_of(ids.take(1)) == ["1"]
    assert ids.take(1) is None                 # 1.75 GPU free in total, no whole id
    ids.give_back(quarter)
    assert ids_of(ids.take(1)) == ["0"] and ids.in_use() == {"0": 1.0, "1": 1.0}


def test_mixed_request_and_many_small_fractions():
    ids = GpuIds(["a", "b"])
    assert ids.take(1.5) == (("a", 1.0), ("b", 0.5))
    tenths = [ids.take(0.1) for _ in range(5)]
    assert all(ids_of(t) == ["b"] for t in tenths) and ids.take(0.1) is None
    for tenth in tenths:
        ids.give_back(tenth)
    assert ids.in_use() == {"a": 1.0, "b": 0.5}


def test_default_ids_cover_a_configured_count():
    assert default_ids(0) == [] and default_ids(2) == ["0", "1"]
    assert default_ids(1.5) == ["0", "1"]


# ---------------------------------------------------------------- detection (in process)

def test_accelerator_type_names_the_model():
    cases = {"NVIDIA A100-SXM4-40GB": "A100", "Tesla T4": "T4", "NVIDIA H100 80GB HBM3":
             "H100", "Tesla V100-SXM2-16GB": "V100", "NVIDIA A10G": "A10G", "NVIDIA L4":
             "L4", "NVIDIA GeForce RTX 4090": "GeForce-RTX-4090", "NVIDIA RTX A6000":
             "RTX-A6000", "NVIDIA GH200 480GB": "GH200", "": None}
    assert {name: gpus.accelerator_type(name) for name in cases} == cases


def test_nvidia_smi_csv_and_memory():
    text = "0, Tesla T4, 15360 MiB\nwhat\n\n1, NVIDIA L4, [N/A]\n"
    rows = gpus.parse_nvidia_smi_csv(text)
    assert rows == [gpus.Gpu("0", "Tesla T4", 15360 << 20), gpus.Gpu("1", "NVIDIA L4", 0)]


def _found(count=3):
    return [gpus.Gpu(str(i), "NVIDIA H100 80GB HBM3", 80 << 30, f"GPU-{i}abc")
            for i in range(count)]


def test_node_cuda_visible_devices_limits_the_offer():
    found = _found()
    assert [g.id for g in gpus.visible(found, None)] == ["0", "1", "2"]
    assert [g.id for g in gpus.visible(found, "2,0")] == ["2", "0"]
    assert [g.id for g in gpus.visible(found, "GPU-1,9,2,2")] == ["GPU-1", "2"]
    assert gpus.visible(found, "") == [] and gpus.visible(found, "NoDevFiles") == []


def test_offer_follows_a_configured_count():
    found = _found(2)
    assert gpus.offer(found, None) == gpus.GpuOffer(
        ["0", "1"], {"GPU": 2.0, "accelerator_type:H100": 1.0})
    assert gpus.offer(found, 1).ids == ["0"]
    assert gpus.offer(found, 3).ids == ["0", "1", "2"]
    assert gpus.offer([], 2) == gpus.GpuOffer(["0", "1"], {"GPU": 2.0})
    assert gpus.offer([], None) == gpus.GpuOffer([], {})


def test_configured_resources_win_over_detected_ones():
    detected = {"GPU": 2.0, "accelerator_type:T4": 1.0}
    assert scheduling.configured("GPU", None, None, {"CPU": 4}) is None
    assert scheduling.configured("GPU", 1, {"GPU": 3}, {"GPU": 2}) == 3.0
    assert scheduling.configured("GPU", 1, None, {"GPU": 2}) == 1.0
    assert scheduling.configured("GPU", None, {}, {"GPU": 0}) == 0.0
    assert scheduling.node_resources(None, None, None, {"GPU": 1}, 4, detected) == \
        {"CPU": 4.0, "GPU": 1.0, "accelerator_type:T4": 1.0}
    assert scheduling.node_resources(2, None, None, None, 4, detected) == \
        {"CPU": 2.0, "GPU": 2.0, "accelerator_type:T4": 1.0}


def test_lending_keeps_the_gpus():
    shape = {"CPU": 1.0, "GPU": 0.5, "disk": 1.0}
    assert scheduling.lendable(shape) == {"CPU": 1.0, "disk": 1.0}
    assert scheduling.kept_while_blocked(shape) == {"GPU": 0.5}
    assert scheduling.kept_while_blocked({"CPU": 1.0}) == {}


def _fake_pynvml(monkeypatch, **env):
    spec = {"__name__": "pynvml", "__file__": str(FAKES / "pynvml.py")}
    module = types.ModuleType("pynvml")
    module.__dict__.update(spec)
    exec(compile((FAKES / "pynvml.py").read_text(), spec["__file__"], "exec"),
         module.__dict__)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(sys.modules, "pynvml", module)


def test_detect_through_nvml(monkeypatch):
    _fake_pynvml(monkeypatch, FAKE_NVML_GPUS=json.dumps([["Tesla T4", 16 << 30]] * 3))
    found = gpus.detect_gpus({"PATH": "", "CUDA_VISIBLE_DEVICES": "2,1"})
    assert [(g.id, g.name) for g in found] == [("2", "Tesla T4"), ("1", "Tesla T4")]
    assert found[0].memory_bytes == 16 << 30


def test_detect_falls_back_to_nvidia_smi(monkeypatch, tmp_path):
    _fake_pynvml(monkeypatch, FAKE_NVML_MODE="unavailable")
    assert gpus.detect_gpus({"PATH": str(tmp_path)}) == []      # no nvidia-smi: none
    _write_fake_smi(tmp_path)
    found = gpus.detect_gpus({"PATH": str(tmp_path)})
    assert [(g.id, g.name, g.memory_bytes) for g in found] == \
        [("0", "Tesla T4", 15360 << 20), ("1", "Tesla T4", 15360 << 20)]
    monkeypatch.setitem(sys.modules, "pynvml", None)             # package not installed
    assert len(gpus.detect_gpus({"PATH": str(tmp_path)})) == 2


def _write_fake_smi(directory: Path) -> Path:
    path = directory / "nvidia-smi"
    path.write_text(FAKE_SMI)
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------- end to end

DRIVER_PRELUDE = '''
import atexit, json, os, shutil, sys, time
from pathlib import Path
import runtime
from runtime import api
from tests.helpers import wait_for

def visible():
    return os.environ.get("CUDA_VISIBLE_DEVICES"), runtime.get_gpu_ids()

def hold(rendezvous, name, go=None, count=0):
    """Say it started (with its GPUs), then wait for `count` starters or a `go` file."""
    Path(rendezvous, name + ".started").write_text("")
    deadline = time.monotonic() + 90
    while (len(list(Path(rendezvous).glob("*.started"))) < count or
           (go and not Path(rendezvous, go).exists())):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: nobody came")
        time.sleep(0.02)
    return visible()


runtime.init(num_cpus=NUM_CPUS)
# (before the embedded runtime's own exit handler removes them: the logs, for failures)
atexit.register(shutil.copytree, api._embedded["session"] / "logs",
                Path(sys.argv[1], "logs"))
rendezvous = Path(sys.argv[1], "rendezvous")
rendezvous.mkdir()
result = {"resources": runtime.cluster_resources()}
'''


def run_driver(tmp_path: Path, body: str, smi: bool = False, nvml: str = "two A100",
               env: dict | None = None, num_cpus: int | None = 4,
               timeout_s: float = 120.0) -> dict:
    """Run PRELUDE + body as a driver program with the fakes in its environment;
    returns its `result` dict. Stops the runtime it started whatever happens."""
    work = tmp_path / "driver"
    work.mkdir()
    bin_dir = work / "bin"
    bin_dir.mkdir()
    if smi:
        _write_fake_smi(bin_dir)
    script = work / "driver.py"
    script.write_text(DRIVER_PRELUDE.replace("NUM_CPUS", repr(num_cpus)) +
                      textwrap.dedent(body) +
                      '\nprint("RESULT " + json.dumps(result))\n')
    private_tmp = tempfile.mkdtemp(prefix="cg-", dir="/tmp")   # short: ipc paths
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("CUDA_VISIBLE_DEVICES", "CORRAL_NODE_RESOURCES",
                            "CORRAL_NODE_DIR", "FAKE_NVML_GPUS", "FAKE_NVML_MODE")}
    run_env.update(PATH=f"{bin_dir}:{run_env.get('PATH', '')}", TMPDIR=private_tmp,
                   PYTHONPATH=f"{FAKES}:{REPO}", CORRAL_NODE_DIR=str(work / "no-node"))
    if nvml == "unavailable":
        run_env["FAKE_NVML_MODE"] = "unavailable"
    run_env.update(env or {})
    proc = subprocess.Popen([sys.executable, str(script), str(work)], env=run_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for started in Path(private_tmp).glob("corral-embedded-*/session"):
            session.stop_session(started)
            shutil.copytree(started / "logs", work / "logs", dirs_exist_ok=True)
        shutil.rmtree(private_tmp, ignore_errors=True)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        logs = "".join(f"\n--- {path.name}:\n{path.read_text()[-3000:]}"
                       for path in sorted((work / "logs").glob("*.log")))
        pytest.fail(f"driver failed ({proc.returncode}):\n{err[-3000:]}{logs}")
    return json.loads(lines[-1][len("RESULT "):])


GPU0, GPU1, NO_GPU = ("0", (0,)), ("1", (1,)), (None, ())


def seen(pair) -> tuple:
    """A task's (CUDA_VISIBLE_DEVICES, get_gpu_ids()) as it came through JSON."""
    return pair[0], tuple(pair[1])


@pytest.mark.timeout(150)
def test_nvml_gpus_run_two_whole_gpu_tasks_at_a_time(tmp_path):
    result = run_driver(tmp_path, '''
        one_gpu = runtime.remote(num_gpus=1)(hold)
        first = [one_gpu.remote(str(rendezvous), f"t{i}", go="go") for i in range(2)]
        wait_for(lambda: len(list(rendezvous.glob("*.started"))) == 2, 60, "both tasks")
        wait_for(lambda: runtime.available_resources().get("GPU", 0) == 0, 60, "no GPU free")
        third = one_gpu.remote(str(rendezvous), "t2")
        ready, _ = runtime.wait([third], timeout=1.0)
        result["third_waited"] = not ready and not (rendezvous / "t2.started").exists()
        (rendezvous / "go").write_text("")
        result["first"] = runtime.get(first, timeout=60)
        result["third"] = runtime.get(third, timeout=60)
        wait_for(lambda: runtime.available_resources().get("GPU") == 2, 60, "both GPUs back")
    ''')
    assert result["resources"] == {"CPU": 4.0, "GPU": 2.0, "accelerator_type:A100": 1.0}
    assert sorted(map(seen, result["first"])) == [GPU0, GPU1]
    assert result["third_waited"]
    assert seen(result["third"]) in {GPU0, GPU1}


@pytest.mark.timeout(150)
def test_nvidia_smi_gpus_fractions_share_an_id_and_cpu_tasks_see_none(tmp_path):
    result = run_driver(tmp_path, '''
        half = runtime.remote(num_gpus=0.5)(hold)
        whole = runtime.remote(num_gpus=1)(hold)
        cpu_only = runtime.remote(visible)
        refs = [half.remote(str(rendezvous), f"h{i}", count=3) for i in range(2)]
        refs.append(whole.remote(str(rendezvous), "w", count=3))
        result["together"] = runtime.get(refs, timeout=90)
        # the same pooled workers, now running tasks without GPUs
        result["cpu"] = runtime.get([cpu_only.remote() for _ in range(8)], timeout=60)
        result["driver"] = visible()
    ''', smi=True, nvml="unavailable")
    assert result["resources"] == {"CPU": 4.0, "GPU": 2.0, "accelerator_type:T4": 1.0}
    (first, second, whole) = map(seen, result["together"])
    assert first == second and whole != first              # halves packed onto one id
    assert {first, whole} == {GPU0, GPU1}
    assert all(seen(item) == NO_GPU for item in result["cpu"])
    assert seen(result["driver"]) == NO_GPU


@pytest.mark.timeout(150)
def test_an_actor_keeps_its_gpu_for_its_life(tmp_path):
    result = run_driver(tmp_path, '''
        @runtime.remote(num_gpus=1)
        class Trainer:
            def ids(self):
                return visible()
        one_gpu = runtime.remote(num_gpus=1)(visible)
        trainer = Trainer.remote()
        seen = [runtime.get(trainer.ids.remote(), timeout=60)]
        for _ in range(3):
            result.setdefault("tasks", []).append(runtime.get(one_gpu.remote(), timeout=60))
            seen.append(runtime.get(trainer.ids.remote(), timeout=60))
        result["actor"] = seen
        wait_for(lambda: runtime.available_resources().get("GPU") == 1, 60,  # the actor's
                 "one GPU free")
        runtime.kill(trainer)
        wait_for(lambda: runtime.available_resources().get("GPU") == 2, 60, "both GPUs back")
        both = [runtime.remote(num_gpus=1)(hold).remote(str(rendezvous), f"t{i}", count=2)
                for i in range(2)]
        result["after_kill"] = runtime.get(both, timeout=60)
    ''')
    actor_ids = set(map(seen, result["actor"]))
    assert len(actor_ids) == 1
    (actor_id,) = actor_ids
    assert actor_id in {GPU0, GPU1}
    assert {seen(item) for item in result["tasks"]} == {GPU0, GPU1} - {actor_id}
    assert sorted(map(seen, result["after_kill"])) == [GPU0, GPU1]


@pytest.mark.timeout(150)
def test_a_blocked_gpu_task_keeps_its_gpu_and_lends_its_cpu(tmp_path):
    # one CPU: the inner task can only run on the CPU its blocked caller lends. The
    # caller's GPU stays its own: while it waits, the node has 1 of 2 GPUs free (not 2),
    # and an inner GPU task gets the other id
    result = run_driver(tmp_path, '''
        @runtime.remote(num_cpus=0.5)
        def inner_cpu(rendezvous):
            return hold(rendezvous, "inner", go="go")

        @runtime.remote(num_gpus=1, num_cpus=0)
        def inner_gpu():
            return visible()

        @runtime.remote(num_gpus=1, num_cpus=1)
        def outer(rendezvous):
            before = visible()
            cpu = runtime.get(inner_cpu.remote(rendezvous))
            gpu = runtime.get(inner_gpu.remote())
            return before, cpu, gpu, visible()

        ref = outer.remote(str(rendezvous))
        wait_for(lambda: (rendezvous / "inner.started").exists(), 60, "the inner task")
        def lent(available):   # CPU: 1 - 1 (outer) + 1 (lent) - 0.5 (inner)
            return (available.get("CPU"), available.get("GPU")) == (0.5, 1.0)
        wait_for(lambda: lent(runtime.available_resources()), 60, "the GPU lent")
        result["while_blocked"] = runtime.available_resources()
        (rendezvous / "go").write_text("")
        result["outer"] = runtime.get(ref, timeout=90)
        wait_for(lambda: runtime.available_resources().get("GPU") == 2, 60, "both GPUs back")
        result["after"] = runtime.available_resources()
    ''', num_cpus=1)
    before, cpu, gpu, after = map(seen, result["outer"])
    assert result["resources"] == {"CPU": 1.0, "GPU": 2.0, "accelerator_type:A100": 1.0}
    assert before == after and {before, gpu} == {GPU0, GPU1}
    assert cpu == NO_GPU
    assert result["after"] == result["resources"]


@pytest.mark.timeout(150)
def test_node_type_resources_and_node_cuda_visible_devices_override_detection(tmp_path):
    result = run_driver(tmp_path, '''
        result["seen"] = runtime.get(runtime.remote(num_gpus=1)(visible).remote(),
                                     timeout=60)
    ''', env={"CORRAL_NODE_RESOURCES": '{"CPU": 2, "GPU": 1}',
              "CUDA_VISIBLE_DEVICES": "1,0"})
    # the node type says one GPU; the node's CUDA_VISIBLE_DEVICES puts GPU 1 first
    assert result["resources"] == {"CPU": 4.0, "GPU": 1.0, "accelerator_type:A100": 1.0}
    assert seen(result["seen"]) == GPU1


@pytest.mark.timeout(150)
def test_zero_gpus_configured_means_none_offered(tmp_path):
    result = run_driver(tmp_path, '''
        result["seen"] = runtime.get(runtime.remote(visible).remote(), timeout=60)
    ''', env={"CORRAL_NODE_RESOURCES": '{"GPU": 0}'})
    assert result["resources"] == {"CPU": 4.0}
    assert seen(result["seen"]) == NO_GPU


# ---------------------------------------------------------------- on a test host

@pytest.mark.netns
@pytest.mark.timeout(180)
def test_corral_start_on_a_host_finds_its_gpus(hosts_run_this_checkout, tmp_path):
    """`corral start` on an sshd test host whose PATH has a fake nvidia-smi (in the
    host's private /tmp) offers two T4s; GPU tasks placed there get different ids."""
    import runtime
    from runtime.node.startup import start_node
    from tests.helpers import wait_for
    host = hosts_run_this_checkout.hosts[2]
    bridge_ip = hosts_run_this_checkout.network.bridge_ip
    head_dir = tmp_path / "head"
    shared = Path.home() / f".corral-test-keys-gpu-{os.getpid()}"
    head = None
    try:
        head = start_node(head=True, port=0, num_cpus=1, num_gpus=0, node_id="head",
                          node_dir=head_dir, node_ip=bridge_ip, heartbeat_timeout_s=3)
        shutil.copytree(head_dir / "keys", shared)
        prepared = host.run(
            "set -e; mkdir -p /tmp/fakebin /tmp/fakenvml /tmp/rendezvous; "
            "mkdir -p -m 700 /tmp/corral/keys\n"
            f"cat > /tmp/fakebin/nvidia-smi <<'EOF'\n{FAKE_SMI}EOF\n"
            "chmod 755 /tmp/fakebin/nvidia-smi; "
            f"cp {shlex.quote(str(FAKES / 'pynvml.py'))} /tmp/fakenvml/; "
            f"cp {shlex.quote(str(shared))}/* /tmp/corral/keys/; "
            "chmod 600 /tmp/corral/keys/*")
        assert prepared.returncode == 0, prepared.stderr
        env = (f"PATH=/tmp/fakebin:{shlex.quote(os.path.dirname(sys.executable))}:$PATH "
               f"PYTHONPATH=/tmp/fakenvml:{shlex.quote(str(REPO))} "
               "FAKE_NVML_MODE=unavailable "
               f"CORRAL_NODE_DIR=/tmp/corral CORRAL_HEAD_IP={bridge_ip} "
               f"CORRAL_HEAD_PORT={head.address.rsplit(':')[1]} CORRAL_NODE_ID=gpu-host "
               f"CORRAL_NODE_RESOURCES={shlex.quote(json.dumps({'CPU': 2}))}")
        in_repo = f"cd {shlex.quote(str(REPO))} && {env} python3 -m launcher"
        started = host.run(f"{in_repo} start", timeout_s=90)
        assert started.returncode == 0, started.stderr + started.stdout
        runtime.init(address=head.address, keys_dir=str(head_dir / "keys"))
        node = wait_for(lambda: next((n for n in runtime.nodes() if n["node_id"] ==
                                        "gpu-host" and n["alive"]), None), timeout_s=60,
                        what="gpu-host to join")
        assert node["resources_total"] == {"CPU": 2.0, "GPU": 2.0,
                                           "accelerator_type:T4": 1.0}

        @runtime.remote(num_gpus=1)
        def on_gpu(name):
            import pathlib
            import time
            pathlib.Path("/tmp/rendezvous", name).write_text("")
            deadline = time.monotonic() + 60
            while len(list(pathlib.Path("/tmp/rendezvous").iterdir())) < 2:
                assert time.monotonic() < deadline, "the other GPU task never started"
                time.sleep(0.02)
            return (os.environ["CORRAL_NODE_ID"], os.environ["CUDA_VISIBLE_DEVICES"],
                    runtime.get_gpu_ids())

        seen = runtime.get([on_gpu.remote("a"), on_gpu.remote("b")], timeout=90)
        assert sorted(seen) == [("gpu-host", "0", [0]), ("gpu-host", "1", [1])]
        stopped = host.run(f"{in_repo} stop")
        assert stopped.returncode == 0, stopped.stderr
    finally:
        runtime.shutdown()
        if head is not None:
            session.stop_session(head.session)
        shutil.rmtree(shared, ignore_errors=True)
