"""Evaluation: benchmark data, the sandbox that runs generated code, and scoring.

  datasets.py            benchmark files: where they are found, pinned sources and sha256 sums
  benchmarks/            problems of each benchmark and how a sample becomes a sandbox job
  sandbox.py, zygote.py  Linux-namespace sandbox with a pool of forking workers
  passk.py               the unbiased pass@k estimator
  runner.py              `codelm score`
"""
