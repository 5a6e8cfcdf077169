"""Sample photos for `fastvlm sample-media` (scikit-image: NASA public domain, CC0)."""
