"""``python -m bench`` (``make bench``): guaita against the 2021 pipeline and a classical detector.

Accuracy on held-out simulated nights, cost per frame on this machine, whole-night throughput,
the daemon's latency and memory over a long run, and a Raspberry Pi 4 estimate; results go to
docs/BENCHMARKS.md and docs/img/bench-*.png. Expensive artefacts (simulated nights, the
reference model) are cached, see `bench.plan`.

Modules: `plan` (what is measured, seeds, cache), `nights` (simulated nights), `classical`
(the Hough detector), `reference` (the 2021 ResNet34), `fp32` (int8 → fp32 graph), `score`
(accuracy scoring subprocess), `costrun` (cost subprocess), `metrics` (pure numbers), `daemon`
(the `guaita run` measurement), `plots`, `report`, `__main__` (orchestration).
"""
