"""Routing: which pipelines and destinations a completed study version goes to."""
