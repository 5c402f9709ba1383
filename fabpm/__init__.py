"""The ``fabpm`` command: the composition root that wires the simulator, edge and cloud together."""
