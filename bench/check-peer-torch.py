"""Proves the PyTorch peer runs the same model as the reference dumps.

usage: python3 bench/check-peer-torch.py [DUMP.safetensors ...]
       (default: test/fixtures' copies of the reference dumps adm64 and adm32-mini, byte for byte
       ../shared/reference's, and its conv-resample and unseen-config dumps: conv resamplers, the
       new attention order, heads from num_heads, no scale-shift norm)

Builds bench/torch_unet.py's U-Net from each dump's config, loads its `param.*` (strictly: the same
keys and shapes), compares its q_sample of `input.x0` and `input.noise` with `input.x_t`, runs
`input.x_t` at `input.t` and compares the timestep embedding, every block's output and the model
output with the dump, then, where the dump has it, the backward of
L = Σ grad.R ⊙ block.B: the input gradient, every block's gradient and the dumped weight gradients. Metric per tensor:
max|a − r| / max|r|. Exit status 1 when a forward tensor is over 1e-5 or a gradient over 1e-4.
"""

import json
import pathlib
import struct
import sys

import numpy as np
import torch

from torch_unet import UNet, linear_schedule, q_sample

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "test" / "fixtures"
DEFAULT_DUMPS = [FIXTURES / f"{name}.safetensors" for name in ("adm64", "adm32-mini", "conv-resample", "unseen-config")]
FORWARD_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-4
DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8"}


def read_safetensors(path):
    """(metadata, {name: tensor}) of a safetensors file: u64 LE header length, JSON header, raw LE data."""
    data = pathlib.Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    metadata = header.pop("__metadata__", {})
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        array = np.frombuffer(data[base + start : base + end], dtype=DTYPES[info["dtype"]])
        tensors[name] = torch.from_numpy(array.reshape(info["shape"]).copy())
    return metadata, tensors


def relative_error(actual, reference):
    """max|a − r| / max|r|, in float64."""
    a, r = actual.detach().double(), reference.double()
    if a.shape != r.shape:
        raise ValueError(f"shape {list(a.shape)} against the reference's {list(r.shape)}")
    return ((a - r).abs().max() / r.abs().max()).item()


def load_model(metadata, tensors):
    model = UNet(json.loads(metadata["config"]))
    params = {k[len("param.") :]: v for k, v in tensors.items() if k.startswith("param.")}
    model.load_state_dict(params, strict=True)
    if model.num_blocks != int(metadata["blocks"]):
        raise ValueError(f"{model.num_blocks} blocks, the dump has {metadata['blocks']}")
    return model


def forward_errors(model, tensors):
    """{name: error} for x_t (q_sample of x0 and the noise), emb, block.1..N and output."""
    x, t = tensors["input.x_t"], tensors["input.t"]
    with torch.no_grad():
        x_t = q_sample(tensors["input.x0"], t, tensors["input.noise"], linear_schedule())
        errors = {"x_t": relative_error(x_t, x), "emb": relative_error(model.embed(t), tensors["emb"])}
        last = None
        for b, h in model.features(x, t):
            errors[f"block.{b}"] = relative_error(h, tensors[f"block.{b}"])
            last = h
        errors["output"] = relative_error(model.out(last), tensors["output"])
    return errors


def gradient_errors(model, metadata, tensors):
    """{name: error} for the gradients of L = Σ grad.R ⊙ block.B the dump holds."""
    target = int(metadata["grad_target_block"])
    x = tensors["input.x_t"].clone().requires_grad_(True)
    blocks = dict(model.features(x, tensors["input.t"], last=target))
    for h in blocks.values():
        h.retain_grad()
    model.zero_grad()
    (tensors["grad.R"] * blocks[target]).sum().backward()
    params = dict(model.named_parameters())
    errors = {"grad.x_t": relative_error(x.grad, tensors["grad.x_t"])}
    for name, reference in tensors.items():
        if name.startswith("grad.block."):
            errors[name] = relative_error(blocks[int(name.rsplit(".", 1)[1])].grad, reference)
        elif name.startswith("grad.param."):
            errors[name] = relative_error(params[name[len("grad.param.") :]].grad, reference)
    return errors


def report(title, errors, tolerance):
    worst = max(errors, key=errors.get)
    summary = f"worst {worst} {errors[worst]:.2e}" if errors[worst] > 0 else "all bit for bit equal"
    print(f"  {title}: {len(errors)} tensors, {summary} (tolerance {tolerance:.0e})")
    over = {k: v for k, v in errors.items() if v > tolerance}
    for name, error in over.items():
        print(f"    OVER: {name} {error:.2e}")
    return not over


def check(path):
    metadata, tensors = read_safetensors(path)
    model = load_model(metadata, tensors)
    print(f"{path}: {model.num_blocks} blocks, {sum(p.numel() for p in model.parameters()):,} parameters")
    forward = forward_errors(model, tensors)
    print("  " + ", ".join(f"{k} {v:.1e}" for k, v in forward.items()))
    ok = report("forward", forward, FORWARD_TOLERANCE)
    if "grad_target_block" not in metadata:
        print("  backward: none in this dump")
        return ok
    return report("backward", gradient_errors(model, metadata, tensors), GRADIENT_TOLERANCE) and ok


def main():
    torch.manual_seed(0)
    paths = sys.argv[1:] or DEFAULT_DUMPS
    results = [check(p) for p in paths]
    print("all within tolerance" if all(results) else "FAILED")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
