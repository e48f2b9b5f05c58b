"""The model: backbone registry, preprocessing contract, head training, SavedModel publishing."""
