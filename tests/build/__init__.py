"""Fast tests of the image builder."""
