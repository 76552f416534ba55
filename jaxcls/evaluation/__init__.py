"""Exact evaluation and what is built on it: reports, plots, group metrics, features, k-NN, few-shot, evaluators."""
