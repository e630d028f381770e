"""paxmr: a word-count MapReduce whose results are kept in a log replicated by Multi-Paxos."""
