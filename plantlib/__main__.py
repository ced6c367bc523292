"""`python -m plantlib …` runs the command-line interface."""

from plantlib.cli import main

raise SystemExit(main())
