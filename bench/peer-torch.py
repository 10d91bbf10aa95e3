"""The PyTorch peer of `npm run bench -- --peer torch`, in its own process.

usage: python3 bench/peer-torch.py '[PeerOp, ...]'   (or the JSON list on stdin)

The ops are bench/cases.ts' PeerOps: matmul, conv2d (NCHW, padding same, with bias), softmax (over
rows), add, and the whole models: unet-forward (create_model flags, batch, block b: the forward
stops after block b; b = N runs every block) and unet-train (one pretraining step as in
trainingCase: q_sample, the full forward, MSE on ε, backward, Adam lr 1e-4, zero_grad). The U-Net
is bench/torch_unet.py's, with PyTorch's default initialisation.

Prints one JSON line describing the peer ({"peer": {...}}), then one per op, in order:
{i, firstMs, medianMs, reps} or {i, error}. The timing protocol is bench/measure.ts': one warm-up
call ("first"), then repetitions until 1 s has passed, at least minReps (default 3) and at most
maxReps (default 10) — the bench sets both for every op, as it repeats its own row. CUDA when available
(synchronised around every call), else the CPU with one thread per core, as difrep's CPU adapter
uses every core (Debian's 1.13 would take 1 of 2 here; OMP_NUM_THREADS, when set, decides).
"""

import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from torch_unet import UNet, linear_schedule, q_sample


def pick_device():
    if torch.cuda.is_available():
        # fp32 as ours: cuDNN's convs default to TF32 (about 8× faster on an H200), matmuls do not.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        return torch.device("cuda")
    if "OMP_NUM_THREADS" not in os.environ:
        # The CPUs this process may run on (taskset, a container's cpuset), not all the machine's.
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(usable or 1)
    return torch.device("cpu")


def debian_package_version():
    """Debian's python3-torch reports torch.__version__ 1.13.0a0; its package names the release."""
    if not torch.__file__.startswith("/usr/lib/python3/"):
        return None
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-torch"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def blas_library():
    """The BLAS shared library a CPU matmul loads (Linux), or None. Debian's torch takes whichever
    libblas.so.3 the system's alternatives select: the reference BLAS (package libblas3, under
    blas/) runs a 1024³ matmul 20× slower than OpenBLAS, which would make the peer look weak."""
    torch.ones(2, 2) @ torch.ones(2, 2)
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "blas" in line.split()[-1]})
    except OSError:
        return None
    return paths[0] if paths else None


def describe(device):
    """What the bench prints as the peer: version, device, threads, and on the CPU its BLAS."""
    debian = debian_package_version()
    version = torch.__version__ + (f" (Debian python3-torch {debian})" if debian else "")
    if device.type == "cuda":
        where = f"CUDA, {torch.cuda.get_device_name(device)}, fp32 with TF32 off"
        threads = None
    else:
        threads = torch.get_num_threads()
        blas = blas_library()
        reference = blas is not None and "/blas/libblas" in blas
        where = f"CPU, {threads} thread{'s' if threads != 1 else ''}" + (
            f", BLAS {blas}" + (" (the reference BLAS: apt-get install libopenblas0-pthread for a fair peer)" if reference else "") if blas else ""
        )
    return {
        "engine": "PyTorch",
        "version": torch.__version__,
        "debianPackage": debian,
        "device": device.type,
        "threads": threads,
        "description": f"PyTorch {version} on {where}",
    }


def kernel_op(op, device):
    """The call to time for a kernel op, on random inputs."""

    def randn(*shape):
        return torch.randn(*shape, device=device)

    if op["op"] == "matmul":
        a, b = randn(op["m"], op["k"]), randn(op["k"], op["n"])
        return lambda: a @ b
    if op["op"] == "conv2d":
        x, w, bias = randn(op["n"], op["cin"], op["h"], op["w"]), randn(op["cout"], op["cin"], op["k"], op["k"]), randn(op["cout"])
        return lambda: F.conv2d(x, w, bias, padding=op["k"] // 2)
    if op["op"] == "softmax":
        x = randn(op["rows"], op["cols"])
        return lambda: x.softmax(dim=-1)
    if op["op"] == "add":
        a, b = randn(op["size"]), randn(op["size"])
        return lambda: a + b
    raise ValueError(f"unknown op {op['op']!r}")


def unet_forward(op, device):
    """The forward of `batch` random images at t = 150 (as unetCase), stopping after block `block`."""
    model = UNet(op["flags"]).to(device).eval()
    size = model.image_size
    x = torch.randn(op["batch"], model.in_channels, size, size, device=device)
    t = torch.full((op["batch"],), 150, dtype=torch.long, device=device)

    def run():
        with torch.no_grad():
            model.block_output(x, t, op["block"])

    return run


def unet_train(op, device):
    """One pretraining step (the paper's Eq. 4) of `batch` images, as trainingCase: fixed x0 and ε,
    t_i = 397·i mod 1000."""
    model = UNet(op["flags"]).to(device).train()
    adam = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch, channels, size = op["batch"], model.in_channels, model.image_size
    x0 = torch.randn(batch, channels, size, size, device=device)
    eps = torch.randn(batch, channels, size, size, device=device)
    t = torch.tensor([(i * 397) % 1000 for i in range(batch)], device=device)
    schedule = [c.to(device) for c in linear_schedule(1000)]

    def run():
        predicted = model(q_sample(x0, t, eps, schedule), t)[:, :channels]  # ε channels (learn_sigma adds σ's)
        F.mse_loss(predicted, eps).backward()
        adam.step()
        adam.zero_grad()

    return run


def prepare(op, device):
    if op["op"] == "unet-forward":
        return unet_forward(op, device)
    if op["op"] == "unet-train":
        return unet_train(op, device)
    return kernel_op(op, device)


def measure(run, sync, min_reps=3, max_reps=10, budget_ms=1000.0):
    """(first, median, repetitions) in ms, as bench/measure.ts."""

    def once():
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        return (time.perf_counter() - t0) * 1000

    first = once()
    times = []
    while len(times) < max_reps and (len(times) < min_reps or sum(times) < budget_ms):
        times.append(once())
    return first, statistics.median(times), len(times)


def main():
    ops = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    device = pick_device()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    print(json.dumps({"peer": describe(device)}), flush=True)
    for i, op in enumerate(ops):
        try:
            run = prepare(op, device)
            first, median, reps = measure(run, sync, op.get("minReps", 3), op.get("maxReps", 10))
            print(json.dumps({"i": i, "firstMs": first, "medianMs": median, "reps": reps}), flush=True)
        except (RuntimeError, ValueError, KeyError, MemoryError) as err:  # out of memory, a bad op
            first_line = next(iter(str(err).splitlines()), "")
            print(json.dumps({"i": i, "error": f"{type(err).__name__}: {first_line[:200]}"}), flush=True)
        finally:
            run = None  # drop the op's tensors and model before the next op allocates
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
