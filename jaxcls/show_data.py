"""`python -m jaxcls.show_data`: Writes a PNG grid of training examples before and after augmentation, captioned with their class names.

A command: it hands its flags to `jaxcls.data.preview`, where the work is done.
"""

from absl import app

from jaxcls.data.preview import define_flags, main

if __name__ == "__main__":
  define_flags()
  app.run(main)
