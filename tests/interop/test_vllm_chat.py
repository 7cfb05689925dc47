"""vLLM's chat route on the instruct-tuned codelm model, laid out by the chat template codelm writes into
tokenizer_config.json: the same replies as `codelm chat` (greedy)."""
import json

import pytest
from conftest import DIALOGS, MEASURED, NEUTRAL, post, vllm_server

from codelm.chat import ChatSettings, LocalModel
from codelm.model.checkpoint import load


@pytest.fixture(scope="module")
def vllm_instruct(instruct_dir, tmp_path_factory):
    with vllm_server(instruct_dir, tmp_path_factory.mktemp("vllm-instruct")) as url:
        yield url


def test_chat_route_uses_codelm_template(vllm_instruct, instruct_dir):
    """The instruct-tuned model, whose tokenizer_config.json carries the chat template codelm writes."""
    assert "chat_template" in json.loads((instruct_dir / "tokenizer_config.json").read_text())
    loaded = load(instruct_dir)
    local = LocalModel(loaded.model, loaded.tokenizer)
    settings = ChatSettings(max_new_tokens=96, temperature=0.0, top_p=1.0)
    same = ended = 0
    for messages in DIALOGS:
        ours = local.reply(messages, settings, lambda _text: None)
        out = post(vllm_instruct + "/v1/chat/completions", {"model": "codelm", "messages": messages,
                                                            "max_tokens": settings.max_new_tokens, **NEUTRAL})
        theirs = out["choices"][0]["message"]["content"]
        assert theirs == ours, (messages, theirs, ours)
        same += 1
        ended += out["choices"][0]["finish_reason"] == "stop"  # the answer ended with EOS, not at max_tokens
    MEASURED["vLLM chat replies (instruct model) equal to codelm chat, greedy; ended by EOS"] = \
        f"{same}/{len(DIALOGS)}; {ended}/{len(DIALOGS)}"
