"""Output formats: one small module per file format."""
