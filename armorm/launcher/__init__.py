"""armorm-serve: the supervisor (`server`), one tritonserver process (`triton_process`) and what it stands on:
`install` (finding tritonserver), `model_config` (reading config.pbtxt), `placement`, `upstream` (its private
sockets), `unix_http` (the readiness probe over them), `loopback` (ports when run alone), `processes` (process
groups, stopping) and `orphans` (what a killed server left behind)."""
