"""Benchmarks: each runs paxmr and a baseline in the same run and prints both."""
