"""Instruct data and fine-tuning: the loss mask, whole-dialog packing, rehearsal mixing, SFT on a tiny model."""
import json

import numpy as np
import pytest
from helpers import make_tiny_bpe, make_tiny_sentencepiece

from codelm.data.instruct import (DialogPacker, InstructFile, MaskedMixedStream, batch_of, build_instruct_file,
                                  completion_tokens, dialog_tokens, extract_tagged, parse_tests, tagged_program)
from codelm.data.packing import IGNORE_INDEX
from codelm.errors import ConfigError, DataError
from codelm.generate.prompts import ChatFormatError, chat_tokens
from codelm.tokenizer import Tokenizer

DIALOG = [{"role": "system", "content": "Answer in Python."},
          {"role": "user", "content": "Add two numbers."},
          {"role": "assistant", "content": "[PYTHON]\ndef add(a, b):\n    return a + b\n[/PYTHON]"},
          {"role": "user", "content": "Now subtract."},
          {"role": "assistant", "content": " def sub(a, b): return a - b "}]


@pytest.fixture(scope="module", params=["sentencepiece", "bpe"])
def tok(request, tmp_path_factory):
    if request.param == "bpe":
        return make_tiny_bpe()
    return Tokenizer.load(make_tiny_sentencepiece(tmp_path_factory.mktemp("sp")))


def test_dialog_layout_is_the_chat_layout_and_mask_covers_only_answers(tok):
    ids, mask = dialog_tokens(tok, DIALOG)
    assert len(ids) == len(mask)
    # Token-exact with the inference layout of the same finished exchanges.
    prompt = chat_tokens(tok, DIALOG + [{"role": "user", "content": "next"}])
    assert prompt[:len(ids)] == ids
    # The trained positions are exactly the answers and the EOS closing each one.
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    assert len(spans) == 2
    assert [s[-1] for s in spans] == [tok.eos_id, tok.eos_id]
    assert tok.decode(spans[0][:-1]).strip() == DIALOG[2]["content"]
    assert tok.decode(spans[1][:-1]).strip() == DIALOG[4]["content"].strip()
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "Add two numbers." in untrained and "Answer in Python." in untrained and "return" not in untrained
    assert ids.count(tok.bos_id) == 2 and not any(m for i, m in zip(ids, mask) if i == tok.bos_id)


@pytest.mark.parametrize("dialog, match", [
    ([{"role": "user", "content": "a"}], "must end with the assistant"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
    ([{"role": "user", "content": "[INST] a"}, {"role": "assistant", "content": "b"}], "special tags"),
])
def test_bad_dialogs_are_refused(tok, dialog, match):
    with pytest.raises(ChatFormatError, match=match):
        dialog_tokens(tok, dialog)


def test_tags_and_tests_parsing():
    assert extract_tagged("x [PYTHON]\ncode\n[/PYTHON] y", "PYTHON") == "code"
    assert extract_tagged("[PYTHON]\nno end", "PYTHON") is None
    assert tagged_program("[PYTHON]\ndef f(:\n[/PYTHON]") is None
    assert tagged_program("text [PYTHON]\ndef f():\n    return 1\n[/PYTHON]") == "def f():\n    return 1\n"
    text = ("[TESTS]\n# Test case 1:\nassert f(1) == 2\n#Test case 2:\nassert f(\n    2) == 3\n"
            "# Test case 3:\nassert f(3 ==\n# Test case 4:\nprint('no assert')\n[/TESTS]")
    assert parse_tests(text) == ["assert f(1) == 2\n", "assert f(\n    2) == 3\n"]
    assert parse_tests("[TESTS]\nassert g() == 1\nassert g() != 2\n[/TESTS]") == ["assert g() == 1\n",
                                                                                     "assert g() != 2\n"]
    assert parse_tests("assert f(1) == 2") == []  # no [TESTS] block


def _write_dialogs(path, dialogs):
    path.write_text("".join(json.dumps({"messages": d}) + "\n" for d in dialogs))
    return path


def test_packing_keeps_each_dialog_whole_in_one_row(tmp_path):
    tok = make_tiny_bpe()
    dialogs = [[{"role": "user", "content": f"q{i} " + "word " * (i % 7)},
                {"role": "assistant", "content": f"answer {i} " + "x " * (i % 5)}] for i in range(40)]
    dialogs.append([{"role": "user", "content": "long " * 300}, {"role": "assistant", "content": "y"}])
    src = _write_dialogs(tmp_path / "d.jsonl", dialogs)
    meta = build_instruct_file(src, tok, tmp_path / "out" / "d.train.bin", seq_len=63)
    assert meta.dialogs == 40 and meta.too_long == 1 and meta.n_sequences > 1
    f = InstructFile(tmp_path / "out" / "d.train.bin")
    rows = [f.sequence(k).tolist() for k in range(f.n_sequences)]
    for d in dialogs[:40]:
        ids, _ = dialog_tokens(tok, d)
        holders = [r for r in rows if any(r[j:j + len(ids)] == ids for j in range(len(r) - len(ids) + 1))]
        assert holders, "a dialog was split across rows"
    # Targets: answers only; pad positions never trained.
    x, y = batch_of(f, list(range(f.n_sequences)))
    assert x.shape == y.shape == (f.n_sequences, 63)
    trained = int((y != IGNORE_INDEX).sum())
    assert trained == meta.target_tokens - sum(1 for k in range(f.n_sequences) if f.mask[k * 64] == 1)
    assert all(tok.bos_id not in row[row != IGNORE_INDEX].tolist() for row in y)
    # Rebuilt only when something changes.
    again = build_instruct_file(src, tok, tmp_path / "out" / "d.train.bin", seq_len=63)
    assert again == meta


def test_packer_pads_instead_of_splitting():
    p = DialogPacker(row_len=10, pad_id=0)
    assert p.add([1] * 6, [False, True] * 3) and p.add([2] * 6, [True] * 6) and not p.add([3] * 11, [True] * 11)
    ids, mask = p.finish()
    assert ids.tolist() == [1] * 6 + [0] * 4 + [2] * 6 + [0] * 4
    # 1: an answer's token, 2: the rest of an example (trained only with a prompt_loss_weight), 0: padding
    # and the example's first token (its BOS: nothing before it predicts it).
    assert mask.tolist() == [0, 1] + [2, 1] * 2 + [0] * 4 + [1] * 6 + [0] * 4


def test_bad_instruct_file_names_the_line(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                            {"role": "assistant", "content": "b"}]}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: malformed JSON"):
        build_instruct_file(src, make_tiny_bpe(), tmp_path / "x.bin", 32)
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: a training dialog must end with the assistant"):
        build_instruct_file(src, make_tiny_bpe(), tmp_path / "x.bin", 32)


def test_rehearsal_mix_follows_weights(tmp_path):
    from codelm.data.packing import TokenFile, build_token_file

    tok = make_tiny_bpe()
    src = _write_dialogs(tmp_path / "d.jsonl", [[{"role": "user", "content": f"q{i}"},
                                                 {"role": "assistant", "content": f"a{i}"}] for i in range(50)])
    build_instruct_file(src, tok, tmp_path / "si.bin", 31)
    build_token_file(["def f():\n    return 1\n" * 20] * 30, tok, tmp_path / "code.bin", 31, show_progress=False)
    stream = MaskedMixedStream([InstructFile(tmp_path / "si.bin"), TokenFile(tmp_path / "code.bin")],
                               [0.94, 0.06], seed=1)
    picks = stream.draw(2000)
    share = sum(s == 1 for s, _ in picks) / len(picks)
    assert 0.04 < share < 0.08
    x, y = stream.fetch(picks[:32])
    for r, (s, _) in enumerate(picks[:32]):
        if s == 1:  # rehearsal code: every token trained
            assert int((y[r] != IGNORE_INDEX).sum()) == y.shape[1]
        else:
            assert int((y[r] != IGNORE_INDEX).sum()) < y.shape[1]


def test_recipe_instruct_source_checks(tmp_path):
    from codelm.train.recipe import recipe_from_dict

    base = {"model": {"preset": "tiny"}, "tokenizer": {"vocab_size": 300},
            "data": {"sources": [{"path": "x.jsonl", "kind": "instruct"}], "seq_len": 64},
            "train": {"batch_tokens": 512}}
    with pytest.raises(ConfigError, match=r"instruct data: take the tokenizer"):
        recipe_from_dict(base, "r.toml")
    base["tokenizer"] = {"path": "tok"}
    base["data"]["sources"][0]["kind"] = "chat"
    with pytest.raises(ConfigError, match=r"data.sources\[0\].kind must be text or instruct"):
        recipe_from_dict(base, "r.toml")
    base["data"]["sources"][0].update(kind="instruct", loss_weight=0)
    with pytest.raises(ConfigError, match=r"data.sources\[0\].loss_weight must be positive"):
        recipe_from_dict(base, "r.toml")


def _task_dialog(i: int) -> list[dict]:
    name = f"get_{['alpha', 'beta', 'gamma', 'delta', 'omega', 'sigma'][i % 6]}{i}"
    return [{"role": "user", "content": f"Write a function {name} that returns {i}."},
            {"role": "assistant", "content": f"[PYTHON]\ndef {name}():\n    return {i}\n[/PYTHON]"}]


@pytest.mark.slow
def test_instruct_sft_masks_learns_and_answers_held_out_prompt(tmp_path):
    """SFT of a tiny fresh model on dialogs (with 6% code rehearsal): the loss falls and the model
    answers a held-out question of the same kind in the trained [PYTHON] format."""
    import torch

    from codelm.generate import SamplingParams, generate
    from codelm.generate.prompts import chat_stop_ids
    from codelm.model.checkpoint import load
    from codelm.train.loop import train
    from codelm.train.recipe import recipe_from_dict
    from codelm.train.state import read_metrics

    tok_dir = tmp_path / "tok"
    make_tiny_bpe(vocab_size=512).save(tok_dir)
    (tmp_path / "si").mkdir()
    _write_dialogs(tmp_path / "si" / "train.jsonl", [_task_dialog(i) for i in range(200) if i != 77])
    _write_dialogs(tmp_path / "si" / "valid.jsonl", [_task_dialog(i) for i in range(200, 216)])
    code = tmp_path / "code.jsonl"
    code.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i}\n\n"}) + "\n" for i in range(300)))
    recipe = recipe_from_dict({
        "run": {"out_dir": str(tmp_path / "run"), "seed": 0},
        "model": {"preset": "tiny"},
        "tokenizer": {"path": str(tok_dir)},
        "data": {"sources": [{"path": str(tmp_path / "si"), "name": "selfinstruct", "kind": "instruct", "weight": 0.94},
                             {"path": str(code), "name": "code", "weight": 0.06}],
                 "seq_len": 128, "fim_rate": 0.0},
        "train": {"max_steps": 80, "batch_tokens": 2048, "micro_batch_size": 8, "lr": 5e-3, "warmup_steps": 5,
                  "eval_every": 40, "eval_sequences": 8, "checkpoint_every": 0, "threads": 2},
    }, "sft-test")
    result = train(recipe, show_progress=False)
    # The mask: trained targets of the instruct rows are answer tokens only.
    f = InstructFile(tmp_path / "run" / "data" / "selfinstruct.train.bin")
    _, y = batch_of(f, [0])
    trained = y[0][y[0] != IGNORE_INDEX].tolist()
    tok = Tokenizer.load(tok_dir)
    assert "Write a function" not in tok.decode(trained) and "[PYTHON]" in tok.decode(trained)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert result.valid_loss is not None and result.valid_loss < losses[0]
    # Held-out prompt (i = 77 was left out of training).
    loaded = load(result.final_dir, dtype=torch.float32)
    prompt = chat_tokens(loaded.tokenizer, _task_dialog(77)[:1])
    gen = generate(loaded.model, [prompt], SamplingParams(max_new_tokens=40), chat_stop_ids(loaded.tokenizer),
                   loaded.tokenizer.decode)[0]
    assert gen.finish_reason == "stop_token", gen.text
    program = tagged_program(gen.text)
    assert program is not None and program.startswith("def get_"), gen.text


def test_mbpp_instruct_prompt_is_figure_13(data_dir):
    from codelm.evaluate.eval import build_requests
    from codelm.evaluate.protocols import get_protocol

    protocol = get_protocol("mbpp-instruct")
    tasks = protocol.load_tasks(str(data_dir))
    assert len(tasks) == 500 and tasks[0].task_id == "Mbpp/11"
    message = ("You are an expert Python programmer, and here is your task: Write a python function to remove first "
               "and last occurrence of a given character from the string. Your code should pass these tests:\n\n"
               'assert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
               'assert remove_Occ("PHP","P") == "H"\n'
               "Your code should start with a [PYTHON] tag and end with a [/PYTHON] tag.")
    assert tasks[0].prompt == f"[INST] {message} [/INST]"
    tok = make_tiny_bpe()
    assert tok.encode(tasks[0].prompt, bos=True) == chat_tokens(tok, [{"role": "user", "content": message}])
    dec = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64, "seed": 0}
    chat_request = build_requests(tasks[:1], protocol, dec, chat=True)[0][0]
    assert chat_request.prompt == message and chat_request.stop == ()
    answer = "Sure.\n[PYTHON]\ndef remove_Occ(s, ch):\n    return s\n[/PYTHON]\nDone."
    assert protocol.postprocess(tasks[0], answer) == "def remove_Occ(s, ch):\n    return s\n"


def test_prompt_completion_pairs_train_only_the_completion(tmp_path):
    tok = make_tiny_bpe()
    prompt, completion = "def f():\n    return 42\n\nassert f() == ", "42\n"
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": prompt, "completion": completion}) + "\n"
                   + json.dumps({"messages": DIALOG[1:3]}) + "\n")
    meta = build_instruct_file(src, tok, tmp_path / "p.bin", seq_len=255)
    assert meta.dialogs == 2
    f = InstructFile(tmp_path / "p.bin")
    x, y = batch_of(f, [0])
    trained = y[0][y[0] != IGNORE_INDEX].tolist()
    ids, _ = dialog_tokens(tok, DIALOG[1:3])
    answer = tok.decode(trained)
    # The pair comes first in the row: its trained tokens decode to the completion, then the dialog's answer.
    assert answer.startswith(completion) and tok.decode(trained[:len(tok.encode(completion))]) == completion
    assert tok.eos_id not in trained[:len(tok.encode(completion))]  # no EOS after a completion
    # Its inputs are BOS + prompt + completion as plain text.
    assert tok.decode(x[0][:len(tok.encode(prompt + completion, bos=True))].tolist()).endswith(prompt + completion)
    src.write_text(json.dumps({"prompt": "a", "completion": ""}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:1: the completion is empty"):
        build_instruct_file(src, tok, tmp_path / "q.bin", seq_len=63)
    src.write_text(json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:1: expected an object with a 'messages' list, or 'prompt'"):
        build_instruct_file(src, tok, tmp_path / "q.bin", seq_len=63)


def test_loss_weight_counts_each_target_of_a_source_that_many_times(tmp_path):
    """A source's loss_weight w: train_step's loss and gradient are those of the weighted mean, and
    w = 1 everywhere is the plain token mean (the custom cross-entropy and the library's agree)."""
    import torch
    import torch.nn.functional as F

    from codelm.data.packing import TokenFile, build_token_file
    from codelm.train.loss import cross_entropy_sum as _cross_entropy_sum

    tok = make_tiny_bpe()
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"x = {i}\nassert x == ", "completion": f"{i}\n"}) + "\n"
                           for i in range(40)))
    build_instruct_file(src, tok, tmp_path / "d.bin", 31)
    build_token_file(["def f():\n    return 1\n" * 20] * 30, tok, tmp_path / "code.bin", 31, show_progress=False)
    files = [InstructFile(tmp_path / "d.bin"), TokenFile(tmp_path / "code.bin")]
    plain = MaskedMixedStream(files, [0.5, 0.5], seed=3)
    assert plain.target_weights([(0, 0), (1, 0)], plain.fetch([(0, 0), (1, 0)])[1]) is None
    stream = MaskedMixedStream(files, [0.5, 0.5], seed=3, loss_weights=[25.0, 1.0])
    picks = stream.draw(16)
    assert {s for s, _ in picks} == {0, 1}
    x, y = stream.fetch(picks)
    w = stream.target_weights(picks, y)
    assert w.tolist() == [[(25.0 if s == 0 else 1.0) * float(t != IGNORE_INDEX) for t in row]
                          for (s, _), row in zip(picks, y.tolist())]
    torch.manual_seed(0)
    logits = torch.randn(*y.shape, tok.vocab_size, requires_grad=True)
    per_token = F.cross_entropy(logits.detach().reshape(-1, tok.vocab_size), y.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="none").view(y.shape)
    for weights in (None, w):
        want = per_token.sum() if weights is None else (per_token * weights).sum()
        fresh = logits.detach().clone().requires_grad_(True)
        ref = F.cross_entropy(fresh.reshape(-1, tok.vocab_size), y.reshape(-1), ignore_index=IGNORE_INDEX,
                              reduction="none").view(y.shape)
        (ref.sum() if weights is None else (ref * weights).sum()).backward()
        mine = logits.detach().clone().requires_grad_(True)
        out = mine * 1.0  # a fresh, contiguous, non-view tensor: the in-place path
        got = _cross_entropy_sum(out, y, weights)
        got.backward()
        assert torch.allclose(got, want, rtol=1e-5)
        assert torch.allclose(mine.grad, fresh.grad, atol=1e-6)
    with pytest.raises(ConfigError, match="loss weights must be positive"):
        MaskedMixedStream(files, [0.5, 0.5], seed=3, loss_weights=[0.0, 1.0])


def test_prompt_loss_weight_trains_the_prompt_too(tmp_path):
    """A source's prompt_loss_weight p: every token of its examples becomes a target (BOS and padding
    never), the answer's weighted loss_weight, the rest p; p = 0 is answers only."""
    import torch

    from codelm.data.packing import TokenFile, build_token_file

    tok = make_tiny_bpe()
    src = tmp_path / "p.jsonl"
    pairs = [(f"def f():\n    return {i}\n\nassert f() == ", f"{i}\n") for i in range(12)]
    src.write_text("".join(json.dumps({"prompt": a, "completion": b}) + "\n" for a, b in pairs))
    meta = build_instruct_file(src, tok, tmp_path / "d.bin", 47)
    build_token_file(["x = 1\n" * 200] * 4, tok, tmp_path / "code.bin", 47, show_progress=False)
    files = [InstructFile(tmp_path / "d.bin"), TokenFile(tmp_path / "code.bin")]
    f = files[0]
    # Context: every token but the answer and the BOS.
    assert meta.context_tokens == sum(len(completion_tokens(tok, a, b)[0]) - 1 for a, b in pairs) - meta.target_tokens
    answers = MaskedMixedStream(files, [1.0, 0.0], seed=0, loss_weights=[30.0, 1.0])
    both = MaskedMixedStream(files, [1.0, 0.0], seed=0, loss_weights=[30.0, 1.0], prompt_loss_weights=[0.5, 0.0])
    picks = [(0, k) for k in range(f.n_sequences)] + [(1, 0)]
    _, y0 = answers.fetch(picks)
    x, y1 = both.fetch(picks)
    for r, (s, k) in enumerate(picks[:-1]):
        seq = f.sequence(k)
        # With the prompt: every target that is not padding or an example's BOS.
        real = np.asarray(f.mask[k * 48 + 1:(k + 1) * 48]) != 0
        assert y1[r].tolist() == np.where(real, seq[1:], IGNORE_INDEX).tolist()
        assert tok.bos_id not in y1[r][y1[r] != IGNORE_INDEX].tolist()
        # Without: the answers only, which are a part of it.
        assert set(torch.nonzero(y0[r] != IGNORE_INDEX).flatten().tolist()) < \
            set(torch.nonzero(y1[r] != IGNORE_INDEX).flatten().tolist())
        w = both.target_weights(picks, y1)[r]
        assert w[(y0[r] != IGNORE_INDEX)].eq(30.0).all()
        assert w[(y1[r] != IGNORE_INDEX) & (y0[r] == IGNORE_INDEX)].eq(0.5).all()
        assert w[y1[r] == IGNORE_INDEX].eq(0.0).all()
    assert both.target_weights(picks, y1)[-1].eq(1.0).all()  # a text row: its source's loss_weight
    # A prompt weight of 1 and answer weight of 1: every target counts once, no weights needed.
    assert MaskedMixedStream(files, [1.0, 0.0], seed=0, prompt_loss_weights=[1.0, 0.0]).target_weights(picks, y1) is None
    with pytest.raises(ConfigError, match="prompt loss weights must be 0 or more"):
        MaskedMixedStream(files, [0.5, 0.5], seed=3, prompt_loss_weights=[-1.0, 0.0])


def test_prompt_loss_weight_is_checked_in_the_recipe(tmp_path):
    from codelm.train.recipe import recipe_from_dict

    base = {"model": {"preset": "tiny"}, "tokenizer": {"path": "tok"},
            "data": {"sources": [{"path": "d.jsonl", "prompt_loss_weight": 1.0}], "seq_len": 64},
            "train": {"batch_tokens": 512}}
    with pytest.raises(ConfigError, match=r"data.sources\[0\].prompt_loss_weight .* for instruct sources only"):
        recipe_from_dict(base, "r.toml")
    base["data"]["sources"][0].update(kind="instruct", prompt_loss_weight=-0.5)
    with pytest.raises(ConfigError, match=r"data.sources\[0\].prompt_loss_weight must be 0 or more"):
        recipe_from_dict(base, "r.toml")
    base["data"]["sources"][0]["prompt_loss_weight"] = 0.5
    assert recipe_from_dict(base, "r.toml").data.sources[0].prompt_loss_weight == 0.5
