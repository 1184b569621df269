"""One module per CLI command; see ``vtrain_opt/cli.py``."""
