"""Results: predictions to metrics with intervals and calibration (`metrics`), and every figure (`plots`)."""
