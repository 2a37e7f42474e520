"""Benchmark data generators and harnesses.

``python -m benchmarks.datagen`` makes datasets; ``python -m benchmarks.groupby_bench`` times the
groupby questions. Figures and the commands that produced them are in ``benchmarks/RESULTS.md``.
"""
