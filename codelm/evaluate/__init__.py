"""Evaluation: the sandbox that runs generated code, the benchmarks' protocols, and scoring.
(The benchmark files and problems themselves are read by codelm.benchdata.)

  task.py                Task, Protocol, cut, extract_code: what benchmarks and the generator share
  protocols.py           the paper's protocol of every benchmark (prompts, stops, post-processing)
  benchmarks/            how a sample of each benchmark becomes a sandbox job, and its scorer
  toolchains.py          MultiPL-E's compilers: found, shown in the sandbox, proven by a canary
  sandbox.py, zygote.py  Linux-namespace sandbox with a pool of forking workers
  passk.py               the unbiased pass@k estimator
  runner.py, scoring.py  `codelm score` (the runner, its journal) and what other scorers share
  scorers.py             the one table of scorers (one signature), refcache.py: HumanEval+/MBPP+ references
  eval.py, report.py     `codelm eval` and its reports; longctx.py: perplexity by length, key retrieval
"""
