"""The interop models learned what the engine checks need: the base model writes code (its loss far below
uniform, a fair share of its greedy completions code-like rather than one repeated piece) and the instruct
tune learned its dialogs (lower loss on the held-out answers than the base model, and answers that end)."""
import json

from conftest import CODE_PROMPTS, MEASURED
from model import report

from codelm.generate import complete_batch
from codelm.generate.engine import generate
from codelm.generate.prompts import chat_stop_ids, chat_tokens
from codelm.generate.sampler import SamplingParams
from codelm.model.checkpoint import load


def test_base_model_is_far_below_uniform_and_not_degenerate(model_dir):
    made = report()
    loss, uniform = made["base"]["valid_loss"], made["uniform_loss"]
    MEASURED["base model: steps, held-out loss (uniform)"] = f"{made['base']['steps']}, {loss:.3f} ({uniform:.3f})"
    assert loss < 0.6 * uniform, (loss, uniform)
    loaded = load(model_dir)
    outs = complete_batch(loaded.model, loaded.tokenizer, CODE_PROMPTS, max_new_tokens=48)
    # Greedy decoding of a model this small still loops on many prompts ('\n' or '#\n' over and over); what
    # is asserted is that a fair share of the completions are code-like runs of many distinct tokens (the
    # 120-step model this replaced had 1 such completion of 20; the 400-step one 8).
    distinct = sorted(len(set(out.tokens)) for out in outs)
    varied = sum(n >= 10 for n in distinct)
    MEASURED["base model: 48-token greedy completions of >= 10 distinct tokens (20 prompts); median distinct"] = \
        f"{varied}/{len(outs)}; {distinct[len(distinct) // 2]}"
    assert varied >= 5, distinct


def test_instruct_model_learned_its_dialogs(instruct_dir, model_dir):
    made = report()
    base, tuned = made["base_answer_loss"], made["instruct_answer_loss"]
    MEASURED["instruct tune: steps, dialogs (train/held out), held-out answer loss base -> tuned"] = \
        f"{made['instruct']['steps']}, {made['dialogs']['train']}/{made['dialogs']['valid']}, {base:.3f} -> {tuned:.3f}"
    assert tuned < base - 0.2, (base, tuned)
    held_out = instruct_dir.parents[1] / "dialogs" / "valid.jsonl"
    valid = [json.loads(line) for line in held_out.read_text().splitlines()]
    params = SamplingParams(max_new_tokens=200)  # greedy
    ended = {}
    for name, folder in (("base", model_dir), ("tuned", instruct_dir)):
        loaded = load(folder)
        tok = loaded.tokenizer
        prompts = [chat_tokens(tok, dialog["messages"][:1]) for dialog in valid[:10]]
        answers = generate(loaded.model, prompts, params, stop_ids=chat_stop_ids(tok), decode=tok.decode)
        ended[name] = sum(answer.finish_reason == "stop_token" for answer in answers)
    MEASURED["greedy answers to 10 held-out dialogs that end (EOS) within 200 tokens, base / tuned"] = \
        f"{ended['base']} / {ended['tuned']}"
    assert ended["tuned"] >= 5, ended
