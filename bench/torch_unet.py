"""guided-diffusion's ADM U-Net (its UNetModel) in PyTorch, for the bench's PyTorch peer.

Written from the spec (/work/shared/research/diffssl-spec.md §A) and difrep's own model
(src/model/unet.ts, src/model/unet-config.ts): the same create_model flags, the same state_dict
keys and the same diffssl block numbering b = 1..N (input blocks, the middle block, output blocks).
Float32 throughout: use_fp16 is ignored, as difrep ignores it. bench/check-peer-torch.py proves it
is the same model as the reference dumps'.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# create_model's defaults for the flags a config may leave out (guided-diffusion script_util.py;
# the same defaults as unet-config.ts).
DEFAULT_FLAGS = {
    "channel_mult": "",
    "attention_resolutions": "16",
    "num_heads": 1,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "learn_sigma": False,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "use_new_attention_order": False,
    "class_cond": False,
    "dropout": 0.0,
    "in_channels": 3,
}

# channel_mult "" means the image size's default.
DEFAULT_CHANNEL_MULT = {
    512: [0.5, 1, 1, 2, 2, 4, 4],
    256: [1, 1, 2, 2, 4, 4],
    128: [1, 1, 2, 3, 4],
    64: [1, 2, 3, 4],
}


def numbers(value):
    """A comma-separated string ("1,2,2") or a list, as a list of numbers."""
    if isinstance(value, (list, tuple)):
        return [float(v) if isinstance(v, float) else int(v) for v in value]
    return [int(s) for s in str(value).split(",") if s.strip()]


def group_norm(channels):
    """GroupNorm32: 32 groups, eps 1e-5."""
    return nn.GroupNorm(32, channels)


def conv3x3(cin, cout):
    return nn.Conv2d(cin, cout, 3, padding=1)


def timestep_embedding(t, dim):
    """Sinusoidal embedding of integer timesteps: [cos(t·f_i) | sin(t·f_i)], f_i = 10000^(−i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def downsample2(x):
    return F.avg_pool2d(x, 2)


def upsample2(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


class ResBlock(nn.Module):
    """GN → SiLU → (resample) → conv, the timestep's scale-shift (or shift), GN → SiLU → conv, plus the skip."""

    def __init__(self, cin, cout, emb_dim, scale_shift, dropout, resample=None):
        super().__init__()
        self.scale_shift = scale_shift
        self.resample = {"down": downsample2, "up": upsample2, None: None}[resample]
        self.in_layers = nn.Sequential(group_norm(cin), nn.SiLU(), conv3x3(cin, cout))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout if scale_shift else cout))
        self.out_layers = nn.Sequential(group_norm(cout), nn.SiLU(), nn.Dropout(dropout), conv3x3(cout, cout))
        self.skip_connection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        norm, act, conv = self.in_layers
        a, skip = act(norm(x)), x
        if self.resample:
            # The main path resamples after SiLU, before the conv; the skip path resamples the raw input.
            a, skip = self.resample(a), self.resample(x)
        h = conv(a)
        e = self.emb_layers(emb)[:, :, None, None]
        norm, act, drop, conv = self.out_layers
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)  # the first half scales, the second shifts
            h = norm(h) * (1 + scale) + shift
        else:
            h = norm(h + e)
        return self.skip_connection(skip) + conv(drop(act(h)))


class AttentionBlock(nn.Module):
    """x + proj_out(multi-head self-attention over the H·W positions of qkv(GN(x)))."""

    def __init__(self, channels, heads, legacy):
        super().__init__()
        self.heads = heads
        self.legacy = legacy
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def split(self, qkv):
        """q, k, v as [N·heads, d, T]. Legacy order: the 3C channels are heads first, each [q | k | v];
        the new order: [q of all heads | k | v]."""
        n, c3, tokens = qkv.shape
        d = c3 // (3 * self.heads)
        if self.legacy:
            return qkv.reshape(n * self.heads, 3 * d, tokens).split(d, dim=1)
        return [part.reshape(n * self.heads, d, tokens) for part in qkv.chunk(3, dim=1)]

    def forward(self, x):
        n, c, height, width = x.shape
        flat = x.reshape(n, c, height * width)
        q, k, v = self.split(self.qkv(self.norm(flat)))
        # 1/√d split as d^(−1/4) on q and on k, which keeps the products' magnitude down.
        scale = q.shape[1] ** -0.25
        weights = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
        a = torch.einsum("bts,bcs->bct", weights, v).reshape(n, c, height * width)
        return (flat + self.proj_out(a)).reshape(n, c, height, width)


class Downsample(nn.Module):
    """The conv resampler (resblock_updown false): 3×3 conv with stride 2."""

    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """The conv resampler (resblock_updown false): nearest ×2, then a 3×3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x):
        return self.conv(upsample2(x))


class Block(nn.ModuleList):
    """One diffssl block: its layers in order; only ResBlocks see the timestep embedding."""

    def forward(self, h, emb):
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class UNet(nn.Module):
    """The U-Net of create_model(**flags), unconditional; state_dict keys as guided-diffusion's."""

    def __init__(self, flags):
        super().__init__()
        f = {**DEFAULT_FLAGS, **flags}
        if f["class_cond"]:
            raise ValueError("class_cond models are not supported (the paper uses the unconditional model)")
        size, mc = f["image_size"], f["num_channels"]
        mult = numbers(f["channel_mult"]) or DEFAULT_CHANNEL_MULT[size]
        attention_ds = {size // r for r in numbers(f["attention_resolutions"])}
        emb_dim = 4 * mc
        self.image_size = size
        self.in_channels = f["in_channels"]
        self.model_channels = mc

        def res(cin, cout, resample=None):
            return ResBlock(cin, cout, emb_dim, f["use_scale_shift_norm"], f["dropout"], resample)

        def attention(channels, decoder):
            if f["num_head_channels"] == -1:
                heads = f["num_heads_upsample"] if decoder and f["num_heads_upsample"] != -1 else f["num_heads"]
            else:
                heads = channels // f["num_head_channels"]
            return AttentionBlock(channels, heads, legacy=not f["use_new_attention_order"])

        def down(ch):
            return res(ch, ch, "down") if f["resblock_updown"] else Downsample(ch)

        def up(ch):
            return res(ch, ch, "up") if f["resblock_updown"] else Upsample(ch)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([Block([conv3x3(self.in_channels, ch)])])
        skip_channels = [ch]
        ds = 1  # downsampling factor of the current level
        for level, m in enumerate(mult):
            for _ in range(f["num_res_blocks"]):
                layers = [res(ch, int(m * mc))]
                ch = int(m * mc)
                if ds in attention_ds:
                    layers.append(attention(ch, decoder=False))
                self.input_blocks.append(Block(layers))
                skip_channels.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(Block([down(ch)]))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = Block([res(ch, ch), attention(ch, decoder=False), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for r in range(f["num_res_blocks"] + 1):
                # The decoder block's input is [running tensor, skip] concatenated on channels.
                layers = [res(ch + skip_channels.pop(), int(m * mc))]
                ch = int(m * mc)
                if ds in attention_ds:
                    layers.append(attention(ch, decoder=True))
                if level and r == f["num_res_blocks"]:
                    layers.append(up(ch))
                    ds //= 2
                self.output_blocks.append(Block(layers))
        out_channels = 2 * self.in_channels if f["learn_sigma"] else self.in_channels
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), conv3x3(ch, out_channels))

    @property
    def num_blocks(self):
        return 2 * len(self.input_blocks) + 1

    def embed(self, t):
        """time_embed(sinusoid(t)): the embedding every ResBlock reads."""
        return self.time_embed(timestep_embedding(t, self.model_channels))

    def features(self, x, t, last=None):
        """Yields (b, output of block b) for b = 1..last (every block when last is None), then stops."""
        last = self.num_blocks if last is None else last
        if not 1 <= last <= self.num_blocks:
            raise ValueError(f"block {last} does not exist: this U-Net has blocks 1..{self.num_blocks}")
        emb = self.embed(t)
        n_in = len(self.input_blocks)
        blocks = [*self.input_blocks, self.middle_block, *self.output_blocks]
        skips = []
        h = x
        for b, block in enumerate(blocks[:last], start=1):
            if b > n_in + 1:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
            if b <= n_in:
                skips.append(h)
            yield b, h

    def block_output(self, x, t, last=None):
        """The output of block `last` (of the last block when None), dropping the others as it goes."""
        for _, h in self.features(x, t, last):  # noqa: B007 (only the last one is kept)
            pass
        return h

    def forward(self, x, t):
        """The model output: ε (and, with learn_sigma, the variance values) for x at timesteps t."""
        return self.out(self.block_output(x, t))


def linear_schedule(steps=1000):
    """(√ᾱ_t, √(1−ᾱ_t)) for t = 0..steps−1 of the linear β schedule 1e-4..0.02, in float64 as guided-diffusion."""
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4 * 1000 / steps, 0.02 * 1000 / steps, steps, dtype=torch.float64), dim=0)
    return alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()


def q_sample(x0, t, eps, schedule):
    """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (the paper's Eq. 2), each image's coefficients cast to float32."""
    a, s = (c[t].float()[:, None, None, None] for c in schedule)
    return a * x0 + s * eps
