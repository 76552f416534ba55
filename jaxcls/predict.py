"""`python -m jaxcls.predict`: .

A command: it hands its flags to `jaxcls.inference.predictor`, where the work is done.
"""

from absl import app

from jaxcls.inference.predictor import define_flags, main

if __name__ == "__main__":
  define_flags()
  app.run(main)
