"""``python -m exporter``: see :mod:`exporter.cli`."""

from exporter.cli import main

raise SystemExit(main())
