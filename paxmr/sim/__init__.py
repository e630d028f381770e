"""A deterministic, seeded fault simulator for the Multi-Paxos core (see run.py)."""
