"""`python -m jaxcls.fewshot`: Few-shot linear and k-NN evaluation of a model's penultimate features, periodically in training or as a command.

A command: it hands its flags to `jaxcls.evaluation.fewshot`, where the work is done.
"""

from absl import app

from jaxcls.evaluation.fewshot import define_flags, main

if __name__ == "__main__":
  define_flags()
  app.run(main)
