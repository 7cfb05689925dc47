"""The generation engine's weights: each projection of a model prepared once as fp32, bf16 or int8.

  float32   on a CPU a transposed copy, [in, out] (MKL's products of one to eight rows run about
            2x faster on it) when that second copy fits in half the memory the system has available;
            otherwise, and on a GPU, the model's own tensors
  bfloat16  bf16 copies, matmuls in bf16 with fp32 accumulation; used on CPUs with bf16 units
            (avx512_bf16 or AMX); elsewhere a bf16 request falls back to float32, with a warning
  int8      weight-only int8 with one fp32 scale per output channel (symmetric, absmax / 127), through
            torch's CPU kernel aten._weight_int8pack_mm; activations go in as bf16 where the CPU has bf16
            units, else as fp32

The residual stream, norms, RoPE, attention and the KV cache stay fp32 on a CPU (bf16 on a GPU when
the model was loaded so), so only the weight reads, which bound decoding at small batch, shrink.
`EngineConfig` is the one typed description of these choices; the CLI declares its flags from it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from codelm.errors import ConfigError, TokenizerError, warn
from codelm.generate.engine_config import EngineConfig
from codelm.model.checkpoint import load


def _proc_field(path: str, name: str) -> str | None:
    """The value of the first `name: value` line of a Linux /proc file; None where there is none."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1]
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    return frozenset((_proc_field("/proc/cpuinfo", "flags") or "").split())


def has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX); tests force it off to check the fallback."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@dataclass(frozen=True)
class Plan:
    """What the engine will actually run: the weight format, and the dtype of activations fed to matmuls."""
    weights: str  # "float32", "bfloat16", "float16" or "int8"
    act_dtype: torch.dtype

    def describe(self) -> str:
        return f"{self.weights} weights, {str(self.act_dtype).removeprefix('torch.')} activations"


def check(config: EngineConfig, device: torch.device) -> None:
    """Refuse what cannot run on this device (before anything is loaded)."""
    cpu = device.type == "cpu"
    if config.quantize == "int8" and not cpu:
        raise ConfigError("--quantize int8 is a CPU path (torch's int8 weight-pack kernel); use --dtype on a GPU")
    if cpu and config.dtype == "float16":
        raise ConfigError("--dtype float16 is a GPU path; on a CPU use float32, bfloat16 or --quantize int8")


def plan(config: EngineConfig, device: torch.device, model_dtype: torch.dtype) -> Plan:
    """The fastest correct path for this machine (falls back, with a warning, where a request cannot run)."""
    check(config, device)
    cpu = device.type == "cpu"
    if config.quantize == "int8":
        return Plan("int8", torch.bfloat16 if has_bf16_units() else torch.float32)
    dtype = config.dtype
    if dtype == "auto":
        # Exact by default on a CPU: bf16 and int8 change the numbers (docs/serving.md has their cost).
        dtype = "float32" if cpu else str(model_dtype).removeprefix("torch.")
    if cpu and dtype == "bfloat16" and not has_bf16_units():
        if config.dtype == "bfloat16":
            warn("this CPU has no bf16 units (avx512_bf16/amx_bf16): --dtype bfloat16 falls back to float32")
        dtype = "float32"
    torch_dtype = getattr(torch, dtype)
    return Plan(dtype, torch_dtype)


class Linear:
    """One projection y = x W^T in the planned format; takes and returns the stream's dtype."""

    def __init__(self, weight: torch.Tensor, p: Plan, transpose: bool = True):
        self.act = p.act_dtype
        self.out_features = weight.shape[0]
        self.transposed = False
        w = weight.detach()
        if p.weights == "int8":
            w = w.float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
            self.q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
            self.scale = scale.to(self.act)
            self.w = None
            self.scale_f32 = scale  # the C decoding step's scales (cpu_kernel.py)
        elif transpose and p.act_dtype == torch.float32 and w.device.type == "cpu":
            # Stored transposed, [in, out]: x @ W then streams W's rows, which MKL reads about 2x faster at
            # one to eight rows than F.linear's [out, in] (bf16's kernels are the other way round).
            self.w, self.transposed = w.float().t().contiguous(), True
        else:
            self.w = w.to(p.act_dtype).contiguous()

    def rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight [out, in], per-row fp32 scales or None) of fp32 or int8 weights, as decode_step.c takes
        them (cpu_kernel.py packs them); the transposed fp32 copy gives a view, not another copy."""
        if self.w is None:
            return self.q, self.scale_f32
        if self.w.dtype != torch.float32:
            raise ValueError("the C decoding step takes fp32 or int8 weights")
        return (self.w.t() if self.transposed else self.w), None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xa = x if x.dtype == self.act else x.to(self.act)  # (a no-op .to still costs a dispatch per call)
        if self.w is not None:
            y = torch.matmul(xa, self.w) if self.transposed else F.linear(xa, self.w)
        else:
            y = torch.ops.aten._weight_int8pack_mm(xa.reshape(-1, x.shape[-1]), self.q, self.scale)
            y = y.view(*x.shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def add_to(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """h + self(x), in one product where the kernel takes the addend (fp32 [in, out]: addmm); 2-D h, x."""
        return torch.addmm(h, x, self.w) if self.transposed else h + self(x)


@dataclass
class LayerWeights:
    attention_norm: torch.Tensor
    wqkv: Linear
    wo: Linear
    ffn_norm: torch.Tensor
    w13: Linear
    w2: Linear


@dataclass
class Weights:
    plan: Plan
    embeddings: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    output: Linear
    stream_dtype: torch.dtype  # the residual stream's dtype (and the KV cache's)
    packed: dict = field(default_factory=dict, repr=False)  # other layouts of these weights, made once (cpu_kernel)

    def linears(self) -> list[Linear]:
        """Every projection: the output, then each layer's wqkv, wo, w13 and w2."""
        return [self.output] + [x for lw in self.layers for x in (lw.wqkv, lw.wo, lw.w13, lw.w2)]


def prepare(model, config: EngineConfig, transpose: bool = True) -> Weights:
    """The model's weights in the planned format (norms and embeddings kept as they are). transpose: make
    the [in, out] fp32 copy for the torch path's one-row products (when it fits; the engine passes False
    where the C step decodes, which packs its own copy and leaves the torch path only many-row products)."""
    device = model.tok_embeddings.weight.device
    model_dtype = model.tok_embeddings.weight.dtype
    p = plan(config, device, model_dtype)
    # On a CPU the stream stays fp32 whatever the weights; on a GPU it follows the compute dtype.
    stream = torch.float32 if device.type == "cpu" else p.act_dtype
    projections = [model.output.weight] + [w for b in model.layers for w in (
        b.attention.wqkv.weight, b.attention.wo.weight, b.feed_forward.w13.weight, b.feed_forward.w2.weight)]
    # The transposed fp32 copy doubles the weights' memory: a 7B model in fp32 would need 56 GB.
    transpose = transpose and room_for_copy(sum(w.numel() for w in projections) * 4)

    def linear(weight):
        return Linear(weight, p, transpose)

    layers = [LayerWeights(b.attention_norm.weight.detach().to(stream), linear(b.attention.wqkv.weight),
                           linear(b.attention.wo.weight), b.ffn_norm.weight.detach().to(stream),
                           linear(b.feed_forward.w13.weight), linear(b.feed_forward.w2.weight))
              for b in model.layers]
    return Weights(p, model.tok_embeddings.weight.detach().to(stream), layers, model.norm.weight.detach().to(stream),
                   linear(model.output.weight), stream)


def room_for_copy(nbytes: int) -> bool:
    """Whether one more copy of `nbytes` of weights fits in half the memory the system has available: the rule
    for every extra layout of the weights (the transposed fp32 copy here, the C step's packed tiles)."""
    return nbytes <= available_memory_bytes() // 2


def available_memory_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux); elsewhere a size that allows the copy."""
    value = (_proc_field("/proc/meminfo", "MemAvailable:") or "").split()  # "<n> kB"
    return int(value[0]) * 1024 if value and value[0].isdigit() else 1 << 62


def load_for_engine(path, config: EngineConfig, device: str | None = None):
    """A checkpoint loaded for the engine (codelm.model.checkpoint.Loaded): fp32 on a CPU, where the engine
    makes its own bf16/int8 copies; the requested dtype (bf16 for auto) on a GPU."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check(config, torch.device(device))
    if device == "cpu":
        dtype = "float32"
    else:
        dtype = "bfloat16" if config.dtype == "auto" else config.dtype
    loaded = load(path, dtype=dtype, device=device)
    if loaded.tokenizer is None:
        raise TokenizerError(f"{path}: no tokenizer.json or tokenizer.model beside the checkpoint")
    return loaded
