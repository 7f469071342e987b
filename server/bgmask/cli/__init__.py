"""The `bgmask` command: one module per subcommand family."""
