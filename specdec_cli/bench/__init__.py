"""`specdec bench`: a side-by-side speed report of our drafting methods and llama.cpp's own
server, on the shipped Spec-Bench and edit prompt sets or a JSONL file.

prompts.py   which prompts
methods.py   what --methods names, per family (ours, llama-server, llama-cpp-python)
runner.py    the interleaved loop and the comparison of outputs
run_*.py     one runner per family
samples.py   what one run and one prompt measure; summary.py the per-category rows
report.py    table / json / csv / md; plot.py the chart
"""
