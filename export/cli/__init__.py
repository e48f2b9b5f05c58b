"""One module per console script (setup.py names them): flags and exit codes only; the work is in
the sibling packages."""
