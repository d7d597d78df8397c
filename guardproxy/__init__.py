"""guardproxy: fairness, label and drift policies applied inline in front of any model server."""

__version__ = "0.1.0"
