"""From a trained run to a served version: SavedModel writing, the gate (loaded as TF Serving
would), versioned atomic publish and the version-directory rules."""
