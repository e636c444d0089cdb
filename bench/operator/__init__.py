"""Operator scale bench: ``python -m bench.operator`` (``__main__``; docs/benchmark.md).

Modules: ``base`` (paths, the error, deadline-bounded polling), ``probes`` (CPU and memory from /proc),
``cluster`` (control plane, nodes, namespaces, object bodies), ``watch`` (when each resource became Planned),
``process`` (the operator under test, the image-install venv), ``phases`` (running and reporting a phase).
"""
