"""Helpers shared by the test modules: the command line (real or in-process), fabricated runs, workers."""
