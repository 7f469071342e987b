"""The mask pipeline: pixels in, model input, edge-aware refinement, matte options, frames, pixels out."""
