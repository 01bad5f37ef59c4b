"""Dataset quality: secret redaction, filters, grounding, near-duplicate detection."""
