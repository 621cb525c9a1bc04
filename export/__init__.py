"""Offline, heavy step: an ArmoRM checkpoint → a deployable Triton model repository."""
