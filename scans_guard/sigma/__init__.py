"""sigma(q), the harmfulness score of a prompt: what it reads of a conversation, the classifier and its probe, the
calibration domain, and the one decision rule over the score."""
