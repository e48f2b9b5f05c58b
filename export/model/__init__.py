"""The model contract every stage shares: the backbone registry, the preprocessing function
(bytes -> normalised pixels; image_headers.py and resize.py are its parts), the classifier heads,
and the pretrained ImageNet classifier."""
