"""Evaluation definitions the eval stages follow, kept apart from the stage programs so tests can check them alone.

jaster.py   llm-jp-eval's metrics, dataset → category table, category means and AVG, few-shots from train/
mtbench.py  Japanese MT-Bench (Stability AI's FastChat fork): sampling per category, judge prompts, rating parsing
"""
