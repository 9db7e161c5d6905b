"""aodv2 benchmarks: `python -m bench` (see bench/__main__.py and bench/RESULTS.md)."""
