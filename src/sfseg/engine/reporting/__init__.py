"""Looking at runs: TensorBoard views, tables and figures, the HTML report. Builds on ``runtime`` and
``evaluation``."""
