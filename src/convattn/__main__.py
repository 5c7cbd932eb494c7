"""``python -m convattn``: the command line (also what ``torchrun -m convattn`` runs)."""

from .cli import main

raise SystemExit(main())
