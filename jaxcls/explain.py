"""`python -m jaxcls.explain`: .

A command: it hands its flags to `jaxcls.inference.explainer`, where the work is done.
"""

from absl import app

from jaxcls.inference.explainer import define_flags, main

if __name__ == "__main__":
  define_flags()
  app.run(main)
