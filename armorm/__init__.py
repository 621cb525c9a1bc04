"""Shared, pure ArmoRM code used by export, the served Triton models, the client and the tests.

Importing this package loads nothing heavy: torch and transformers are imported by the
modules that need them (backbone, heads, reference, checkpoint), never here.
"""
