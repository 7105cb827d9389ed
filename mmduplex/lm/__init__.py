"""The delayed-streams duplex LM: text tokenizer, the step grid (alignment), the model, its bounded KV cache,
bundles."""
