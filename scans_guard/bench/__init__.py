"""`scans-guard bench`: plain vs SCANS speed, sigma latency, batched steering, memory, load time and the server under
concurrent clients. Nothing in the runtime imports it."""
