"""One module per runtime: each turns the FP32 ONNX graph plus a CalibrationReader into an INT8 artifact."""
