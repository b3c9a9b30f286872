"""Model export: ONNX graphs built with the ``onnx`` package, and an MLflow pyfunc wrapper."""
