"""Lightning data modules: they own reading, splitting, batching (and for text: tokenization, masking)."""
