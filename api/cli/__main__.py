"""``python -m api.cli`` is the ``eeipu`` console script."""

from api.cli import main

raise SystemExit(main())
