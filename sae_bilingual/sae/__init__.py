"""The paper's TopK SAE: kernels (the tensor maths), model (the registered SAELens classes),
files (save, load, stock export), convert (the authors' released weights), train, metrics."""
