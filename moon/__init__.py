"""MOON: the durable workflow engine."""
