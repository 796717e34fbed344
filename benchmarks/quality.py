"""Real-data quality benchmark: ``python benchmarks/quality.py [--models ...] [--quick]``.

See :mod:`exporter.tools.quality_bench`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from exporter.tools.quality_bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
