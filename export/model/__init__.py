"""The model contract every stage shares: the backbone registry, the preprocessing function
(bytes -> normalised pixels), the classifier heads, and the pretrained ImageNet classifier."""
