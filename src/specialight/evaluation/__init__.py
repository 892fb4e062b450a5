"""Evaluation: suites, generation, likelihood, scoring and the server client (never imports training)."""
