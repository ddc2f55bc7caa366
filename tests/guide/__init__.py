"""The SDK guide's samples, run against a real gateway."""
