"""Request shapes of the openai backend that real engines need (tests/interop checks the engines themselves):
at most 4 stop strings sent (vLLM and the OpenAI API refuse more) with all of them cut here, neutral sampling
fields (llama-cpp-python's defaults are not greedy at temperature 0), `stop_token_ids: [EOT]` with token-id
infilling prompts (vLLM), no retry of a 500, and a one-line refusal of a server that cannot infill."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import make_tiny_bpe, tiny_llama

from codelm.errors import ConfigError
from codelm.generate import complete_batch
from codelm.generate.backends import Request
from codelm.generate.backends.openai import MAX_STOP_STRINGS, NEUTRAL_SAMPLING, OpenAIBackend, ServerError
from codelm.generate.prompts import infilling_tokens
from codelm.serve import start_server

HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@", "\n```")


class _Recorder(BaseHTTPRequestHandler):
    """Keeps every request body; answers the status, /v1/models entries and completion text the test sets."""

    def log_message(self, *a):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": self.server.models})

    def do_POST(self):
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        if self.server.status != 200:
            self._send(self.server.status, {"error": {"message": "body.prompt: Input should be a valid string",
                                                      "type": "internal_server_error"}})
        else:
            self._send(200, {"choices": [{"text": self.server.text, "finish_reason": "length"}]})


@pytest.fixture
def recorder():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    srv.bodies, srv.status, srv.text = [], 200, "x = 1\n@cache\ndef g():\n"
    srv.models = [{"id": "m", "object": "model", "owned_by": "vllm"}]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = "http://%s:%d" % srv.server_address[:2]
    yield srv
    srv.shutdown()
    srv.server_close()


def test_stop_strings_beyond_the_limit_are_cut_here_and_sampling_is_neutral(recorder):
    out = OpenAIBackend(recorder.url).generate([Request("def f():\n", max_new_tokens=9, stop=HUMANEVAL_STOPS)])[0]
    body = recorder.bodies[0]
    assert body["stop"] == list(HUMANEVAL_STOPS[:MAX_STOP_STRINGS])
    assert out.text == "x = 1" and out.finish_reason == "stop"  # "\n@" (the 6th) was not sent, and still cuts
    assert {k: body[k] for k in NEUTRAL_SAMPLING} == NEUTRAL_SAMPLING and body["temperature"] == 0.0


def test_token_infilling_asks_to_stop_at_eot(recorder):
    tok = make_tiny_bpe()
    OpenAIBackend(recorder.url, infill="tokens", tokenizer=tok).generate([Request("a = ", "\nb = 2\n", spm=True)])
    body = recorder.bodies[0]
    assert body["prompt"] == infilling_tokens(tok, "a = ", "\nb = 2\n", spm=True)
    assert body["stop_token_ids"] == [tok.eot_id]


def test_refusals_before_any_infilling_request(recorder):
    with pytest.raises(ConfigError, match="vLLM does not support the completions `suffix`"):
        OpenAIBackend(recorder.url).generate([Request("a = ", "\n")])
    recorder.models = [{"id": "m.gguf", "object": "model", "owned_by": "me", "permissions": []}]
    for mode in ("suffix", "tokens", "llama.cpp"):
        with pytest.raises(ConfigError, match="llama-cpp-python's server cannot infill correctly"):
            OpenAIBackend(recorder.url, infill=mode, tokenizer=make_tiny_bpe()).generate([Request("a = ", "\n")])
    assert recorder.bodies == []
    OpenAIBackend(recorder.url).generate([Request("a = ")])  # plain completions still go through
    assert len(recorder.bodies) == 1


def test_a_500_is_not_retried(recorder):
    recorder.status = 500
    with pytest.raises(ServerError, match="HTTP 500: body.prompt: Input should be a valid string"):
        OpenAIBackend(recorder.url, retries=3, backoff=0.01).generate([Request("p")])
    assert len(recorder.bodies) == 1


def test_codelm_serve_takes_the_request_as_sent():
    """The neutral fields and the stop list cut to 4 leave codelm serve's greedy completions unchanged."""
    tok = make_tiny_bpe()
    model = tiny_llama(tok.vocab_size)
    srv, _ = start_server(model, tok, "tiny")
    try:
        backend = OpenAIBackend("http://%s:%d" % srv.server_address[:2])
        prompts = ["def add(a, b):\n", "import os\n\n", "class Stack:\n"]
        got = [c.text for c in backend.generate([Request(p, max_new_tokens=16, stop=HUMANEVAL_STOPS)
                                                 for p in prompts])]
        want = [g.text for g in complete_batch(model, tok, prompts, max_new_tokens=16, stop=list(HUMANEVAL_STOPS))]
        assert got == want
    finally:
        srv.shutdown()
        srv.server_close()
