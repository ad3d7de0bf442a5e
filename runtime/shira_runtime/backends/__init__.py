"""Inference engines the session can patch. Each backend owns the weight buffers its engine reads."""
