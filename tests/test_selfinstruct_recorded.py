"""`codelm selfinstruct` end to end on answers a real model wrote.

tests/fixtures/selfinstruct_recorded.jsonl holds every request the pipeline sent to a real
`codelm serve` (openai backend, chat route) and the answer the served model gave, unedited. The
model is a small Llama that codelm trained to be a weak self-instruct teacher on template dialogs
(bench/record_selfinstruct.py made it and the recording; the header says how: weights sha256,
recipe, codelm commit, date, sampling seed and temperature). Here a replay backend answers each
request with the recorded answer for its exact prompt and seed, and fails on any request that was
not recorded, so the run below is the recorded run, its execution stage done again for real.

Being weak, the model writes questions it has written before, tests that do or do not parse, and
solutions that pass or fail; the test checks that the pipeline deduplicates, parses, keeps and
rejects accordingly, and resumes a killed run without asking for anything twice. Unsafe solutions
(escaping the sandbox, exiting early, looping) do not come from this model: the scripted backend
of tests/test_selfinstruct.py covers containment.
"""
import ast
import json
from collections import Counter
from pathlib import Path

import pytest

from codelm.generate.backends import Completion
from codelm.selfinstruct import SelfInstructConfig, StageModel, normalise_question, parse_questions, run_selfinstruct

FIXTURE = Path(__file__).parent / "fixtures" / "selfinstruct_recorded.jsonl"
STAGES = ("questions", "tests", "solutions")


def _recording():
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


HEADER, RECORDS = _recording()


class ReplayBackend:
    """Answers with the recorded completion for the request's exact prompt and seed."""
    name = "replay"
    batch_size = 4

    def __init__(self, fail_after=None):
        self.answers = {}
        for r in RECORDS:
            key = (r["prompt"], r["seed"])
            assert key not in self.answers, "the recording answers one request twice"
            self.answers[key] = r
        self.fail_after, self.used = fail_after, Counter()

    def identity(self):
        return {"backend": "replay", "weights_sha256": HEADER["model"]["weights_sha256"]}

    def generate(self, requests):
        if self.fail_after is not None and sum(self.used.values()) + len(requests) > self.fail_after:
            raise KeyboardInterrupt("killed")
        out = []
        for r in requests:
            rec = self.answers.get((r.prompt, r.seed))
            if rec is None:
                raise AssertionError(f"request not recorded (seed {r.seed}): ...{r.prompt[-200:]!r}")
            sent = {"temperature": r.temperature, "top_p": r.top_p, "max_new_tokens": r.max_new_tokens,
                    "stop": list(r.stop)}
            if sent != {k: rec[k] for k in sent}:
                raise AssertionError(f"request recorded with other sampling settings: {sent} against {rec}")
            self.used[(r.prompt, r.seed)] += 1
            out.append(Completion(rec["text"], rec["finish_reason"], rec["tokens"]))
        return out


def _config(out, **kw):
    settings = dict(HEADER["settings"])
    for stage in STAGES:  # the recorded run's stage settings (chat route: the prompts depend on it)
        settings[stage] = StageModel(**settings[stage])
    settings.update(kw)
    return SelfInstructConfig(out=str(out), workers=2, progress=False, **settings)


def _backends(b):
    return {s: b for s in STAGES}


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def _same_as_recorded(summary):
    """The replayed run has the recorded run's counts at every stage (execution is redone here)."""
    rec = HEADER["summary"]
    for stage in STAGES:
        assert _without(summary[stage], "from_cache") == _without(rec[stage], "from_cache"), stage
    assert _without(summary["execution"], "sandbox") == _without(rec["execution"], "sandbox")
    assert summary["yield"] == rec["yield"]


def test_recording_has_provenance():
    assert HEADER["codelm_selfinstruct_recording"] == 1
    assert len(HEADER["model"]["weights_sha256"]) == 64 and HEADER["model"]["parameters"] > 0
    assert HEADER["training"]["recipe"]["data"]["sources"][0]["kind"] == "instruct"
    assert HEADER["codelm_commit"] and HEADER["date"]
    choice = HEADER["seed_choice"]
    assert choice["chosen"] == HEADER["settings"]["seed"] and choice["tried"][-1]["seed"] == choice["chosen"]
    assert HEADER["settings"]["solution_temperature"] == choice["solution_temperature"] > 0
    assert HEADER["settings"]["question_temperature"] == choice["question_temperature"] > 0
    assert all(HEADER["settings"][s]["backend"] == "openai" and HEADER["settings"][s]["chat"] for s in STAGES)
    assert len(RECORDS) == HEADER["requests"] and {r["stage"] for r in RECORDS} == set(STAGES)
    assert FIXTURE.stat().st_size < 1_000_000


def test_recorded_model_run_end_to_end(tmp_path):
    replay = ReplayBackend()
    summary = run_selfinstruct(_config(tmp_path / "run"), _backends(replay))
    out = tmp_path / "run"
    # Every recorded answer was asked for exactly once, and nothing else was asked.
    assert set(replay.used) == set(replay.answers) and set(replay.used.values()) == {1}
    _same_as_recorded(summary)

    # Stage 1: the model repeats itself; repeats are dropped, exactly (after collapsing whitespace).
    generated = [q for r in RECORDS if r["stage"] == "questions" for q in parse_questions(r["text"], chat=True)]
    unique = {normalise_question(q) for q in generated}
    q = summary["questions"]
    assert q["generated"] == len(generated) and q["duplicates"] == len(generated) - len(unique) >= 1
    questions = [row["question"] for row in _read(out / "questions.jsonl")]
    assert len(questions) == len(set(questions)) == len(unique)

    # Stage 2: tests parsed out of the model's [TESTS] blocks: asserts that parse, at most 5 each.
    tests = _read(out / "tests.jsonl")
    assert [t["question"] for t in tests] == questions
    parsed = [t for row in tests for t in row["tests"]]
    assert summary["tests"]["tests_parsed"] == len(parsed) >= 1
    for row in tests:
        assert len(row["tests"]) <= 5 and all(t.strip() in row["raw"] for t in row["tests"])
        for t in row["tests"]:
            assert any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(t)))

    # Stage 3: each solution prompt shows its question and one of its tests.
    by_id = {row["id"]: row for row in tests}
    solutions = _read(out / "solutions.jsonl")
    assert len(solutions) == summary["solutions"]["generated"] == \
        sum(1 for r in RECORDS if r["stage"] == "solutions")
    for s in solutions:
        shown = by_id[s["id"]]["tests"][s["shown_test"]].strip()
        assert s["prompt"].endswith(f"Problem: {by_id[s['id']]['question']}\nTest: {shown}")

    # Stage 4: kept solutions passed all their question's tests in the sandbox; wrong programs were
    # run and rejected by a failing test (not merely for lacking tags).
    verdicts = {(v["id"], v["attempt"]): v for v in _read(out / "verdicts.jsonl")}
    kept = _read(out / "selfinstruct.jsonl")
    assert len(kept) == summary["execution"]["kept"] >= 1
    for k in kept:
        assert k["test_results"] == ["passed"] * len(k["tests"]) and k["tests"] == by_id[k["id"]]["tests"]
        assert verdicts[(k["id"], k["attempt"])]["passed"]
        earlier = [verdicts[(k["id"], a)] for a in range(k["attempt"])]
        assert not any(v["passed"] for v in earlier)  # the first passing attempt is the one kept
    rejected = [v for v in verdicts.values() if v["status"] == "passed" and not v["passed"]]
    assert len(rejected) >= 1 and all(v["reason"].startswith("failed: ") for v in rejected)
    code_of = {(s["id"], s["attempt"]): s["code"] for s in solutions}
    assert all(code_of[(v["id"], v["attempt"])] is not None for v in rejected)
    # Most rejections here answer wrong tests; at least once, though, a program failed the very tests
    # that a later attempt passed: execution told the wrong solution from the right one.
    kept_at = {k["id"]: k["attempt"] for k in kept}
    assert any(v["attempt"] < kept_at.get(v["id"], -1) for v in rejected)
    dialogs = _read(out / "dialogs.jsonl")
    assert [d["messages"][1]["content"] for d in dialogs] == \
        [f"[PYTHON]\n{k['solution'].rstrip()}\n[/PYTHON]" for k in kept]


def test_recorded_run_resumes_after_a_kill_without_asking_twice(tmp_path):
    n = Counter(r["stage"] for r in RECORDS)
    # Killed halfway through the solutions stage.
    killed = ReplayBackend(fail_after=n["questions"] + n["tests"] + n["solutions"] // 2)
    with pytest.raises(KeyboardInterrupt):
        run_selfinstruct(_config(tmp_path / "run"), _backends(killed))
    assert not (tmp_path / "run" / "selfinstruct.jsonl").exists()
    asked_before = sum(killed.used.values())
    assert n["questions"] + n["tests"] < asked_before < len(RECORDS)
    again = ReplayBackend()
    summary = run_selfinstruct(_config(tmp_path / "run"), _backends(again))
    # Between them, the two runs asked for every recorded answer once.
    assert not set(killed.used) & set(again.used)
    assert set(killed.used) | set(again.used) == set(again.answers)
    assert set(killed.used.values()) == set(again.used.values()) == {1}
    assert summary["solutions"]["from_cache"] == asked_before - n["questions"] - n["tests"]
    _same_as_recorded(summary)
    kept = _read(tmp_path / "run" / "selfinstruct.jsonl")
    # Killed during execution (the journal's last line torn): nothing is asked again, same outcome.
    journal = tmp_path / "run" / "verdicts.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:len(lines) // 2]) + "\n" + lines[len(lines) // 2][:10])
    idle = ReplayBackend(fail_after=0)
    _same_as_recorded(run_selfinstruct(_config(tmp_path / "run"), _backends(idle)))
    assert _read(tmp_path / "run" / "selfinstruct.jsonl") == kept


def test_a_request_that_was_not_recorded_fails_loudly(tmp_path):
    with pytest.raises(AssertionError, match="not recorded"):
        run_selfinstruct(_config(tmp_path / "run", seed=HEADER["settings"]["seed"] + 1000),
                         _backends(ReplayBackend()))
