"""Benchmark data generators and harnesses.

``python -m benchmarks`` runs every suite against its peers and writes JSON lines and an HTML report
(see ``benchmarks/__main__.py``); ``python -m benchmarks.datagen`` makes datasets;
``python -m benchmarks.groupby_bench`` times the groupby questions alone. Figures and the commands that produced them are in ``benchmarks/RESULTS.md``.
"""
