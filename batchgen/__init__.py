"""batchgen: offline batch LLM inference over vLLM."""
