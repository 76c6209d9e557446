"""Everything that touches weights. Importing this package never imports TensorFlow."""
