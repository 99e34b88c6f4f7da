"""``python -m bridge``: the same as the ``servio-bridge`` command."""

from bridge.cli.main import main

raise SystemExit(main())
