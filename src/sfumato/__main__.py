"""``python -m sfumato ...``: the same command line as the ``sfumato`` script."""

from sfumato.cli import main

raise SystemExit(main())
