"""The Textual status viewer (`cicdllm status`) and its config editor, over the status read model."""
