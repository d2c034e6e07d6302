"""Test-session settings shared by every test file."""

import torch

# The models are tiny and `pytest -n 2` runs one worker per core: extra intra-op threads only
# contend for the same two cores (test_matrix.py on 2 cores: 102 s with torch's default threads, 21 s with one).
torch.set_num_threads(1)
