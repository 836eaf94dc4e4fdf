"""On-site calibration of thresholds and quantiles from normal frames."""
