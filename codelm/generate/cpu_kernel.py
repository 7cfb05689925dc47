"""The engine's C decoding step (decode_step.c): compiled on this machine at first use, called through ctypes.

At one to a few rows a decoding step of a small model is bounded by how fast its weights stream and
by the ~25 torch ops a layer costs in dispatch; one C function per step does the whole forward pass
(fp32 or int8 weights, fp32 everything else) with loops vectorized for this CPU, for up to MAX_ROWS rows. The same
function prefills a prompt (its tokens as rows of one cache slot, PREFILL_ROWS per call): at many
rows its products run from cache near the FMA units' rate (~100 G multiply-adds/s at one thread on
the development machine, an AMD EPYC whose FMA loop peaks at 122 G/s), where MKL's reached ~60 G/s.

The library is built with `$CC` (default `cc`) as `-O3 -march=native -fopenmp` (AVX-512 where the CPU
has it, AVX2 or scalar code elsewhere; without -fopenmp, then without -march=native, where the compiler
refuses them) into `<cache_root>/kernels/`, named by a hash of the source (and vectors.h), the flags,
the compiler's version and the CPU's flags, so a changed source, compiler or machine builds anew and a
copy is never shared by two CPUs it was not built for. Written to a temporary file and renamed, so concurrent processes never load half a
library. When there is no compiler or the build fails, decoding runs on the torch path, with one
warning line naming what is missing.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from codelm.errors import warn
from codelm.files import cache_root
from codelm.generate.weights import Linear, Weights, cpu_flags, room_for_copy

SOURCE = Path(__file__).with_name("decode_step.c")  # includes vectors.h, beside it
FLAGS = ("-O3", "-fopenmp-simd", "-shared", "-fPIC")
# Tried in turn: OpenMP threads where the compiler has them, then one thread; this CPU's vector units,
# then the compiler's default target.
VARIANTS = (("-march=native", "-fopenmp"), ("-march=native",), ())
# Rows decoded by the C step at most (more take the torch path), and prompt tokens per call of it in a
# prefill: its scratch grows with the rows of a call. Measured at one thread (15M and 110M shapes, rows
# at positions 100-150): a decoding step of 32 to 256 rows ran 2.3-2.9x faster than the torch path's.
MAX_ROWS = 256
PREFILL_ROWS = 256


def prefill_limit(dim: int) -> int:
    """The longest prompt the C step prefills; longer ones take torch's (flash) attention. Its products
    run faster than MKL's, its attention (one query at a time) slower than torch's: measured at one thread,
    the C prefill ran 2.2-2.8x torch's at 128-512 tokens, 1.2-1.5x at 1-2K (dim 128, 256, 768 models),
    0.86-0.89x at 4K (dim 128, 256)."""
    return max(2048, 4 * dim)


# Threads: a decoding step of 4+ rows per thread splits its rows over torch's thread count (one parallel
# region per step; decode_step.c's codelm_forward). Otherwise, multiply-adds from which a product or
# attention is split over the threads: only 7B-class products (4096 x 4096 and up) and many-row
# prefills. Smaller steps stay on one thread: split from 1M up on this shared
# 2-core machine (2 threads, other jobs running), a 15M-shape batch-1 step took 70 ms against 3 ms, and
# a dim-256 model's eval generated in 105 s against 61 s unsplit (back to back, load 3-8): each of a
# step's ~30 parallel regions can wait for a thread the OS has not scheduled.
PARALLEL_WORK = 1 << 25


def row_threads(threads: int, weight_bytes: int, largest_product: int) -> int:
    """Threads a decoding step's rows may be split over (each thread reads every weight): all of them
    where the weights fit in the last-level cache, two where they do not (measured here: a 365 MB model,
    16 rows, 1.46x one thread), one where one row's largest product reaches PARALLEL_WORK (7B-class
    matrices: their products are split instead, and the weights read once)."""
    if threads <= 1 or largest_product >= PARALLEL_WORK:
        return 1
    return threads if weight_bytes * threads <= last_level_cache_bytes() else min(threads, 2)


@functools.lru_cache(maxsize=1)
def last_level_cache_bytes() -> int:
    """The largest CPU cache Linux reports (sysfs; "32768K"); 8 MB where none is readable."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text))
        except (OSError, ValueError):
            pass
    return max(sizes, default=8 << 20)


class _Model(ctypes.Structure):
    """decode_step.c's `Model`, field for field."""
    _fields_ = [(name, ctypes.c_int64) for name in
                ("dim", "hidden", "n_layers", "n_heads", "n_kv", "head_dim", "vocab", "int8")] + [
        ("eps", ctypes.c_double), ("threads", ctypes.c_int64), ("parallel_work", ctypes.c_int64),
        ("row_threads", ctypes.c_int64)] + [
        (name, ctypes.c_void_p) for name in ("emb", "norm", "out_w", "out_s")] + [
        ("layers", ctypes.POINTER(ctypes.c_void_p))]


def _source_texts() -> list[str]:
    """decode_step.c and the headers beside it (vectors.h): what a build is named by."""
    return [SOURCE.read_text()] + [h.read_text() for h in sorted(SOURCE.parent.glob("*.h"))]


def _compiler_version(cc: list[str]) -> str | None:
    if not cc or shutil.which(cc[0]) is None:
        return None
    try:
        done = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _build(cc: list[str], flags: tuple[str, ...], target: Path) -> str | None:
    """Compile SOURCE into target (atomically); None on success, else the compiler's first error line."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        os.close(fd)
        done = subprocess.run([*cc, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if "error" in ln] or done.stderr.splitlines() or ["?"]
            return lines[0].strip()
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=None)
def _library(cc: str) -> ctypes.CDLL | None:
    """The compiled library for compiler `cc` (built when not in the cache); None, with one warning, when
    it cannot be built or loaded."""
    version = _compiler_version(shlex.split(cc))
    if version is None:
        warn(f"no working C compiler ({cc}; set CC): decoding runs on the torch path")
        return None
    errors = []
    for variant in VARIANTS:
        flags = (*variant, *FLAGS)
        key = hashlib.sha256("\0".join([*_source_texts(), cc, version, " ".join(flags), platform.machine(),
                                        " ".join(sorted(cpu_flags()))]).encode()).hexdigest()[:16]
        target = cache_root() / "kernels" / f"decode_step-{key}.so"
        error = None if target.exists() else _build(shlex.split(cc), flags, target)
        if error is None:
            try:
                lib = ctypes.CDLL(str(target))
            except OSError as e:
                errors.append(str(e))
                continue
            lib.codelm_forward.restype = None
            lib.codelm_forward.argtypes = [ctypes.POINTER(_Model), ctypes.c_int64] + [ctypes.c_void_p] * 7 + [
                ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            lib.codelm_scratch_floats.restype = lib.codelm_tile_width.restype = ctypes.c_int64
            lib.codelm_openmp.restype = ctypes.c_int64
            lib.codelm_exp_shifted.restype = ctypes.c_float
            lib.codelm_exp_shifted.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_int64]
            lib.codelm_scratch_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int64, ctypes.c_int64]
            return lib
        errors.append(error)
    warn(f"compiling {SOURCE.name} with {cc} failed ({errors[-1]}): decoding runs on the torch path")
    return None


def library() -> ctypes.CDLL | None:
    """The C step's library for $CC (a command line, e.g. "ccache gcc"; default cc), or None."""
    return _library(os.environ.get("CC") or "cc")


def describe() -> str:
    """Which build of the C step this machine runs (or why none), in words."""
    lib = library()
    if lib is None:
        return "not built (the torch path runs)"
    bits = lib.codelm_tile_width() * 8  # a tile is four vectors of 4-byte floats
    isa = {512: "AVX-512", 256: "AVX2"}.get(bits, "scalar")
    return f"{isa} ({bits}-bit vectors), " + ("OpenMP threads" if lib.codelm_openmp() else "one thread")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _pack(w: torch.Tensor, tile: int) -> torch.Tensor:
    """[out, in] as decode_step.c reads it: tiles of `tile` output rows, each [in, tile] (zero rows pad the last)."""
    out, n_in = w.shape
    w = torch.cat([w, w.new_zeros((-out) % tile, n_in)]) if out % tile else w
    return w.reshape(-1, tile, n_in).transpose(1, 2).contiguous()  # the one copy (two where the last tile is padded)


class DecodeKernel:
    """The C decoding step bound to one model's prepared weights (fp32 or int8 on a CPU)."""

    def __init__(self, lib: ctypes.CDLL, model, weights: Weights):
        c = model.config
        self.lib = lib
        self.int8 = weights.plan.weights == "int8"
        tile = lib.codelm_tile_width()
        if tile not in weights.packed:  # packed once per prepared weights (an engine is made per request)
            keep = [weights.embeddings, weights.norm]  # every tensor the C side reads: alive while these weights are

            def proj(lin: Linear):
                w, s = lin.rows()
                keep.extend([_pack(w, tile), s])
                return _ptr(keep[-2]), _ptr(s)

            ptrs = []
            for lw in weights.layers:
                keep.extend([lw.attention_norm, lw.ffn_norm])
                ptrs += [_ptr(lw.attention_norm), *proj(lw.wqkv), *proj(lw.wo), _ptr(lw.ffn_norm), *proj(lw.w13),
                         *proj(lw.w2)]
            weights.packed[tile] = (proj(weights.output), (ctypes.c_void_p * len(ptrs))(*ptrs), keep)
        (out_w, out_s), self.layer_ptrs, _ = weights.packed[tile]
        self.model = _Model(c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size,
                            int(self.int8), c.norm_eps, 1, PARALLEL_WORK, 1, _ptr(weights.embeddings),
                            _ptr(weights.norm), out_w, out_s, ctypes.cast(self.layer_ptrs, ctypes.POINTER(ctypes.c_void_p)))
        self.weights, self.vocab = weights, c.vocab_size
        self.scratch = torch.empty(0)
        rows = [lin.rows()[0] for lin in weights.linears()]
        self.weight_bytes = _nbytes(rows)
        self.largest_product = max(w.numel() for w in rows)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor | None,
                 sin: torch.Tensor | None, alibi: torch.Tensor | None, kv: torch.Tensor,
                 slots: torch.Tensor | None = None, logits_from: int = 0) -> torch.Tensor:
        """Logits [B - logits_from, V] for tokens [B] at positions [B] (int64), row b in cache slot
        slots[b] (default b); cos/sin [B, head_dim] fp32 rows (or None and ALiBi's slopes [n_heads]); kv
        the engine's cache. Rows of one slot at consecutive positions are a prompt's prefill (see
        codelm_forward); logits only for rows logits_from.. (a prefill wants its last row's)."""
        B = tokens.shape[0]
        self.model.threads = torch.get_num_threads()  # as many as torch's products would use
        self.model.row_threads = row_threads(self.model.threads, self.weight_bytes, self.largest_product)
        top = int(positions.max())
        if not (kv.is_contiguous() and kv.dtype == torch.float32 and tokens.dtype == torch.int64
                and positions.dtype == torch.int64 and top < kv.shape[4] and int(positions.min()) >= 0
                and (B <= kv.shape[2] if slots is None else
                     slots.dtype == torch.int64 and int(slots.max()) < kv.shape[2] and int(slots.min()) >= 0)):
            raise ValueError("decode kernel: tokens, positions or cache do not fit the kernel's layout")
        need = self.lib.codelm_scratch_floats(ctypes.byref(self.model), B, kv.shape[4])
        if self.scratch.numel() < need:
            self.scratch = torch.empty(need, dtype=torch.float32)
        logits = torch.empty(max(B - logits_from, 0), self.vocab, dtype=torch.float32)
        self.lib.codelm_forward(ctypes.byref(self.model), B, _ptr(tokens), _ptr(positions), _ptr(slots), _ptr(cos),
                                _ptr(sin), _ptr(alibi), _ptr(kv), kv.shape[2], kv.shape[4], _ptr(self.scratch),
                                _ptr(logits), logits_from)
        return logits


def for_engine(model, weights: Weights, choice: str) -> DecodeKernel | None:
    """The C step for this model and weight format, or None where the torch path runs: `choice` "torch",
    weights not fp32/int8 on a CPU, no room for the packed copy in half the available memory (as for
    weights.py's transposed copy), or no compiler (warned once)."""
    if not may_run(choice, weights.embeddings.device) or weights.stream_dtype != torch.float32:
        return None
    if weights.plan.weights not in ("float32", "int8"):
        return None
    if not weights.packed and not room_for_copy(_nbytes([lin.rows()[0] for lin in weights.linears()])):
        return None
    return DecodeKernel(library(), model, weights)


def may_run(choice: str, device: torch.device) -> bool:
    """Whether the C step can run for this --kernel choice on this device: a CPU, and a compiler that built it."""
    return choice != "torch" and device.type == "cpu" and library() is not None


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
