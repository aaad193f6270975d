"""The device agent: one per edge node; runs the AosServiceInstances assigned to its AosDevice."""
