"""`python -m jaxcls.evaluate`: Evaluate a trained workdir on a split of its data, or on a folder of new labelled images.

A command: it hands its flags to `jaxcls.evaluation.workdir_eval`, where the work is done.
"""

from absl import app

from jaxcls.evaluation.workdir_eval import define_flags, main

if __name__ == "__main__":
  define_flags()
  app.run(main)
