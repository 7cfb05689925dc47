"""transformers opens what codelm saves: AutoTokenizer gives codelm's ids, AutoModelForCausalLM codelm's
greedy tokens (the interop model, fp32)."""
import pytest
import torch
from conftest import CODE_PROMPTS, MEASURED
from helpers import sample_snippets

from codelm.generate import complete_batch
from codelm.model.checkpoint import load
from codelm.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

AWKWARD = ["", " ", "   leading", "\tx\t\ty", "\n\n\nz\n", "é 中文 😀 ∑ 1234567890", "\u00a0nbsp\r\n", "a  b   c"]
SPECIAL_TEXTS = ["<PRE> x <SUF> y <MID>", "<s>print(1)</s>", "<EOT>", "x<pad>y"]


def test_auto_tokenizer_gives_codelm_ids(model_dir):
    tok = Tokenizer.load(model_dir)
    hf = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    texts = sample_snippets(200) + AWKWARD
    assert all(hf(t)["input_ids"] == tok.encode(t, bos=True) for t in texts)
    # Special tokens: the same ids by name; inside a text codelm keeps them as text, which transformers
    # does with split_special_tokens (by default it turns them into the control ids).
    for role in ("bos", "eos", "pad", "unk", "prefix", "suffix", "middle", "eot"):
        assert hf.convert_tokens_to_ids(tok.id_to_piece(getattr(tok, f"{role}_id"))) == getattr(tok, f"{role}_id")
    for t in SPECIAL_TEXTS:
        assert hf(t, split_special_tokens=True)["input_ids"] == tok.encode(t, bos=True), t
        assert hf.decode(tok.encode(t)) == t
    MEASURED["transformers tokenizer: strings with codelm's ids"] = f"{len(texts) + len(SPECIAL_TEXTS)}/" \
        f"{len(texts) + len(SPECIAL_TEXTS)}"


def test_auto_model_greedy_equals_codelm(model_dir):
    loaded = load(model_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    equal = 0
    for prompt in CODE_PROMPTS[:5]:
        ours = complete_batch(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=32)[0]
        ids = torch.tensor([loaded.tokenizer.encode(prompt, bos=True)])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                          eos_token_id=loaded.tokenizer.eos_id, pad_token_id=loaded.tokenizer.pad_id)
        theirs = out[0, ids.shape[1]:].tolist()
        if theirs and theirs[-1] == loaded.tokenizer.eos_id:
            theirs = theirs[:-1]
        assert theirs == ours.tokens, (prompt, theirs, ours.tokens)
        equal += 1
    MEASURED["transformers greedy tokens equal to codelm (fp32)"] = f"{equal}/5"
