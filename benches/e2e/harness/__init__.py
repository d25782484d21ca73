"""The end-to-end benchmark harness behind benches/e2e/bench.py (run.sh runs it), by concern:
common (paths, scenarios, table rows), procs (processes, /proc, HTTP), tools (install, build),
servers (the systems under test), load (wrk, oha), store (Garage, drain), runs (the rounds and
their figures), report (result file and chart), cli (flags, main)."""
