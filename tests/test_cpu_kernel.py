"""The C decoding step (codelm/generate/decode_step.c): the same logits as the engine's torch path for
MHA, GQA, MQA and ALiBi, fp32 and int8, rows at different positions; built once into the cache; without a
compiler the torch path runs, with one warning."""
import platform

import pytest
import torch
from helpers import tiny_llama

from codelm.generate import cpu_kernel, weights
from codelm.generate.weights import cpu_flags
from codelm.generate.engine import Engine
from codelm.generate.weights import EngineConfig

SHAPES = {  # heads / kv heads: MHA, GQA, MQA; and ALiBi (no RoPE)
    "mha": dict(n_heads=4, n_kv_heads=4),
    "gqa": dict(dim=128, n_heads=8, n_kv_heads=2),
    "mqa": dict(n_heads=4, n_kv_heads=1),
    "alibi": dict(n_heads=4, n_kv_heads=2, position_encoding="alibi"),
}
PROMPT_LENGTHS = [5, 1, 17, 9, 30]  # rows at different positions


def _step_logits(model, config: EngineConfig, rows: int, tokens=(3, 7, 11, 2, 5)) -> torch.Tensor:
    """Logits of one decoding step of `rows` rows, each after its own prompt (prefilled by torch)."""
    e = Engine(model, config)
    lengths = PROMPT_LENGTHS[:rows]
    e._reserve(max(lengths) + 1, rows)
    with torch.inference_mode():
        for slot, n in enumerate(lengths):
            e._prefill(slot, [(7 * slot + 3 * i) % 50 + 1 for i in range(n)])
        return e._decode(list(tokens[:rows]), lengths)


def _model(shape: str, seed: int = 0):
    return tiny_llama(97, seed=seed, **SHAPES[shape])


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("rows", [1, 5])
def test_fp32_kernel_equals_the_torch_path(shape, rows):
    m = _model(shape)
    assert Engine(m, EngineConfig()).kernel is not None and Engine(m, EngineConfig(kernel="torch")).kernel is None
    got = _step_logits(m, EngineConfig(max_batch=rows), rows)
    ref = _step_logits(m, EngineConfig(max_batch=rows, kernel="torch"), rows)
    # fp32 both ways; only the order of each sum differs: within 1e-4 of the logits' largest magnitude
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4


@pytest.mark.parametrize("shape", ["gqa", "alibi"])
def test_int8_kernel_computes_the_dequantized_weights_and_stays_near_torchs_int8(shape):
    m = _model(shape, seed=1)
    int8 = EngineConfig(quantize="int8", max_batch=5)
    # torch's int8 kernel feeds bf16 activations where the CPU has bf16 units: near, not equal
    torch_int8 = _step_logits(m, EngineConfig(quantize="int8", max_batch=5, kernel="torch"), 5)
    got = _step_logits(m, int8, 5)
    assert float((got - torch_int8).abs().max() / torch_int8.abs().max()) < 0.02
    # With fp32 activations and scales in torch's int8 prefill too, the kernel's step equals, to float
    # rounding, the fp32 torch path on the model whose weights are the int8 ones (q * scale).
    w = Engine(m, int8).weights
    deq = _model(shape, seed=1)
    pairs = [(b.attention.wqkv, lw.wqkv) for b, lw in zip(deq.layers, w.layers)] + \
            [(b.attention.wo, lw.wo) for b, lw in zip(deq.layers, w.layers)] + \
            [(b.feed_forward.w13, lw.w13) for b, lw in zip(deq.layers, w.layers)] + \
            [(b.feed_forward.w2, lw.w2) for b, lw in zip(deq.layers, w.layers)] + [(deq.output, w.output)]
    with torch.no_grad():
        for param, lin in pairs:
            q, scale = lin.rows()
            param.weight.copy_(q.float() * scale[:, None])
            lin.act, lin.scale = torch.float32, scale
    got = _step_logits(m, int8, 5)
    ref = _step_logits(deq, EngineConfig(max_batch=5, kernel="torch"), 5)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4


def test_a_row_decodes_the_same_alone_and_in_any_batch():
    """Each row's sums run in one order whatever rows share its step: bit-identical logits."""
    m = _model("gqa", seed=2)
    together = _step_logits(m, EngineConfig(max_batch=5), 5)
    alone = _step_logits(m, EngineConfig(max_batch=1), 1)
    assert torch.equal(together[:1], alone)


def test_rows_beyond_the_kernels_limit_take_the_torch_path(monkeypatch):
    m = _model("mha", seed=3)
    calls = []
    original = cpu_kernel.DecodeKernel.__call__
    monkeypatch.setattr(cpu_kernel.DecodeKernel, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    monkeypatch.setattr(cpu_kernel, "MAX_ROWS", 4)
    big = _step_logits(m, EngineConfig(max_batch=5), 5)
    assert not calls
    small = _step_logits(m, EngineConfig(max_batch=4), 4)
    assert calls and float((small - big[:4]).abs().max() / big.abs().max()) < 1e-4


def test_built_once_into_the_cache_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("CODELM_CACHE_DIR", str(tmp_path))
    cpu_kernel._library.cache_clear()
    try:
        assert cpu_kernel.library() is not None
        built = sorted(p.name for p in (tmp_path / "kernels").iterdir())
        assert len(built) == 1 and built[0].startswith("decode_step-") and built[0].endswith(".so")  # no temp left
        stamp = (tmp_path / "kernels" / built[0]).stat().st_mtime_ns
        cpu_kernel._library.cache_clear()
        assert cpu_kernel.library() is not None  # a new process: loaded, not built again
        assert (tmp_path / "kernels" / built[0]).stat().st_mtime_ns == stamp
    finally:
        cpu_kernel._library.cache_clear()


def test_without_a_compiler_the_torch_path_runs_and_says_so_once(tmp_path, monkeypatch, capsys):
    m = _model("gqa", seed=4)
    monkeypatch.setenv("CODELM_CACHE_DIR", str(tmp_path))
    ref = _step_logits(m, EngineConfig(max_batch=3, kernel="torch"), 3)
    failing = tmp_path / "fakecc"  # answers --version, fails every compile
    failing.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo fakecc 1.0; exit 0; }\n"
                       "echo 'fakecc: error: cannot compile' >&2; exit 1\n")
    failing.chmod(0o755)
    for cc, message in (("/nonexistent/cc", "no working C compiler (/nonexistent/cc"),
                        (str(failing), "fakecc: error: cannot compile")):
        monkeypatch.setenv("CC", cc)
        cpu_kernel._library.cache_clear()
        try:
            engines = [Engine(m, EngineConfig(max_batch=3)) for _ in range(2)]
            assert all(e.kernel is None for e in engines)
            err = capsys.readouterr().err
            assert err.count("warning") == 1 and message in err and "torch path" in err
            assert torch.equal(_step_logits(m, EngineConfig(max_batch=3), 3), ref)  # the torch path's numbers
        finally:
            cpu_kernel._library.cache_clear()
    assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-built left behind


def test_no_room_for_the_packed_copy_keeps_the_torch_path(monkeypatch):
    m = _model("mha", seed=5)
    monkeypatch.setattr(weights, "available_memory_bytes", lambda: 1024)
    assert Engine(m, EngineConfig()).kernel is None
    monkeypatch.undo()
    assert Engine(m, EngineConfig()).kernel is not None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or "avx2" not in cpu_flags(),
                    reason="builds the x86 AVX2 and plain-C variants of the step")
@pytest.mark.parametrize("flags, tile", [(("-mno-avx512f",), 32), (("-mno-avx512f", "-mno-avx2", "-mno-fma"), 4)])
def test_the_avx2_and_plain_c_builds_compute_the_same(flags, tile, tmp_path, monkeypatch):
    """What an AVX2-only CPU, or one with neither AVX2 nor AVX-512, compiles from the same source."""
    monkeypatch.setenv("CODELM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_kernel, "VARIANTS", (("-march=native", *flags),))
    cpu_kernel._library.cache_clear()
    try:
        assert cpu_kernel.library().codelm_tile_width() == tile
        m = _model("gqa", seed=6)
        for quantize in ("none", "int8"):
            got = _step_logits(m, EngineConfig(quantize=quantize, max_batch=5), 5)
            ref = _step_logits(m, EngineConfig(quantize=quantize, max_batch=5, kernel="torch"), 5)
            assert float((got - ref).abs().max() / ref.abs().max()) < (1e-4 if quantize == "none" else 0.02)
    finally:
        cpu_kernel._library.cache_clear()


def test_the_threaded_step_computes_the_same(monkeypatch):
    """Every product and attention split over two OpenMP threads (where the build has them): same logits."""
    if not cpu_kernel.library().codelm_openmp():
        pytest.skip("this compiler built the step without OpenMP")
    m = _model("gqa", seed=7)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        single = _step_logits(m, EngineConfig(max_batch=5), 5)
        kernel = Engine(m, EngineConfig(max_batch=5)).kernel
        assert kernel.model.parallel_work == cpu_kernel.PARALLEL_WORK
        monkeypatch.setattr(cpu_kernel, "PARALLEL_WORK", 0)  # split even the smallest loop
        threaded = _step_logits(m, EngineConfig(max_batch=5), 5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(threaded, single)  # each output's sum runs in one thread, in one order
