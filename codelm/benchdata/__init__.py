"""Benchmark data, a leaf of the package: where each file comes from, its pinned sha256 and how it is
found (files.py), and the problems read from it (problems.py). Training (decontamination) and
evaluation both read benchmarks through here; it imports nothing of codelm but errors and files.
"""
