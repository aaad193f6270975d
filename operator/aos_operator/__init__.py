"""AosEdge services on Kubernetes: build, push, place and run them under runc."""

__version__ = "0.1.0"
