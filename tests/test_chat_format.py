"""Instruct layout golden tests: token-exact with the reference's chat_completion."""
import pytest
from helpers import make_tiny_bpe, make_tiny_sentencepiece

from codelm.generate.prompts import ChatFormatError, chat_stop_ids, chat_tokens
from codelm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    return Tokenizer.load(make_tiny_sentencepiece(tmp_path_factory.mktemp("sp")))


def test_one_turn(sp):
    toks = chat_tokens(sp, [{"role": "user", "content": "  Write a bash find command.\n"}])
    assert toks == sp.encode("[INST] Write a bash find command. [/INST]", bos=True)
    assert toks[0] == sp.bos_id and toks[-1] != sp.eos_id
    assert sp.decode(toks) == "[INST] Write a bash find command. [/INST]"


def test_system_prompt_folds_into_first_user_turn(sp):
    toks = chat_tokens(sp, [{"role": "system", "content": "Provide answers in JavaScript"},
                            {"role": "user", "content": "Sort a list."}])
    golden = "[INST] <<SYS>>\nProvide answers in JavaScript\n<</SYS>>\n\nSort a list. [/INST]"
    assert toks == sp.encode(golden, bos=True)


def test_several_turns(sp):
    dialog = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a?"},
              {"role": "assistant", "content": " b. "}, {"role": "user", "content": "c?"},
              {"role": "assistant", "content": "d"}, {"role": "user", "content": "e?"}]
    toks = chat_tokens(sp, dialog)
    golden = (sp.encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\na? [/INST] b. ", bos=True, eos=True)
              + sp.encode("[INST] c? [/INST] d ", bos=True, eos=True)
              + sp.encode("[INST] e? [/INST]", bos=True))
    assert toks == golden
    assert toks.count(sp.bos_id) == 3 and toks.count(sp.eos_id) == 2
    assert chat_stop_ids(sp) == {sp.eos_id}


@pytest.mark.parametrize("text", ["[INST] hi", "x [/INST] y", "<<SYS>>", "a <</SYS>> b", "<step>"])
def test_control_tags_in_user_text_are_refused(sp, text):
    with pytest.raises(ChatFormatError, match="special tags are not allowed"):
        chat_tokens(sp, [{"role": "user", "content": text}])


@pytest.mark.parametrize("dialog", [
    [{"role": "assistant", "content": "x"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    [{"role": "system", "content": "s"}],
    [],
])
def test_roles_must_alternate_and_end_with_user(sp, dialog):
    with pytest.raises(ChatFormatError):
        chat_tokens(sp, dialog)


def test_step_layout_for_tokenizers_with_step(tmp_path):
    t = Tokenizer.load(make_tiny_sentencepiece(tmp_path, with_step=True))
    assert t.step_id is not None
    toks = chat_tokens(t, [{"role": "user", "content": " Hi "}])
    golden = ([t.bos_id] + t.encode(" Source: system") + [t.step_id] + t.encode(" Source: user")
              + t.encode("\n\n Hi") + [t.step_id] + t.encode(" Source: assistant\nDestination: user")
              + t.encode("\n\n "))
    assert toks == golden
    assert chat_stop_ids(t) == {t.step_id}


def test_bpe_tokenizer_chat(tmp_path):
    t = make_tiny_bpe()
    toks = chat_tokens(t, [{"role": "user", "content": "hi"}])
    assert toks[0] == t.bos_id and t.decode(toks) == "[INST] hi [/INST]"


@pytest.mark.parametrize("dialog", [
    [{"role": "user", "content": "Add one."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a?"},
     {"role": "assistant", "content": " b. "}, {"role": "user", "content": "Add one, in Python."}],
])
def test_training_tokens_of_a_dialog_are_the_inference_prompt_plus_the_answer(sp, dialog):
    """One layout: what codelm chat / codelm serve send the model is, token for token, how it was trained."""
    from codelm.data.instruct import dialog_tokens as training_tokens

    finished = dialog + [{"role": "assistant", "content": "def f(x):\n    return x + 1"}]
    ids, mask = training_tokens(sp, finished)
    prompt = chat_tokens(sp, dialog)
    assert ids[:len(prompt)] == prompt and mask[len(prompt) - 1] is False
    answer = ids[len(prompt):]
    assert all(mask[len(prompt):]) and answer[-1] == sp.eos_id
    assert sp.decode(answer[:-1]).strip() == "def f(x):\n    return x + 1"
