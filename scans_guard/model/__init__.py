"""The model and what runs on it: loading (a local checkpoint or an embedded GGUF), forward hooks, left-padded prompt
batches, the KV cache of a batch whose rows join and leave."""
