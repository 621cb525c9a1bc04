"""For tests, benchmarks and the demo only; the serving path never imports these: the random checkpoint, the
independent reference, the bf16 fidelity criterion."""
