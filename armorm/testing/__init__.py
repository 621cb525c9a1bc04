"""For tests, benchmarks and the demo only; neither the serving path nor the export imports these: the random
checkpoint, the bf16 fidelity criterion, the helpers that start a server for a test."""
