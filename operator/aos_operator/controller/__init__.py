"""The kopf operator: AosService -> build, push, placement of AosServiceInstances, status."""
