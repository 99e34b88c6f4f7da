"""``python -m bridge``: the same as the ``servio-bridge`` command."""

from bridge.cli import main

raise SystemExit(main())
