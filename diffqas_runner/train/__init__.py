"""Training loops: supervised (classification, time series)."""
