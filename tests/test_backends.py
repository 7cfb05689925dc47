"""Generation backends (native, hf, openai through a real `codelm serve`), the cache, retries."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import make_tiny_bpe, tiny_llama as tiny_model

from codelm.errors import CodelmError, ConfigError
from codelm.generate import complete_batch, infill_batch
from codelm.generate.backends import GenerationCache, Request, cut_at_stop, generate_all, make_backend
from codelm.generate.backends.native import NativeBackend
from codelm.generate.backends.openai import OpenAIBackend, ServerError
from codelm.model.checkpoint import save_hf
from codelm.serve import start_server

PROMPTS = ["def add(a, b):\n", "import os\n\n", "class Stack:\n    def push(self, x):\n"]
PAIRS = [("def f(x):\n    return ", "\n\nprint(f(1))\n"), ("for i in range(", "):\n    pass\n")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = make_tiny_bpe()
    d = tmp_path_factory.mktemp("ckpt") / "model"
    model = tiny_model(tok.vocab_size)
    save_hf(model, d, tokenizer=tok)
    return d, model, tok


@pytest.fixture(scope="module")
def server(ckpt):
    _, model, tok = ckpt
    srv, _ = start_server(model, tok, "tiny")
    yield "http://%s:%d" % srv.server_address[:2]
    srv.shutdown()
    srv.server_close()


def _expected(model, tok, stop=()):
    comp = [g.text for g in complete_batch(model, tok, PROMPTS, max_new_tokens=12, stop=list(stop))]
    psm = [g.text for g in infill_batch(model, tok, PAIRS, max_new_tokens=8)]
    spm = [g.text for g in infill_batch(model, tok, PAIRS, spm=True, max_new_tokens=8)]
    return comp, psm, spm


def _run(backend, stop=()):
    comp = [c.text for c in backend.generate([Request(p, max_new_tokens=12, stop=tuple(stop)) for p in PROMPTS])]
    psm = [c.text for c in backend.generate([Request(a, b, max_new_tokens=8) for a, b in PAIRS])]
    spm = [c.text for c in backend.generate([Request(a, b, spm=True, max_new_tokens=8) for a, b in PAIRS])]
    return comp, psm, spm


def test_native_backend_matches_engine(ckpt):
    d, model, tok = ckpt
    backend = make_backend("native", str(d))
    assert backend.identity()["backend"] == "native"
    assert _run(backend) == _expected(model, tok)


def test_hf_backend_matches_native_greedy(ckpt):
    d, model, tok = ckpt
    backend = make_backend("hf", str(d), batch_size=4)
    assert _run(backend) == _expected(model, tok)
    # Stop strings end generation and are cut off.
    comp, _, _ = _expected(model, tok)
    stop = comp[0][2:5]
    if stop:
        got = backend.generate([Request(PROMPTS[0], max_new_tokens=12, stop=(stop,))])[0]
        assert got.text == comp[0][:comp[0].find(stop)] and got.finish_reason == "stop"


def test_openai_backend_against_codelm_serve(ckpt, server):
    d, model, tok = ckpt
    want_comp, want_psm, want_spm = _expected(model, tok)
    suffix = OpenAIBackend(server, concurrency=3)
    assert suffix.model == "tiny"  # found through /v1/models
    comp = [c.text for c in suffix.generate([Request(p, max_new_tokens=12) for p in PROMPTS])]
    assert comp == want_comp
    assert [c.text for c in suffix.generate([Request(a, b, max_new_tokens=8) for a, b in PAIRS])] == want_psm
    with pytest.raises(ConfigError, match="SPM"):
        suffix.generate([Request("a", "b", spm=True)])
    tokens = OpenAIBackend(server + "/v1", infill="tokens", tokenizer=str(d))
    assert _run(tokens) == (want_comp, want_psm, want_spm)
    llama_cpp = OpenAIBackend(server, infill="llama.cpp")
    assert [c.text for c in llama_cpp.generate([Request(a, b, max_new_tokens=8) for a, b in PAIRS])] == want_psm
    with pytest.raises(ServerError, match="HTTP 404"):
        OpenAIBackend(server, model="missing", retries=0).generate([Request("x", max_new_tokens=2)])


def test_openai_backend_chat_route(ckpt, server):
    from codelm.generate import SamplingParams, generate
    from codelm.serve import chat_tokens

    _, model, tok = ckpt
    backend = OpenAIBackend(server, chat=True)
    got = backend.generate([Request("Write a function.", max_new_tokens=6)])[0]
    ids = chat_tokens(tok, [{"role": "user", "content": "Write a function."}])
    want = generate(model, [ids], SamplingParams(max_new_tokens=6), stop_ids={tok.eos_id}, decode=tok.decode)[0]
    assert got.text == want.text


class _Flaky(BaseHTTPRequestHandler):
    """Fails the first `failures` POSTs with 503, then answers; counts every call."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        srv = self.server
        srv.calls += 1
        status, body = (503, {"error": {"message": "busy"}}) if srv.calls <= srv.failures else \
            (200, {"choices": [{"text": "ok\nrest", "finish_reason": "stop"}], "usage": {"completion_tokens": 2}})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def flaky():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    srv.calls, srv.failures = 0, 2
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_openai_backend_retries_with_backoff(flaky):
    url = "http://%s:%d" % flaky.server_address[:2]
    backend = OpenAIBackend(url, model="m", retries=3, backoff=0.01)
    out = backend.generate([Request("p", stop=("\n",))])[0]
    assert out.text == "ok" and out.finish_reason == "stop" and flaky.calls == 3  # stop applied client-side
    flaky.calls, flaky.failures = 0, 10
    with pytest.raises(ServerError, match="after 3 tries"):
        OpenAIBackend(url, model="m", retries=2, backoff=0.01).generate([Request("p")])
    assert flaky.calls == 3


def test_openai_backend_bad_url():
    with pytest.raises(ConfigError, match="URL"):
        OpenAIBackend("models/dir", model="m")
    with pytest.raises(ConfigError, match="tokenizer"):
        OpenAIBackend("http://127.0.0.1:9", model="m", infill="tokens")


class _Counting:
    name, batch_size = "counting", 2

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.requests = inner, fail_after, []

    def identity(self):
        return {"backend": "counting"}

    def generate(self, requests):
        if self.fail_after is not None and len(self.requests) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.requests.extend(requests)
        return self.inner.generate(requests)


def test_cache_resumes_without_regenerating(ckpt, tmp_path):
    _, model, tok = ckpt
    native = NativeBackend(model, tok, batch_size=2)
    items = [(Request(p, max_new_tokens=6, temperature=0.8, top_p=0.95, seed=i), i) for i, p in enumerate(PROMPTS * 2)]
    path = tmp_path / "gen.jsonl"
    first = _Counting(native, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_all(first, items, GenerationCache(path, {"m": 1}).open(), progress=False)
    assert len(first.requests) == 2
    with open(path, "a") as f:
        f.write('{"key": "torn')  # a line cut short by the kill
    second = _Counting(native)
    cache = GenerationCache(path, {"m": 1}).open()
    outs, stats = generate_all(second, items, cache, progress=False)
    cache.close()
    assert stats.from_cache == 2 and stats.generated == 4 and len(second.requests) == 4
    done_first = {r.prompt + str(r.seed) for r in first.requests}
    assert not done_first & {r.prompt + str(r.seed) for r in second.requests}  # nothing generated twice
    # A fresh run with the cache generates nothing and returns the same texts.
    third = _Counting(native)
    again, stats = generate_all(third, items, GenerationCache(path, {"m": 1}).open(), progress=False)
    assert not third.requests and [c.text for c in again] == [c.text for c in outs]
    with pytest.raises(CodelmError, match="different backend"):
        GenerationCache(path, {"m": 2}).open()


def test_cut_at_stop():
    assert cut_at_stop("a\ndef b\nclass", ["\nclass", "\ndef"]) == ("a", True)
    assert cut_at_stop("abc", ["x", ""]) == ("abc", False)


class _Deterministic(BaseHTTPRequestHandler):
    """Answers every POST with the status and error body the test sets; counts the calls."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.calls += 1
        data = json.dumps({"error": {"message": "max_tokens is too large", "type": self.server.kind}}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.parametrize("status, kind", [(400, "invalid_request_error"), (409, "conflict"),
                                          (500, "invalid_request_error"), (501, "server_error")])
def test_openai_backend_does_not_retry_deterministic_errors(status, kind):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Deterministic)
    srv.calls, srv.status, srv.kind = 0, status, kind
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = "http://%s:%d" % srv.server_address[:2]
        with pytest.raises(ServerError, match=f"answered HTTP {status}: max_tokens is too large"):
            OpenAIBackend(url, model="m", retries=3, backoff=0.01).generate([Request("p")])
        assert srv.calls == 1
    finally:
        srv.shutdown()
        srv.server_close()
