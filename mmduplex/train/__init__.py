"""Training: the Lightning modules and data modules of the tokenizer and the duplex model, feature extraction jobs, and
the LightningCLI."""
