"""Orchestration of the grid search: spec -> cells -> cost -> runners -> summary."""
