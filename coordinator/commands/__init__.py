"""One module per ``fedcoord`` subcommand."""
