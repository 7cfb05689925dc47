"""The C decoding step (codelm/generate/decode_step.c): the same logits as the engine's torch path for
MHA, GQA, MQA and ALiBi, fp32 and int8, rows at different positions, head sizes its vector loops split
every way; prefill through the same function (in chunks, a prompt's tokens as rows of one slot);
built once into the cache; without a compiler the torch path runs, with one warning."""
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
    # head sizes 48 (3 vectors of 16, or 6 of 8) and 8 (under one AVX-512 vector: the scalar loops)
    "head48": dict(dim=96, n_heads=2, n_kv_heads=1),
    "head8": dict(dim=64, n_heads=8, n_kv_heads=8),
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


def _count_calls(monkeypatch, name: str) -> list:
    """Calls of Engine.<name> (the C step's decode or prefill), counted as they run."""
    calls, original = [], getattr(Engine, name)
    monkeypatch.setattr(Engine, name, lambda self, *a: calls.append(1) or original(self, *a))
    return calls


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


def _prefill(model, config: EngineConfig, prompt: list[int], every: bool = False) -> torch.Tensor:
    e = Engine(model, config)
    e._reserve(len(prompt) + 1, 1)
    with torch.inference_mode():
        return e._prefill(0, prompt, every)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_prefill_by_the_kernel_equals_torchs_in_chunks_and_whole(shape, monkeypatch):
    """A prompt of 70 tokens in chunks of 16 rows (the last one short), every position's logits and the
    last one's: torch's numbers to float rounding; and the keys it wrote serve the next step."""
    m = _model(shape, seed=8)
    prompt = [(5 * i + 1) % 96 + 1 for i in range(70)]
    monkeypatch.setattr(cpu_kernel, "PREFILL_ROWS", 16)
    calls = _count_calls(monkeypatch, "_prefill_kernel")
    for every in (False, True):
        got = _prefill(m, EngineConfig(), prompt, every)
        ref = _prefill(m, EngineConfig(kernel="torch"), prompt, every)
        assert got.shape == ref.shape == ((70, 97) if every else (97,))
        assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4
    assert len(calls) == 2
    with torch.no_grad():  # and the model's own forward pass
        assert float((got - m(torch.tensor([prompt]))[0]).abs().max() / ref.abs().max()) < 1e-4


def test_long_prompts_take_torchs_prefill(monkeypatch):
    assert cpu_kernel.prefill_limit(128) == 2048 and cpu_kernel.prefill_limit(4096) == 16384
    m = _model("gqa", seed=9)
    calls = _count_calls(monkeypatch, "_prefill_kernel")
    monkeypatch.setattr(cpu_kernel, "prefill_limit", lambda dim: 10)
    _prefill(m, EngineConfig(), list(range(1, 11)))
    assert len(calls) == 1
    _prefill(m, EngineConfig(), list(range(1, 12)))
    assert len(calls) == 1


def test_the_vectorized_exp_is_within_a_few_ulp_of_libms():
    """Softmax and SwiGLU use the step's own exp (a polynomial, vector lanes and scalar tail alike)."""
    _check_exp(cpu_kernel.library())


def _check_exp(lib):
    x = torch.cat([torch.linspace(-87, 88, 200_003), torch.tensor([0.0, -1e-8, 1e-8, 88.3, -90.0, -1e4])])
    out = torch.empty_like(x)
    lib.codelm_exp_shifted(out.data_ptr(), x.data_ptr(), 0.0, x.numel())
    ref = x.double().exp()
    fine = x > -87.3
    assert float(((out.double() - ref) / ref)[fine].abs().max()) < 2.4e-7  # 2 ulp (measured: 1.2e-7)
    assert bool((out[~fine] >= 0).all() and (out[~fine] < 1.2e-38).all())  # underflow: a tiny number, never nan
    scores = torch.linspace(-20, 5, 1001)  # a softmax's: shifted by its max, and summed
    shifted = torch.empty_like(scores)
    total = lib.codelm_exp_shifted(shifted.data_ptr(), scores.data_ptr(), 5.0, scores.numel())
    assert torch.allclose(shifted.double(), (scores - 5).double().exp(), rtol=4e-7, atol=0)
    assert abs(total - float(shifted.double().sum())) / total < 1e-6


def test_a_row_decodes_the_same_alone_and_in_any_batch():
    """Each row's sums run in one order whatever rows share its step: bit-identical logits."""
    m = _model("gqa", seed=2)
    together = _step_logits(m, EngineConfig(max_batch=5), 5)
    alone = _step_logits(m, EngineConfig(max_batch=1), 1)
    assert torch.equal(together[:1], alone)


def test_rows_beyond_the_kernels_limit_take_the_torch_path(monkeypatch):
    m = _model("mha", seed=3)
    calls = _count_calls(monkeypatch, "_decode_kernel")
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


def test_a_changed_header_builds_anew(tmp_path, monkeypatch):
    """vectors.h is part of what names a build: editing it alone does not load a stale library."""
    src = tmp_path / "src"
    src.mkdir()
    for f in (cpu_kernel.SOURCE, cpu_kernel.SOURCE.with_name("vectors.h")):
        (src / f.name).write_text(f.read_text())
    monkeypatch.setattr(cpu_kernel, "SOURCE", src / "decode_step.c")
    monkeypatch.setenv("CODELM_CACHE_DIR", str(tmp_path / "cache"))
    cpu_kernel._library.cache_clear()
    try:
        assert cpu_kernel.library() is not None
        (src / "vectors.h").write_text((src / "vectors.h").read_text() + "/* edited */\n")
        cpu_kernel._library.cache_clear()
        assert cpu_kernel.library() is not None
        assert len(list((tmp_path / "cache" / "kernels").glob("decode_step-*.so"))) == 2
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


def test_with_the_c_step_the_weights_are_not_copied_a_second_time():
    """fp32 memory with the C step: the model's tensors and the packed tiles, no transposed torch copy."""
    m = _model("gqa", seed=10)
    c_step, torch_path = Engine(m, EngineConfig()).weights, Engine(m, EngineConfig(kernel="torch")).weights
    lins = [c_step.output] + [x for lw in c_step.layers for x in (lw.wqkv, lw.wo, lw.w13, lw.w2)]
    assert not any(lin.transposed for lin in lins)
    assert c_step.output.w.data_ptr() == m.output.weight.data_ptr()  # the model's own tensor
    assert torch_path.output.transposed and torch_path.output.w.data_ptr() != m.output.weight.data_ptr()


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
        _check_exp(cpu_kernel.library())
        m = _model("gqa", seed=6)
        for quantize in ("none", "int8"):
            got = _step_logits(m, EngineConfig(quantize=quantize, max_batch=5), 5)
            ref = _step_logits(m, EngineConfig(quantize=quantize, max_batch=5, kernel="torch"), 5)
            assert float((got - ref).abs().max() / ref.abs().max()) < (1e-4 if quantize == "none" else 0.02)
    finally:
        cpu_kernel._library.cache_clear()


def test_rows_split_over_threads_compute_the_same():
    """Two threads with 4+ rows each take a share of a decoding step's rows (one parallel region): each
    row's logits bit-identical to the one-thread step, and the torch path's to float rounding."""
    if not cpu_kernel.library().codelm_openmp():
        pytest.skip("this compiler built the step without OpenMP")
    m = _model("alibi", seed=11)
    rows, threads = 9, torch.get_num_threads()

    def step(config, n):
        e = Engine(m, config)
        e._reserve(40, rows)
        with torch.inference_mode():
            for slot in range(rows):
                e._prefill(slot, [(3 * slot + 5 * i) % 90 + 1 for i in range(3 + 3 * slot)])
            torch.set_num_threads(n)
            try:
                return e._decode([(7 * b) % 90 + 2 for b in range(rows)], [3 + 3 * b for b in range(rows)])
            finally:
                torch.set_num_threads(threads)

    one, two = step(EngineConfig(max_batch=rows), 1), step(EngineConfig(max_batch=rows), 2)
    assert torch.equal(one, two)
    ref = step(EngineConfig(max_batch=rows, kernel="torch"), 1)
    assert float((two - ref).abs().max() / ref.abs().max()) < 1e-4


def test_rows_are_split_only_where_rereading_the_weights_is_cheap(monkeypatch):
    monkeypatch.setattr(cpu_kernel, "last_level_cache_bytes", lambda: 32 << 20)
    assert cpu_kernel.row_threads(8, 2 << 20, 1 << 20) == 8  # 8 x 2 MB of weights fit in the cache
    assert cpu_kernel.row_threads(8, 100 << 20, 1 << 20) == 2  # beyond it: at most twice the reads
    assert cpu_kernel.row_threads(8, 28 << 30, cpu_kernel.PARALLEL_WORK) == 1  # 7B-class: split products
    assert cpu_kernel.row_threads(1, 2 << 20, 1 << 20) == 1


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
