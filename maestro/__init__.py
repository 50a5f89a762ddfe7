"""MAESTRO: the planner."""
