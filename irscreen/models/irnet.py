"""IRNet, SRNet and plain deep networks built from architecture strings.

Jha et al., "Enabling deeper learning on big data for materials informatics
applications", Sci. Rep. 11, 4244 (2021). The string format follows the paper's
code: stacks joined by ``-``, each ``<width><flags>x<count>[R]`` and a final
``<width>`` for the linear output. Flags per layer: ``B`` BatchNorm, ``A`` ReLU,
``R`` a shortcut around that single layer (IRNet). An ``R`` after the count puts
one shortcut around the whole stack (SRNet). Shortcuts are the identity where the
width is unchanged and a linear projection where it changes.

    irnet17 = 1024BARx4-512BARx3-256BARx3-128BARx3-64BARx2-32BARx1-1
    srnet17 = 1024BAx4R-512BAx3R-256BAx3R-128BAx3R-64BAx2R-32BAx1R-1
    plain17 = 1024BAx4-512BAx3-256BAx3-128BAx3-64BAx2-32BAx1-1

For inference, :func:`fold` turns a trained network into :class:`FoldedNet`,
plain tensors with BatchNorm folded into the preceding Linear layers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from irscreen.errors import IrscreenError

_LAYOUTS = {
    17: "1024x4-512x3-256x3-128x3-64x2-32x1",
    24: "1024x4-512x4-256x4-128x4-64x3-32x2-16x2",
    48: "1024x4-1024x4-512x4-512x4-256x4-256x4-128x4-128x4-64x4-64x4-32x4-16x3",
}


def _preset(layout: str, kind: str, scale: float = 1.0) -> str:
    stacks = []
    for part in layout.split("-"):
        width, count = part.split("x")
        width = max(1, int(round(int(width) * scale)))
        if kind == "irnet":
            stacks.append(f"{width}BARx{count}")
        elif kind == "srnet":
            stacks.append(f"{width}BAx{count}R")
        else:
            stacks.append(f"{width}BAx{count}")
    return "-".join(stacks) + "-1"


#: Named architectures: the paper's 17/24/48-layer layouts for each network kind,
#: plus half-width IRNet-17 (same depth and shortcuts, 1/4 of the FLOPs).
PRESETS: dict[str, str] = {
    f"{kind}{depth}": _preset(layout, kind)
    for kind in ("irnet", "srnet", "plain")
    for depth, layout in _LAYOUTS.items()
}
PRESETS["irnet17-half"] = _preset(_LAYOUTS[17], "irnet", 0.5)

_STACK = re.compile(r"^(\d+)([BAR]*)x(\d+)(R?)$")


@dataclass(frozen=True)
class Stack:
    width: int
    count: int
    batchnorm: bool
    relu: bool
    layer_shortcut: bool  # IRNet: around every layer
    stack_shortcut: bool  # SRNet: around the whole stack


@dataclass(frozen=True)
class Architecture:
    stacks: tuple[Stack, ...]
    outputs: int
    spec: str

    @property
    def depth(self) -> int:
        """Number of weight layers, output included (17 for irnet17)."""
        return sum(s.count for s in self.stacks) + 1


def parse_arch(spec: str) -> Architecture:
    """Parse a preset name or an architecture string; raise IrscreenError if malformed."""
    spec = spec.strip()
    text = PRESETS.get(spec, spec)
    parts = text.split("-")
    if len(parts) < 2 or not parts[-1].isdigit():
        raise IrscreenError(
            f"invalid architecture {spec!r}: expected a preset ({', '.join(PRESETS)}) or a string "
            "like '1024BARx4-512BARx3-1' ending in the output width"
        )
    stacks = []
    for part in parts[:-1]:
        m = _STACK.match(part)
        if not m:
            raise IrscreenError(
                f"invalid architecture {spec!r}: cannot read stack {part!r} (expected e.g. '1024BARx4' or '1024BAx4R')"
            )
        width, flags, count, stack_r = int(m[1]), m[2], int(m[3]), bool(m[4])
        if width < 1 or count < 1:
            raise IrscreenError(f"invalid architecture {spec!r}: stack {part!r} needs width and count >= 1")
        if "R" in flags and stack_r:
            raise IrscreenError(f"invalid architecture {spec!r}: stack {part!r} has both per-layer and per-stack shortcuts")
        stacks.append(Stack(width, count, "B" in flags, "A" in flags, "R" in flags, stack_r))
    return Architecture(tuple(stacks), int(parts[-1]), text)


class _Layer(nn.Module):
    def __init__(self, n_in: int, n_out: int, batchnorm: bool, relu: bool, shortcut: bool):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.bn = nn.BatchNorm1d(n_out) if batchnorm else None
        self.relu = relu
        self.shortcut = _shortcut(n_in, n_out) if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        if self.bn is not None:
            h = self.bn(h)
        if self.relu:
            h = torch.relu(h)
        if self.shortcut is not None:
            h = h + self.shortcut(x)
        return h


def _shortcut(n_in: int, n_out: int) -> nn.Module:
    return nn.Identity() if n_in == n_out else nn.Linear(n_in, n_out)


class _StackModule(nn.Module):
    def __init__(self, n_in: int, stack: Stack):
        super().__init__()
        widths = [n_in] + [stack.width] * stack.count
        self.layers = nn.ModuleList(
            _Layer(a, b, stack.batchnorm, stack.relu, stack.layer_shortcut) for a, b in zip(widths, widths[1:])
        )
        self.shortcut = _shortcut(n_in, stack.width) if stack.stack_shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.layers:
            h = layer(h)
        if self.shortcut is not None:
            h = h + self.shortcut(x)
        return h


class Net(nn.Module):
    """The trainable network for one architecture string."""

    def __init__(self, n_features: int, arch: str | Architecture):
        super().__init__()
        self.arch = parse_arch(arch) if isinstance(arch, str) else arch
        self.n_features = n_features
        stacks = []
        n_in = n_features
        for stack in self.arch.stacks:
            stacks.append(_StackModule(n_in, stack))
            n_in = stack.width
        self.stacks = nn.ModuleList(stacks)
        self.out = nn.Linear(n_in, self.arch.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stack in self.stacks:
            x = stack(x)
        return self.out(x)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------
# Inference form: BatchNorm folded, all ensemble members evaluated together.
# ---------------------------------------------------------------------------


@dataclass
class FoldedLayer:
    """y = relu?(x @ weight[:, :n] + bias[:n]) + shortcut, with the projection
    shortcut (if any) packed as the last columns of ``weight``, so that one matmul
    computes both (fewer, larger GEMMs are what makes CPU inference fast)."""

    weight: torch.Tensor  # (in, out) or (in, 2*out) when a projection is packed
    bias: torch.Tensor
    n_out: int
    relu: bool
    shortcut: str  # "none" | "identity" | "packed"
    stack_start: bool = False  # SRNet: remember the stack input here
    stack_end: str = "none"  # SRNet: "none" | "identity" | "projection"
    stack_weight: torch.Tensor | None = None
    stack_bias: torch.Tensor | None = None


def _fold_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d | None) -> tuple[torch.Tensor, torch.Tensor]:
    w = linear.weight.detach().double()
    b = linear.bias.detach().double()
    if bn is not None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * scale[:, None]
        b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
    return w.t().contiguous(), b


def fold(net: Net) -> list[FoldedLayer]:
    """Fold BatchNorm into the Linear layers; returns float64 tensors (cast later)."""
    layers: list[FoldedLayer] = []
    for stack_mod, stack in zip(net.stacks, net.arch.stacks):
        n_layers = len(stack_mod.layers)
        for i, layer in enumerate(stack_mod.layers):
            w, b = _fold_linear_bn(layer.linear, layer.bn)
            shortcut = "none"
            if isinstance(layer.shortcut, nn.Identity):
                shortcut = "identity"
            elif isinstance(layer.shortcut, nn.Linear):
                pw, pb = _fold_linear_bn(layer.shortcut, None)
                w, b = torch.cat([w, pw], 1), torch.cat([b, pb])
                shortcut = "packed"
            fl = FoldedLayer(w, b, layer.linear.out_features, layer.relu, shortcut)
            if stack_mod.shortcut is not None:
                fl.stack_start = i == 0
                if i == n_layers - 1:
                    if isinstance(stack_mod.shortcut, nn.Identity):
                        fl.stack_end = "identity"
                    else:
                        fl.stack_end = "projection"
                        sw, sb = _fold_linear_bn(stack_mod.shortcut, None)
                        fl.stack_weight, fl.stack_bias = sw, sb
            layers.append(fl)
    w, b = _fold_linear_bn(net.out, None)
    layers.append(FoldedLayer(w, b, net.out.out_features, False, "none"))
    return layers


PRECISIONS = ("fp32", "bf16", "mixed")


class FoldedEnsemble:
    """All members of an ensemble in inference form, evaluated with one batched
    matmul per layer (members stacked on a leading axis).

    precision:
      ``fp32``  every GEMM in float32.
      ``bf16``  the hidden layers entirely in bfloat16: GEMMs, biases, ReLU and the
                residual stream (AMX / AVX-512 BF16 on CPU, tensor cores on GPU), the
                output layer in float32. On CPUs with AMX the GEMMs run several times
                faster than float32, and what remains is memory traffic between them:
                a bf16 stream halves it and needs no dtype conversion per layer
                (measured in docs/benchmarks.md, with its effect on validation MAE).
      ``mixed`` bf16 for the residual branches, float32 for the residual stream, the
                projection shortcuts and the output layer: the most accurate reduced
                precision (the projections carry the whole signal from one width to
                the next), about half as fast as ``bf16`` on AMX.
    Members must share one architecture.
    """

    def __init__(self, members: list[list[FoldedLayer]], precision: str = "fp32", device: str = "cpu"):
        if precision not in PRECISIONS:
            raise IrscreenError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
        self.precision = precision
        self.device = torch.device(device)
        self.n_members = len(members)
        low = torch.float32 if precision == "fp32" else torch.bfloat16
        split = precision == "mixed"
        #: dtype of the residual stream between layers (and of the biases added to it)
        self.stream = torch.bfloat16 if precision == "bf16" else torch.float32
        n_layers = len(members[0])
        self.n_outputs = members[0][-1].n_out
        self.layers = []

        def stack(ts, dtype):
            return torch.stack(ts).to(self.device, dtype).contiguous()

        def bias(ts, dtype):
            return torch.stack(ts)[:, None, :].to(self.device, dtype).contiguous()

        for li in range(n_layers):
            parts = [m[li] for m in members]
            ref = parts[0]
            last = li == n_layers - 1
            n = ref.n_out
            entry = {"n_out": n, "relu": ref.relu, "shortcut": ref.shortcut, "stack_start": ref.stack_start,
                     "stack_end": ref.stack_end, "last": last}
            # the output layer (width -> 1, a negligible share of the FLOPs) is float32 in
            # every mode: rounding the prediction itself to bf16 would cost 3 significant digits
            main_dtype = torch.float32 if last and precision != "fp32" else low
            bias_dtype = torch.float32 if last else self.stream
            if ref.shortcut == "packed" and split:
                entry["w"] = stack([p.weight[:, :n] for p in parts], main_dtype)
                entry["pw"] = stack([p.weight[:, n:] for p in parts], torch.float32)
                entry["shortcut"] = "projection"
            else:
                entry["w"] = stack([p.weight for p in parts], main_dtype)
            b = bias([p.bias for p in parts], bias_dtype)
            if entry["shortcut"] == "projection":
                entry["b"], entry["pb"] = b[..., :n].contiguous(), b[..., n:].contiguous()
            else:
                entry["b"] = b
            if ref.stack_end == "projection":
                entry["sw"] = stack([p.stack_weight for p in parts], torch.float32 if split else low)
                entry["sb"] = bias([p.stack_bias for p in parts], bias_dtype)
            self.layers.append(entry)

    @staticmethod
    def _mm(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if w.dtype == h.dtype:
            return torch.bmm(h, w)
        return torch.bmm(h.to(w.dtype), w).to(h.dtype)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, features) float32 (already scaled). Returns (members, batch) float32,
        or (members, batch, outputs) for a network with several outputs."""
        h = x.to(self.device, self.stream).unsqueeze(0).expand(self.n_members, -1, -1)
        stack_in = h
        for L in self.layers:
            if L["last"]:
                h = h.float()
            if L["stack_start"]:
                stack_in = h
            if L["w"].dtype == h.dtype:  # one fused GEMM + bias
                y = torch.baddbmm(L["b"], h, L["w"])
            else:
                y = self._mm(h, L["w"])
                y += L["b"]
            n = L["n_out"]
            out = y[..., :n]
            if L["relu"]:
                out = torch.relu_(out)
            if L["shortcut"] == "identity":
                out = out.add_(h) if out.is_contiguous() else out + h
            elif L["shortcut"] == "packed":
                out = out + y[..., n:]
            elif L["shortcut"] == "projection":
                out = out + torch.baddbmm(L["pb"], h, L["pw"])
            if L["stack_end"] == "identity":
                out = out + stack_in
            elif L["stack_end"] == "projection":
                out = out + self._mm(stack_in, L["sw"]) + L["sb"]
            h = out
        return h[..., 0].float() if self.n_outputs == 1 else h.float()

    def flops_per_row(self) -> int:
        """Multiply-adds x2 of all GEMMs, all members together."""
        total = 0
        for L in self.layers:
            for key in ("w", "pw", "sw"):
                if key in L:
                    m, k, n = L[key].shape
                    total += 2 * m * k * n
        return total
