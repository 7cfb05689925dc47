"""Evaluation: the sandbox that runs generated code, the benchmarks' protocols, and scoring.
(The benchmark files and problems themselves are read by codelm.benchdata.)

  task.py                Task, Protocol, cut, extract_code: what benchmarks and the generator share
  protocols.py           the paper's protocol of every benchmark (prompts, stops, post-processing)
  benchmarks/            one module per benchmark, the same functions each (NAMES, load_problems, plan, score)
  toolchains.py          MultiPL-E's compilers: found, shown in the sandbox, proven by a canary
  sandbox.py, zygote.py  Linux-namespace sandbox with a pool of forking workers
  passk.py               the unbiased pass@k estimator
  scoring.py, runner.py  the one scoring flow (samples, journal, resume, summary) and its sandbox loop
  scorers.py             the table of benchmark modules, `codelm score`; refcache.py: HumanEval+/MBPP+ references
  eval.py, report.py     `codelm eval` and its reports; longctx.py: perplexity by length, key retrieval
"""
