"""`python -m core.train`: the command line (core.cli). The loop itself is imported once, as core.train."""

from core.cli import main

raise SystemExit(main())
