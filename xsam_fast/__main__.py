"""``python -m xsam_fast ...`` runs the ``xsam-fast`` command."""

from .cli import main

raise SystemExit(main())
