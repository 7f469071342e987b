"""`python -m bgmask` is the same as the `bgmask` command (used for the recorded daemon command)."""

from bgmask.cli.main import main

raise SystemExit(main())
