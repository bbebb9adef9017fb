"""Foreign formats, one module each, all through the canonical tensors: torchvision
``state_dict`` files, keras.applications weight files, ONNX Runtime, ``convert`` between any
two, and VGG's fully-convolutional test-time head (``fcn``)."""
