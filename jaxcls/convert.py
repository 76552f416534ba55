"""`python -m jaxcls.convert`: Import torchvision ImageNet weights: a torchvision state_dict -> the params and batch stats of a jaxcls model.

A command: it hands its flags to `jaxcls.models.torchvision`, where the work is done.
"""

from jaxcls.models.torchvision import main

if __name__ == "__main__":
  main()
