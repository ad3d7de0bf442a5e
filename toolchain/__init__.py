"""SHiRA host toolchain: export a base model once, pack adapters against it, run the demo.

May import torch, transformers and peft. The device runtime (`shira_runtime`) never imports this package.
"""
__version__ = "0.2.0"
