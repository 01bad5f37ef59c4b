"""Source trees as discovery and chunking both read them: git object access (``git``), the
language table (``languages``) and text decoding and content checks (``content``)."""
