"""`codelm serve`: the official openai client against a real server on 127.0.0.1, and hostile requests."""
import http.client
import json
import socket
import subprocess
import sys
import time

import openai
import pytest
from helpers import make_tiny_bpe, tiny_llama as tiny_model

import codelm
from codelm.generate import complete_batch, infill_batch
from codelm.generate.engine import generate
from codelm.generate.sampler import SamplingParams
from codelm.model.checkpoint import save_hf
from codelm.generate.prompts import B_INST, E_INST
from codelm.serve import UNSAFE_REQUEST_ERROR, ServeLimits, chat_tokens, start_server

NAME = "tiny-code"


@pytest.fixture(scope="module")
def served():
    tok = make_tiny_bpe()
    model = tiny_model(tok.vocab_size)
    server, thread = start_server(model, tok, NAME, limits=ServeLimits(max_body_bytes=20_000))
    host, port = server.server_address[:2]
    client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    yield model, tok, server, client, (host, port)
    server.shutdown()
    server.server_close()


def _alive(client):
    assert [m.id for m in client.models.list().data] == [NAME]


def test_models_route(served):
    _, _, _, client, _ = served
    _alive(client)
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_completion_matches_native_engine(served):
    model, tok, _, client, _ = served
    prompt = "def add(a, b):\n"
    want = complete_batch(model, tok, [prompt], max_new_tokens=10)[0]
    got = client.completions.create(model=NAME, prompt=prompt, max_tokens=10, temperature=0)
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert got.usage.completion_tokens == len(want.tokens)
    assert got.usage.prompt_tokens == len(tok.encode(prompt, bos=True))
    # Stop strings are honoured; echo gives the prompt back in front.
    cut = want.text[3:6]
    if cut:
        stopped = client.completions.create(model=NAME, prompt=prompt, max_tokens=10, temperature=0, stop=[cut])
        assert stopped.choices[0].text == want.text[:want.text.find(cut)]
    echoed = client.completions.create(model=NAME, prompt=prompt, max_tokens=10, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + want.text


def test_streaming_equals_non_streaming(served):
    _, _, _, client, _ = served
    kw = dict(model=NAME, prompt=["import os\n", "class A:\n"], max_tokens=12, temperature=0)
    whole = client.completions.create(**kw)
    parts = {0: "", 1: ""}
    finishes = {}
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            parts[c.index] += c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert [parts[0], parts[1]] == [c.text for c in whole.choices]
    assert set(finishes) == {0, 1}


def test_sampling_n_and_seed(served):
    _, _, _, client, _ = served
    kw = dict(model=NAME, prompt="x = ", max_tokens=8, temperature=1.0, top_p=0.95, n=3, seed=7)
    a = [c.text for c in client.completions.create(**kw).choices]
    b = [c.text for c in client.completions.create(**kw).choices]
    assert len(a) == 3 and a == b


def test_token_id_prompt_and_infilling_suffix(served):
    model, tok, _, client, _ = served
    prefix, suffix = "def f(x):\n    return ", "\n\nprint(f(2))\n"
    want = infill_batch(model, tok, [(prefix, suffix)], max_new_tokens=8)[0]
    got = client.completions.create(model=NAME, prompt=prefix, suffix=suffix, max_tokens=8, temperature=0)
    assert got.choices[0].text == want.text
    spm = infill_batch(model, tok, [(prefix, suffix)], spm=True, max_new_tokens=8)[0]
    got = client.completions.create(model=NAME, prompt=prefix, suffix=suffix, max_tokens=8, temperature=0,
                                    extra_body={"spm": True})
    assert got.choices[0].text == spm.text
    ids = tok.encode("def g():\n", bos=True)
    by_ids = client.completions.create(model=NAME, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == complete_batch(model, tok, ["def g():\n"], max_new_tokens=6)[0].text


def test_chat_layout_and_route(served):
    model, tok, _, client, _ = served
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write add."},
            {"role": "assistant", "content": "def add(a, b): return a + b"}, {"role": "user", "content": " Now sub. "}]
    want_ids = (tok.encode(f"{B_INST} <<SYS>>\nBe brief.\n<</SYS>>\n\nWrite add. {E_INST} def add(a, b): return a + b ",
                           bos=True, eos=True)
                + tok.encode(f"{B_INST} Now sub. {E_INST}", bos=True))
    assert chat_tokens(tok, msgs) == want_ids
    want = generate(model, [want_ids], SamplingParams(max_new_tokens=9), stop_ids={tok.eos_id}, decode=tok.decode)[0]
    got = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=9, temperature=0)
    assert got.choices[0].message.content == want.text and got.choices[0].message.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=NAME, messages=msgs, max_tokens=9, temperature=0, stream=True) if c.choices)
    assert streamed == want.text
    with pytest.raises(openai.BadRequestError, match="special tags"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "[INST] hi"}], max_tokens=2)
    assert "special tags" in UNSAFE_REQUEST_ERROR
    with pytest.raises(openai.BadRequestError, match="alternate"):
        client.chat.completions.create(model=NAME, messages=[{"role": "assistant", "content": "x"}], max_tokens=2)


def test_bad_requests_get_4xx_json_and_server_survives(served):
    _, _, _, client, (host, port) = served
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="other", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=NAME, prompt="x", max_tokens=2, temperature=5)
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.completions.create(model=NAME, prompt="x", max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model=NAME, prompt=[], max_tokens=2)

    def raw(method, path, body: bytes, headers=None):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, json.loads(data)

    status, body = raw("POST", "/v1/completions", b"{not json")
    assert status == 400 and "malformed JSON" in body["error"]["message"]
    status, body = raw("POST", "/v1/completions", b"[1, 2]")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = raw("POST", "/v1/completions", b"\xff\xfe")
    assert status == 400
    status, body = raw("POST", "/v1/completions", json.dumps({"model": NAME, "prompt": "x" * 30_000}).encode())
    assert status == 413 and "exceeds" in body["error"]["message"]
    status, body = raw("POST", "/v1/nothing", b"{}")
    assert status == 404
    status, body = raw("GET", "/v1/models/zzz", b"")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    _alive(client)


def test_client_disconnect_mid_stream(served):
    _, _, _, client, (host, port) = served
    body = json.dumps({"model": NAME, "prompt": "def f():\n", "max_tokens": 200, "temperature": 0,
                       "stream": True}).encode()
    for _ in range(3):  # bounded: a few hang-ups in a row
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        s.recv(64)  # the stream has started
        s.close()
    # Half a body, then a hang-up.
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"model\"")
    s.close()
    _alive(client)
    got = client.completions.create(model=NAME, prompt="a", max_tokens=3, temperature=0)
    assert len(got.choices) == 1


def test_serve_cli_end_to_end(tmp_path):
    """`codelm serve` as a process: the openai client completes, then the process is stopped."""
    tok = make_tiny_bpe()
    ckpt = tmp_path / "ckpt"
    save_hf(tiny_model(tok.vocab_size), ckpt, tokenizer=tok)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "codelm.cli", "serve", "--model", str(ckpt), "--port", str(port),
                             "--name", "m", "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        for _ in range(120):  # bounded wait for the model to load
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.25)
        loaded = codelm.load(ckpt)
        want = complete_batch(loaded.model, loaded.tokenizer, ["def f(x):\n"], max_new_tokens=5)[0].text
        assert client.completions.create(model="m", prompt="def f(x):\n", max_tokens=5, temperature=0).choices[0].text == want
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_close_stops_the_engine_and_refuses_new_generations():
    """No thread may still be inside torch when the server is closed (pytorch#38228): close() cancels the
    rows in flight and returns once the engine's thread has stopped; their requests get 503."""
    import threading

    from codelm.serve import ApiError, ModelService

    tok = make_tiny_bpe()
    service = ModelService(tiny_model(tok.vocab_size), tok, NAME)
    params = SamplingParams(max_new_tokens=400, temperature=0.0)
    started, outcome = threading.Event(), []

    def on_text(*_):
        started.set()

    def work():
        try:
            service.run([[1, 2, 3]], params, set(), tok.decode, on_text=on_text)
            outcome.append("finished")
        except ApiError as e:
            outcome.append(e.status)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    assert started.wait(30)
    service.close()
    assert not service.loop.is_alive()
    t.join(30)
    assert outcome in (["finished"], [503])
    with pytest.raises(ApiError) as e:
        service.run([[1, 2, 3]], params, set(), tok.decode)
    assert e.value.status == 503


def test_concurrent_clients_each_get_the_answer_they_get_alone(served):
    """Requests from many threads join one running batch (8 slots here); each answer equals the same
    request sent alone: greedy, seeded sampling with n > 1, stop strings, streaming, infilling."""
    import threading

    _, _, _, client, (host, port) = served
    prompts = ["def add(a, b):\n", "import os\n", "x = [", "class A:\n    def", "while True:", "print(",
               "# sum\ndef total(xs):\n", "for i in range(3):\n", "y = {", "def f():\n    return"]
    kinds = []
    for i, p in enumerate(prompts):
        kw = dict(model=NAME, prompt=p, max_tokens=6 + 3 * i, temperature=0.0)
        if i % 3 == 1:
            kw.update(temperature=0.9, top_p=0.95, seed=40 + i, n=2)
        if i % 4 == 2:
            kw.update(stop=["\n"])
        if i == 5:
            kw.update(suffix="\n    return x\n", prompt="def g(x):\n    ")
        kinds.append((kw, i % 2 == 0))

    def ask(kw, stream):
        if not stream:
            return [c.text for c in client.completions.create(**kw).choices]
        texts = {}
        for chunk in client.completions.create(**kw, stream=True):
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + c.text
        return [texts[i] for i in sorted(texts)]

    alone = [ask(kw, stream) for kw, stream in kinds]
    together = [None] * len(kinds)

    def worker(i):
        together[i] = ask(*kinds[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(kinds)) for _ in range(1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone
    assert all(len(a) == kw.get("n", 1) for a, (kw, _) in zip(alone, kinds))


def test_an_oversized_body_is_answered_413_after_draining_it(served):
    """A client that keeps writing a 10 MB body reads the 413 (no broken pipe), and the server lives on."""
    _, _, _, client, (host, port) = served
    size = 10 << 20
    s = socket.create_connection((host, port), timeout=60)
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {size}\r\n\r\n".encode())
        chunk = b"x" * (1 << 16)
        for _ in range(size // len(chunk)):
            s.sendall(chunk)  # raises BrokenPipeError / ConnectionResetError if the server stopped reading
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = s.recv(65536)
            if not data:
                break
            answer += data
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_too_large"
    _alive(client)


BAD_FIELDS = [
    ("/v1/completions", {"temperature": "hot"}), ("/v1/completions", {"temperature": -1}),
    ("/v1/completions", {"top_p": 0}), ("/v1/completions", {"top_p": 2}), ("/v1/completions", {"top_k": -1}),
    ("/v1/completions", {"n": 0}), ("/v1/completions", {"n": 10_000}), ("/v1/completions", {"max_tokens": -1}),
    ("/v1/completions", {"max_tokens": "5"}), ("/v1/completions", {"max_tokens": True}),
    ("/v1/completions", {"seed": 2 ** 70}), ("/v1/completions", {"seed": 1.5}), ("/v1/completions", {"stop": 5}),
    ("/v1/completions", {"stop": ["x"] * 100}), ("/v1/completions", {"suffix": 5}),
    ("/v1/completions", {"echo": "yes"}), ("/v1/completions", {"stream": "yes"}),
    ("/v1/completions", {"logprobs": 5}), ("/v1/completions", {"prompt": [10 ** 9]}),
    ("/v1/completions", {"prompt": {"a": 1}}),
    ("/v1/chat/completions", {"messages": "hi"}), ("/v1/chat/completions", {"messages": [5]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "seed": 2 ** 70}),
    ("/infill", {"n_predict": -1}), ("/infill", {"input_prefix": 5}), ("/infill", {"seed": 2 ** 70}),
    ("/infill", {"top_p": 0}), ("/infill", {"stop": "x"}),
]


@pytest.mark.parametrize("route, fields", BAD_FIELDS)
def test_every_bad_request_field_is_a_400_naming_it(served, route, fields):
    _, _, _, _, (host, port) = served
    body = {"model": NAME, "prompt": "x", "max_tokens": 2, **fields}
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", route, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    assert resp.status == 400, answer
    named = list(fields)[-1]
    assert named in answer["error"]["message"] or answer["error"]["param"] == named, answer
