"""`codelm demo --quick`: the whole miniature pipeline, end to end, on a sliver of the standard library."""
import json
import math

import pytest

from codelm.cli import main


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_writes_its_report(tmp_path, data_dir, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "single-line infilling" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["quick"] is True
    # It learned something: held-out loss below where training started and below uniform guessing.
    assert s["held_out_loss"] < s["first_train_loss"] - 0.3
    assert s["held_out_loss"] < math.log(s["vocab_size"])
    kinds = s["fim_documents"]
    assert kinds["psm"] > 0 and kinds["spm"] > 0
    assert s["corpus"]["files"] > 10
    assert isinstance(s["completion"], str) and isinstance(s["infill_psm"], str)
    assert s["single_line_infilling"]["cases"] > 0
    report = (out / "report.md").read_text()
    for heading in ("# Miniature Code Llama", "## Recipe", "## Loss", "## Completion", "## Infilling"):
        assert heading in report
    assert "![loss curve](loss.png)" in report
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lcft = s["lcft"]
    assert lcft["trained_length"] == 128 and lcft["lcft_length"] == 256  # the quick demo trains at 128
    for key in ("before", "after"):
        assert all(math.isfinite(v) and v > 1 for v in lcft["perplexity"][key].values())
    assert "## Long context" in report and "![perplexity by context length](ppl_by_length.png)" in report
    assert (out / "ppl_by_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "corpus-quick" / "report.md").exists()
    assert (out / "run-quick" / "final" / "model.safetensors").exists()
    # Running it again continues from what is there (nothing to redo) and gives the same numbers.
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["held_out_loss"] == s["held_out_loss"] and again["completion"] == s["completion"]
    assert again["lcft"]["perplexity"] == lcft["perplexity"]
