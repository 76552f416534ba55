"""`python -m jaxcls.export`: .

A command: it hands its flags to `jaxcls.inference.exporter`, where the work is done.
"""

from absl import app

from jaxcls.inference.exporter import define_flags, main

if __name__ == "__main__":
  define_flags()
  app.run(main)
