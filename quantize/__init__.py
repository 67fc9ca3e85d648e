"""INT8 post-training quantization per runtime, calibrated on good images, with an accuracy gate against FP32."""
