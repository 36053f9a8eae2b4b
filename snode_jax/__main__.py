"""`python -m snode_jax`: the `snode-jax` command line."""

from .cli import main

raise SystemExit(main())
