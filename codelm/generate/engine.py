"""The native generation engine: continuous batching over a fixed set of KV-cache slots.

Each row (one prompt with its own sampling settings, token limit, stop tokens and stop strings) gets a
slot: its prompt is prefilled into the slot alone, then it decodes with every other live row, one
token per row per step, each at its own position. A row that finishes (stop token, stop string, its
token limit, or cancelled by its caller) frees its slot at once and the next waiting row is prefilled
into it. Every row samples from its own RNG stream, seeded from its request, so what a row generates
does not depend on the rows that share its batch: the same as generating it alone.

Live rows always occupy slots 0..B-1 (a finished row's slot takes the last row's cache), so a step
reads one contiguous block of the cache, and only the first max(position)+1 entries of it: a step
costs what the rows have written, not the context the model allows. Rows at different positions are
told apart by a key mask. A prompt already in a live slot (n samples of one task) is copied from
there instead of being prefilled again.

The forward pass here runs the model's weights as `weights.prepare` laid them out (fp32, bf16 or int8,
fused q/k/v and gate/up projections, fused RMSNorm): the model file stays the plain reference network.
On a CPU a decoding step of fp32 or int8 weights is one call of the C step (cpu_kernel.py), compiled
for this machine at first use, and so is the prefill of a prompt of up to cpu_kernel.prefill_limit
tokens (PREFILL_ROWS tokens per call); longer prompts, bf16, GPUs and the fallback run the torch code below.
"""
from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from codelm.generate import cpu_kernel
from codelm.generate.sampler import Generation, SamplingParams, sample_next
from codelm.generate.stops import find_stop
from codelm.generate.weights import EngineConfig, Weights, prepare
from codelm.model.positions import alibi_bias, apply_rope


@dataclass(eq=False)
class Row:
    """One generation request to the engine. `seed` None draws one from torch's global RNG at submit."""
    prompt: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    decode: Callable[[list[int]], str]
    limit: int  # new tokens at most
    seed: int | None = None
    on_text: Callable[[str], None] | None = None  # streamed text, as it is fixed
    on_done: Callable[["Row"], None] | None = None
    cancelled: bool = False  # set by the caller (e.g. its client hung up): the slot is freed at the next step
    result: Generation | None = None
    error: BaseException | None = None
    # decoding state
    tokens: list[int] = field(default_factory=list)
    stop_hit: str | None = None
    cut_text: str | None = None  # the text before the stop string, once one is hit
    prompt_logits: torch.Tensor | None = None
    pos: int = 0  # entries of its cache slot written
    next_token: int = -1  # sampled, not yet in the cache
    streamed: int = 0
    generator: torch.Generator | None = None


_PREPARED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def prepared(model, config: EngineConfig) -> Weights:
    """The model's weights for `config`, prepared once per model and format, and again after its weights
    changed (moved, replaced, or trained in place: a tensor's version counter counts in-place writes).
    Where the C step can run, no transposed fp32 copy is made: the C step packs its own, and the torch
    path is left only long prompts and many rows, whose products need no other layout."""
    per_model = _PREPARED.setdefault(model, {})
    key = (config.dtype, config.quantize, config.kernel)
    stamp = tuple((p.data_ptr(), p._version, p.device) for p in model.parameters())
    if key not in per_model or per_model[key][0] != stamp:
        c_step = cpu_kernel.may_run(config.kernel, model.tok_embeddings.weight.device)
        per_model[key] = (stamp, prepare(model, config, transpose=not c_step))
    return per_model[key][1]


class Engine:
    def __init__(self, model, config: EngineConfig | None = None):
        self.model, self.config = model, config or EngineConfig()
        self.weights = prepared(model, self.config)
        self.kernel = cpu_kernel.for_engine(model, self.weights, self.config.kernel)  # None: the torch path
        c = model.config
        self.n_heads, self.n_kv, self.head_dim, self.eps = c.n_heads, c.n_kv_heads, c.head_dim, c.norm_eps
        self.device = model.tok_embeddings.weight.device
        self.slots = self.config.max_batch
        self.cap = 0  # positions per slot, grown on demand
        self.kv = self.k = self.v = None  # kv [layers, 2, slots, n_kv, cap, head_dim]; k, v its two halves
        self.live: list[Row] = []  # live[i] occupies slot i
        self.waiting: deque[Row] = deque()
        self.lock = threading.Lock()  # guards `waiting` (submit may come from other threads)

    # ------------------------------------------------------------------ scheduling
    def submit(self, row: Row) -> Row:
        if not row.prompt:
            raise ValueError("every prompt needs at least one token")
        if row.seed is None and row.params.temperature > 0:
            row.seed = int(torch.randint(0, 2**62, (1,)))
        with self.lock:
            self.waiting.append(row)
        return row

    @property
    def busy(self) -> bool:
        return bool(self.live or self.waiting)

    def run(self, rows: list[Row], on_step: Callable[[int], None] | None = None) -> list[Generation]:
        """Generate every row (in this thread); results in the rows' order."""
        for row in rows:
            self.submit(row)
        while self.busy:
            self.step()
            if on_step is not None:
                on_step(len(self.live))
        for row in rows:
            if row.error is not None:
                raise row.error
        return [row.result for row in rows]

    @torch.inference_mode()
    def step(self) -> None:
        """Free cancelled slots, prefill waiting rows into free ones, then decode one token for every live row."""
        for i in reversed(range(len(self.live))):
            if self.live[i].cancelled:
                self._finish(i, "cancelled")
        while len(self.live) < self.slots:
            with self.lock:
                if not self.waiting:
                    break
                row = self.waiting.popleft()
            if row.cancelled or row.limit <= 0:
                self._done(row, "cancelled" if row.cancelled else "length")
                continue
            self._admit(row)
        if not self.live:
            return
        logits = self._decode([r.next_token for r in self.live], [r.pos for r in self.live])
        for r in self.live:
            r.pos += 1
        self._sample_all(logits)

    def fail_all(self, error: BaseException) -> None:
        """Stop every row with `error` (the serving loop calls this when a step raises)."""
        with self.lock:
            rows, self.waiting = list(self.waiting) + self.live, deque()
        self.live = []
        for row in rows:
            row.error = error
            if row.on_done is not None:
                row.on_done(row)

    # ------------------------------------------------------------------ rows
    def _admit(self, row: Row) -> None:
        T = len(row.prompt)
        slot = len(self.live)
        self._reserve(T + row.limit - 1, slot + 1)
        twin = next((r for r in self.live if r.prompt == row.prompt), None)
        if twin is not None:  # the same prompt is in a live slot: its first T cache entries are this prompt's
            src = self.live.index(twin)
            self.kv[:, :, slot, :, :T] = self.kv[:, :, src, :, :T]
            logits = twin.prompt_logits
        else:
            logits = self._prefill(slot, row.prompt)
        row.prompt_logits = logits
        row.pos = T
        if row.params.temperature > 0:
            row.generator = torch.Generator(device=self.device).manual_seed(row.seed)
        self.live.append(row)
        self._sample_all(logits[None], rows=[row])

    def _sample_all(self, logits: torch.Tensor, rows: list[Row] | None = None) -> None:
        rows = self.live if rows is None else rows
        greedy = logits.argmax(dim=-1).tolist()
        finished = []
        for i, row in enumerate(rows):
            if row.params.temperature == 0:
                tok = greedy[i]
            else:
                tok = int(sample_next(logits[i:i + 1], row.params, row.generator))
            reason = self._accept(row, tok)
            if reason is not None:
                finished.append((row, reason))
        for row, reason in finished:
            self._finish(self.live.index(row), reason)

    def _accept(self, row: Row, tok: int) -> str | None:
        """Take a sampled token; the finish reason when the row is done."""
        if tok in row.stop_ids:
            return "stop_token"
        row.tokens.append(tok)
        row.next_token = tok
        stops = [s for s in row.params.stop if s]
        if stops or row.on_text is not None:
            text = row.decode(row.tokens)
            hit = find_stop(text, stops) if stops else None
            if hit is not None:
                row.stop_hit, row.cut_text = hit[1], text[: hit[0]]
                row.tokens = _trim_tokens(row.tokens, text[: hit[0]], row.decode)
                return "stop_string"
            if row.on_text is not None:
                # Hold back a trailing partial character, and enough text that a stop string being typed is never shown.
                hold = max((len(s) for s in stops), default=1) - 1
                stable = text.rstrip("\ufffd")
                stable = stable[: max(row.streamed, len(stable) - hold)]
                if len(stable) > row.streamed:
                    row.on_text(stable[row.streamed:])
                    row.streamed = len(stable)
        return "length" if len(row.tokens) >= row.limit else None

    def _finish(self, i: int, reason: str) -> None:
        """Row i is done: the last live row moves into its slot, so live rows stay in slots 0..B-1."""
        row = self.live[i]
        last = len(self.live) - 1
        if i != last:
            moved = self.live[last]
            self.kv[:, :, i, :, :moved.pos] = self.kv[:, :, last, :, :moved.pos]
            self.live[i] = moved
        self.live.pop()
        self._done(row, reason)

    def _done(self, row: Row, reason: str) -> None:
        text = row.cut_text if reason == "stop_string" else row.decode(row.tokens)
        row.result = Generation(row.tokens, text, reason, row.stop_hit, len(row.prompt))
        if row.on_text is not None and len(text) > row.streamed and reason != "cancelled":
            row.on_text(text[row.streamed:])
            row.streamed = len(text)
        if row.on_done is not None:
            row.on_done(row)

    # ------------------------------------------------------------------ the cache
    def _reserve(self, need: int, slots: int = 1) -> None:
        """Room for `need` positions in each of the first `slots` slots; grown by doubling, so a short
        generation never allocates (and zeroes) the cache that max_batch x the context would take."""
        have = 0 if self.kv is None else self.kv.shape[2]
        need, slots = max(need, 1), min(self.slots, max(slots, 1))
        if need <= self.cap and slots <= have:
            return
        cap = self.cap if need <= self.cap else max(need, 2 * self.cap)
        n = have if slots <= have else min(self.slots, max(slots, 2 * have))
        # Keys and values of a layer in one tensor: a decoding step writes both with one copy.
        shape = (len(self.weights.layers), 2, n, self.n_kv, cap, self.head_dim)
        kv = torch.zeros(shape, dtype=self.weights.stream_dtype, device=self.device)
        if self.kv is not None:
            kv[:, :, :have, :, : self.cap] = self.kv
        self.kv, self.k, self.v, self.cap = kv, kv[:, 0], kv[:, 1], cap

    # ------------------------------------------------------------------ the forward pass
    @torch.inference_mode()
    def logits(self, tokens: list[int]) -> torch.Tensor:
        """Logits [T, V] of every position of one sequence, in this engine's weight format (perplexity)."""
        self._reserve(len(tokens))
        return self._prefill(0, tokens, every=True)

    def _prefill(self, slot: int, prompt: list[int], every: bool = False) -> torch.Tensor:
        """Run one prompt, writing its keys/values to `slot`; the last position's logits [V] (every: [T, V])."""
        T = len(prompt)
        if self.kernel is not None and T <= cpu_kernel.prefill_limit(self.model.config.dim):
            return self._prefill_kernel(slot, prompt, every)
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        cos, sin = self._rope(None, T)
        bias = None
        if self.model.alibi:
            pos = torch.arange(T, device=self.device)[None]
            causal = pos[0][:, None] >= pos[0][None, :]
            bias = alibi_bias(self.model.alibi_slopes, pos, pos).masked_fill(~causal, float("-inf"))
        h = self.weights.embeddings[ids]
        for li, w in enumerate(self.weights.layers):
            q, k, v = self._qkv(w, h, cos, sin)
            self.k[li, slot, :, :T] = k[0]
            self.v[li, slot, :, :T] = v[0]
            if bias is None:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=self.n_kv != self.n_heads)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=self.n_kv != self.n_heads)
            h = self._rest_of_layer(w, h, out)
        return self._logits(h[0]) if every else self._logits(h[:, -1])[0]

    def _decode(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token for each of the B live rows (slots 0..B-1), each at its position; logits [B, V].

        At one token per row, op count rather than arithmetic bounds a small model's step, so the stream
        stays [B, dim] (no sequence axis to reshape), RoPE rotates q and k in place, and each layer writes
        its new keys and values with one copy (a slice when every row is at one position, as at batch 1).
        Up to cpu_kernel.MAX_ROWS rows on a CPU, the whole step is one call of the C kernel instead."""
        B, n = len(tokens), max(positions) + 1
        if self.kernel is not None and B <= cpu_kernel.MAX_ROWS:
            return self._decode_kernel(tokens, positions)
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        same = min(positions) == n - 1  # every row at position n - 1
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        pos = None if same and not self.model.alibi else torch.tensor(positions, dtype=torch.long, device=self.device)
        cos, sin = self._rope(None if same else pos, 1, n - 1)
        if cos is not None:
            cos, sin = cos.view(-1, 1, D), sin.view(-1, 1, D)
        bias = None  # additive, [B, n_kv, heads per kv head, n]
        if pos is not None:
            keys = torch.arange(n, device=self.device)
            masked = (keys[None] > pos[:, None])[:, None, None]
            if self.model.alibi:
                bias = alibi_bias(self.model.alibi_slopes, pos[:, None], keys[None]).masked_fill(masked, float("-inf"))
                bias = bias.view(B, KV, H // KV, n).to(self.weights.stream_dtype)
            elif not same:  # rows at different positions: each sees its own written entries
                bias = torch.zeros(B, 1, 1, n, dtype=self.weights.stream_dtype, device=self.device)
                bias.masked_fill_(masked, float("-inf"))
        rows = None if same else torch.arange(B, device=self.device)
        h = self.weights.embeddings[ids]
        for li, w in enumerate(self.weights.layers):
            qkv = w.wqkv(F.rms_norm(h, (h.shape[-1],), w.attention_norm, self.eps)).view(B, H + 2 * KV, D)
            if cos is not None:
                _rope_in_place(qkv[:, : H + KV], cos, sin)
            new = qkv[:, H:].view(B, 2, KV, D)  # this step's keys and values
            if same:
                self.kv[li, :, :B, :, n - 1] = new.transpose(0, 1)
            else:
                self.kv[li][:, rows, :, pos] = new
            h = w.wo.add_to(h, self._attend_one(qkv[:, :H], self.k[li, :B, :, :n], self.v[li, :B, :, :n], bias))
            gate, up = w.w13(F.rms_norm(h, (h.shape[-1],), w.ffn_norm, self.eps)).chunk(2, dim=-1)
            h = w.w2.add_to(h, F.silu(gate).mul_(up))
        return self._logits(h)

    def _decode_kernel(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        return self._kernel_rows(tokens, torch.tensor(positions, dtype=torch.long))

    def _prefill_kernel(self, slot: int, prompt: list[int], every: bool) -> torch.Tensor:
        """_prefill by the C step: the prompt's tokens as rows of one slot, PREFILL_ROWS at a time."""
        out, T, step = [], len(prompt), cpu_kernel.PREFILL_ROWS
        for start in range(0, T, step):
            n = min(step, T - start)
            logits_from = 0 if every else (n - 1 if start + n == T else n)
            out.append(self._kernel_rows(prompt[start:start + n], torch.arange(start, start + n, dtype=torch.long),
                                         torch.full((n,), slot, dtype=torch.long), logits_from))
        return torch.cat(out) if every else out[-1][0]

    def _kernel_rows(self, tokens: list[int], pos: torch.Tensor, slots: torch.Tensor | None = None,
                     logits_from: int = 0) -> torch.Tensor:
        """One call of the C step: tokens at positions `pos` (int64), in slots `slots` (default row b in slot b)."""
        cos, sin = self._rope(pos, 1)
        if cos is not None:
            cos, sin = cos.reshape(len(tokens), -1).contiguous(), sin.reshape(len(tokens), -1).contiguous()
        slopes = self.model.alibi_slopes.float().contiguous() if self.model.alibi else None
        return self.kernel(torch.tensor(tokens, dtype=torch.long), pos, cos, sin, slopes, self.kv, slots, logits_from)

    def _attend_one(self, q, k, v, bias):
        """Attention of one query per row, as batched products (CPU SDPA kernels tile for long queries and
        spend most of a decoding step on a single one). q [B, H, D]; k, v [B, n_kv, n, D]; query head h
        reads kv head h // (H / n_kv), as in grouped-query attention. Returns [B, H * D]."""
        B, H, D = q.shape
        n = k.shape[-2]
        q = (q * D ** -0.5).reshape(B * self.n_kv, H // self.n_kv, D)
        k, v = k.reshape(B * self.n_kv, n, D), v.reshape(B * self.n_kv, n, D)  # views: slots are contiguous
        scores = torch.bmm(q, k.transpose(1, 2))
        if bias is not None:
            scores.view(B, self.n_kv, H // self.n_kv, n).add_(bias)
        return torch.bmm(torch.softmax(scores, dim=-1), v).view(B, H * D)

    def _rope(self, positions, T, start=0):
        cos, sin = self.model._rope_for(positions, start, T)
        if cos is None:
            return None, None
        dt = self.weights.stream_dtype
        return cos.to(dt), sin.to(dt)

    def _qkv(self, w, h, cos, sin):
        B, T, _ = h.shape
        x = F.rms_norm(h, (h.shape[-1],), w.attention_norm, self.eps)
        qkv = w.wqkv(x).view(B, T, self.n_heads + 2 * self.n_kv, self.head_dim).transpose(1, 2)
        qk = qkv[:, : self.n_heads + self.n_kv]
        if cos is not None:
            qk = apply_rope(qk, cos, sin)  # q and k rotated together: adjacent heads of one projection
        return qk[:, : self.n_heads], qk[:, self.n_heads:], qkv[:, self.n_heads + self.n_kv:]

    def _rest_of_layer(self, w, h, attn):
        B, T = h.shape[:2]
        h = h + w.wo(attn.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        gate, up = w.w13(F.rms_norm(h, (h.shape[-1],), w.ffn_norm, self.eps)).chunk(2, dim=-1)
        return h + w.w2(F.silu(gate).mul_(up))

    def _logits(self, h):
        return self.weights.output(F.rms_norm(h, (h.shape[-1],), self.weights.norm, self.eps)).float()


def _rope_in_place(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> None:
    """positions.apply_rope's rotation, written back into x [B, heads, D] (cos, sin [B|1, 1, D])."""
    half = x.shape[-1] // 2
    torch.addcmul(x * cos, torch.cat((x[..., half:], x[..., :half]), dim=-1), signed_sin, out=x)


def _trim_tokens(tokens: list[int], text: str, decode) -> list[int]:
    """The shortest token prefix whose text covers `text` (tokens up to the stop string)."""
    for n in range(len(tokens) + 1):
        if len(decode(tokens[:n])) >= len(text):
            return tokens[:n]
    return tokens


def row_limits(prompts: list[list[int]], max_new_tokens: int, max_len: int | None) -> list[int]:
    """New tokens each prompt may get: max_new_tokens, cut where prompt + new tokens reach max_len (if given)."""
    return [max_new_tokens if max_len is None else max(0, min(max_new_tokens, max_len - len(p))) for p in prompts]


def generate(model, prompts: list[list[int]], params: SamplingParams, stop_ids: set[int],
             decode: Callable[[list[int]], str], on_text: Callable[[int, str], None] | None = None,
             max_len: int | None = None, on_step: Callable[[int], None] | None = None,
             engine: EngineConfig | None = None) -> list[Generation]:
    """Generate for token prompts with the engine. on_text(row, new_text) streams decoded text as it is fixed.

    Row i samples with seed params.seed + i (with a seed), so a prompt's generation is the same alone or
    in any batch. max_len: when given (the model's context), a row stops with finish_reason "length" once
    its prompt plus its new tokens reach it; None lets generation run past the context (RoPE
    extrapolation experiments). on_step(rows_still_generating) is called after every decoding step.
    engine: weight format and slots (default: float32, every prompt in its own slot)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    config = engine or EngineConfig(max_batch=len(prompts))
    rows = [Row(list(p), params, frozenset(stop_ids), decode, limit,
                seed=None if params.seed is None else params.seed + i,
                on_text=None if on_text is None else (lambda text, i=i: on_text(i, text)))
            for i, (p, limit) in enumerate(zip(prompts, row_limits(prompts, params.max_new_tokens, max_len)))]
    return Engine(model, config).run(rows, on_step)
