"""Repository maintenance tools (run as modules, e.g. ``python -m tools.audit_deps``)."""
