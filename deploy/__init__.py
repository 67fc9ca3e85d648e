"""`edge-deploy`: device bundles for Jetson (TensorRT), Intel NPU (OpenVINO), ARM (ONNX Runtime) and CPU."""
