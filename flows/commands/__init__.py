"""One module per command of `lambda-eclipse` (flows/cli.py assembles them)."""
