"""What every served model.py shares: parameters, per-request errors, batch merge/split, metrics."""
