"""Task benchmarks: each task module has ``run(...) -> BenchResult``; ``benchmarks/<task>.py`` and
``scmamba2 bench`` call them and write the tables and figures."""

from .result import BenchResult, Step

__all__ = ["BenchResult", "Step"]
