"""Kubernetes resource models of the project and the CRDs generated from them."""
